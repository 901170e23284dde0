import json

import pytest

from jqd_ctl import wire
from jqd_ctl.wire import ProtocolError


def line(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def code_of(raw: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        wire.decode_request(raw)
    return info.value.code


def test_encode_is_compact_json_line():
    data = wire.encode({"v": 1, "cmd": "status", "args": {"reason": "déjà vu"}})
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    assert b" " not in data.replace("déjà vu".encode(), b"")
    assert json.loads(data) == {"v": 1, "cmd": "status", "args": {"reason": "déjà vu"}}


def test_encode_refuses_oversized_and_nan():
    with pytest.raises(ProtocolError) as info:
        wire.encode({"x": "a" * wire.MAX_LINE})
    assert info.value.code == wire.LINE_TOO_LONG
    with pytest.raises(ValueError):
        wire.encode({"x": float("nan")})


def test_reply_helpers():
    assert wire.ok({"a": 1}) == {"v": 1, "ok": True, "result": {"a": 1}}
    assert wire.error("nope", "No.") == {"v": 1, "ok": False, "error": "No.", "code": "nope"}
    assert wire.progress({"running": 2}) == {"v": 1, "progress": {"running": 2}}


@pytest.mark.parametrize("cmd, args, expected", [
    ("status", None, {}),
    ("status", {}, {}),
    ("pause", {"queue": "emails", "reason": "smtp down"}, {"queue": "emails", "reason": "smtp down"}),
    ("pause", {"queue": None}, {}),
    ("resume", {"queue": "q"}, {"queue": "q"}),
    ("drain", {"timeout": 0}, {"timeout": 0}),
    ("drain", {"timeout": 2.5}, {"timeout": 2.5}),
])
def test_decode_valid_requests(cmd, args, expected):
    message = {"v": 1, "cmd": cmd}
    if args is not None:
        message["args"] = args
    request = wire.decode_request(line(message))
    assert request == wire.Request(cmd=cmd, args=expected)


def test_request_builder_round_trips():
    built = wire.request("pause", {"queue": "q", "reason": None})
    assert built == {"v": 1, "cmd": "pause", "args": {"queue": "q"}}
    assert wire.decode_request(wire.encode(built)).args == {"queue": "q"}


@pytest.mark.parametrize("raw, code", [
    (b"not json\n", wire.BAD_JSON),
    (b"\xff\xfe\n", wire.BAD_JSON),
    (b'{"v": 1, "cmd": "drain", "args": {"timeout": NaN}}', wire.BAD_JSON),
    (b"[1, 2]\n", wire.BAD_REQUEST),
    (b'"status"\n', wire.BAD_REQUEST),
    (line({"cmd": "status"}), wire.UNSUPPORTED_VERSION),
    (line({"v": 2, "cmd": "status"}), wire.UNSUPPORTED_VERSION),
    (line({"v": "1", "cmd": "status"}), wire.UNSUPPORTED_VERSION),
    (line({"v": True, "cmd": "status"}), wire.UNSUPPORTED_VERSION),
    (line({"v": 1}), wire.BAD_REQUEST),
    (line({"v": 1, "cmd": 7}), wire.BAD_REQUEST),
    (line({"v": 1, "cmd": "status", "extra": 1}), wire.BAD_REQUEST),
    (line({"v": 1, "cmd": "explode"}), wire.UNKNOWN_COMMAND),
    (line({"v": 1, "cmd": "status", "args": []}), wire.BAD_ARGUMENTS),
    (line({"v": 1, "cmd": "status", "args": {"queue": "q"}}), wire.BAD_ARGUMENTS),
    (line({"v": 1, "cmd": "pause", "args": {"queue": 5}}), wire.BAD_ARGUMENTS),
    (line({"v": 1, "cmd": "pause", "args": {"queue": " "}}), wire.BAD_ARGUMENTS),
    (line({"v": 1, "cmd": "pause", "args": {"reason": ["x"]}}), wire.BAD_ARGUMENTS),
    (line({"v": 1, "cmd": "resume", "args": {"reason": "x"}}), wire.BAD_ARGUMENTS),
    (line({"v": 1, "cmd": "drain", "args": {"timeout": -1}}), wire.BAD_ARGUMENTS),
    (line({"v": 1, "cmd": "drain", "args": {"timeout": "10"}}), wire.BAD_ARGUMENTS),
    (line({"v": 1, "cmd": "drain", "args": {"timeout": True}}), wire.BAD_ARGUMENTS),
    (b"x" * (wire.MAX_LINE + 1), wire.LINE_TOO_LONG),
])
def test_decode_rejects(raw, code):
    assert code_of(raw) == code


def test_protocol_error_is_a_control_error_with_message():
    with pytest.raises(wire.ControlError) as info:
        wire.decode_request(line({"v": 9, "cmd": "status"}))
    assert "version 9" in info.value.message and "1" in info.value.message


def test_decode_reply_kinds():
    assert wire.decode_reply(wire.encode(wire.progress({"running": 1}))) == wire.Progress({"running": 1})
    assert wire.decode_reply(wire.encode(wire.ok({"state": "running"}))) == wire.Result({"state": "running"})
    assert wire.decode_reply(wire.encode(wire.error("c", "m"))) == wire.Failure("c", "m")
    for bad in ({"v": 1}, {"v": 1, "ok": True}, {"v": 1, "ok": False, "error": "m"}, {"v": 1, "progress": 3}):
        with pytest.raises(ProtocolError):
            wire.decode_reply(line(bad))
    with pytest.raises(ProtocolError) as info:
        wire.decode_reply(line({"v": 2, "ok": True, "result": {}}))
    assert info.value.code == wire.UNSUPPORTED_VERSION
