"""The control protocol: versioned, newline-delimited JSON over a Unix stream socket.

This module is the one source of truth for the format; the daemon (`jqd.control_server`) and
the client (`jqd_ctl.client`) both import it. It has no I/O and no dependency beyond the stdlib.

One connection carries one exchange::

    client -> {"v": 1, "cmd": "drain", "args": {"timeout": 30}}
    daemon <- {"v": 1, "progress": {"running": 3, "queued": 12}}     zero or more (drain only)
    daemon <- {"v": 1, "ok": true, "result": {...}}                  exactly one final line,
           or {"v": 1, "ok": false, "error": "human message", "code": "machine_code"}

then the daemon closes the connection. Every line is compact UTF-8 JSON ended by ``\\n`` and at
most `MAX_LINE` bytes long (newline excluded). Commands and their arguments (all optional)::

    status  {}
    pause   {"queue": str, "reason": str}     no queue: pause the whole daemon (queue non-empty)
    resume  {"queue": str}                    no queue: resume the whole daemon / undo drain
    drain   {"timeout": number >= 0}          no timeout: wait as long as jobs run

An argument given as ``null`` counts as absent. Unknown keys, at the top level or in ``args``,
are rejected: a newer client talking to an older daemon gets a clear error, not a silent no-op.
A change that old peers could misread bumps `PROTOCOL_VERSION`.

Failure: `decode_request` and `decode_reply` raise `ProtocolError` (a `ControlError`), whose
``code`` and ``message`` go straight into an error reply. Codes used here: ``bad_json``,
``bad_request``, ``unsupported_version``, ``unknown_command``, ``bad_arguments``,
``line_too_long``. The daemon adds ``permission_denied``, ``request_timeout`` and ``internal``;
a controller may raise `ControlError` with its own codes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import attrs

PROTOCOL_VERSION = 1
MAX_LINE = 64 * 1024  # bytes in one line, newline excluded

COMMANDS = ("status", "pause", "resume", "drain")

# Codes with a fixed meaning, so both sides spell them the same way.
BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_COMMAND = "unknown_command"
BAD_ARGUMENTS = "bad_arguments"
LINE_TOO_LONG = "line_too_long"
PERMISSION_DENIED = "permission_denied"
REQUEST_TIMEOUT = "request_timeout"
INTERNAL = "internal"


class ControlError(Exception):
    """A refusal with a machine ``code`` and a human ``message``; becomes an error reply.

    A `jqd.control_server.Controller` raises it to refuse a command (e.g. ``resume`` while
    stopping); anything else a controller raises is reported as ``internal``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.code})"


class ProtocolError(ControlError):
    """A line that breaks the protocol: bad JSON, wrong version, unknown command or arguments."""


@attrs.frozen
class Request:
    """A validated request; ``args`` holds only the keys given with non-null values."""

    cmd: str
    args: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Progress:
    """An intermediate reply line (drain progress)."""

    data: Mapping[str, Any]


@attrs.frozen
class Result:
    """The final, successful reply."""

    data: Mapping[str, Any]


@attrs.frozen
class Failure:
    """The final, failed reply."""

    code: str
    message: str


Reply = Progress | Result | Failure


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _non_negative_number(value: object) -> bool:
    return _is_number(value) and value >= 0  # type: ignore[operator]


def _string(value: object) -> bool:
    return isinstance(value, str)


def _name(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


# cmd -> {arg name: (check, description for the error message)}
_ARGS: dict[str, dict[str, tuple[Any, str]]] = {
    "status": {},
    "pause": {"queue": (_name, "a non-empty string"), "reason": (_string, "a string")},
    "resume": {"queue": (_name, "a non-empty string")},
    "drain": {"timeout": (_non_negative_number, "a number of seconds >= 0")},
}


def validate_args(cmd: str, args: object) -> dict[str, Any]:
    """Check ``args`` for ``cmd``; return them without null values. Raise `ProtocolError`."""
    if cmd not in _ARGS:
        raise ProtocolError(UNKNOWN_COMMAND, f"unknown command {cmd!r}; expected one of {', '.join(COMMANDS)}")
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise ProtocolError(BAD_ARGUMENTS, f"'args' must be an object, not {type(args).__name__}")
    spec = _ARGS[cmd]
    clean: dict[str, Any] = {}
    for key, value in args.items():
        if key not in spec:
            allowed = ", ".join(spec) or "none"
            raise ProtocolError(BAD_ARGUMENTS, f"{cmd}: unknown argument {key!r} (allowed: {allowed})")
        if value is None:
            continue
        check, description = spec[key]
        if not check(value):
            raise ProtocolError(BAD_ARGUMENTS, f"{cmd}: {key!r} must be {description}, got {value!r}")
        clean[key] = value
    return clean


def encode(obj: Mapping[str, Any]) -> bytes:
    """Serialise one message as compact UTF-8 JSON plus a newline.

    Raises `ProtocolError` (``line_too_long``) when the line would exceed `MAX_LINE`, and
    `ValueError` / `TypeError` for values JSON cannot hold (NaN, sets, ...).
    """
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if len(data) > MAX_LINE:
        raise ProtocolError(LINE_TOO_LONG, f"message of {len(data)} bytes exceeds the {MAX_LINE}-byte line limit")
    return data + b"\n"


def request(cmd: str, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Build a request message, validating ``args`` the way the daemon will."""
    return {"v": PROTOCOL_VERSION, "cmd": cmd, "args": validate_args(cmd, args)}


def ok(result: Mapping[str, Any]) -> dict[str, Any]:
    """The final success reply."""
    return {"v": PROTOCOL_VERSION, "ok": True, "result": dict(result)}


def error(code: str, message: str) -> dict[str, Any]:
    """The final error reply."""
    return {"v": PROTOCOL_VERSION, "ok": False, "error": message, "code": code}


def progress(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An intermediate progress reply."""
    return {"v": PROTOCOL_VERSION, "progress": dict(obj)}


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _load_object(line: bytes) -> dict[str, Any]:
    """Parse one line into a JSON object, checking the length and the version."""
    line = line.removesuffix(b"\n")
    if len(line) > MAX_LINE:
        raise ProtocolError(LINE_TOO_LONG, f"line of {len(line)} bytes exceeds the {MAX_LINE}-byte limit")
    try:
        obj = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(BAD_JSON, f"not a JSON line: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(BAD_REQUEST, f"expected a JSON object, got {type(obj).__name__}")
    version = obj.get("v")
    # type() rather than isinstance(): True == 1 in Python, but true is not a version.
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(
            UNSUPPORTED_VERSION,
            f"protocol version {version!r} is not supported; this side speaks version {PROTOCOL_VERSION} "
            "(are jqd and jqd-ctl from the same release?)",
        )
    return obj


def decode_request(line: bytes) -> Request:
    """Parse and validate one request line (with or without its newline).

    Raises `ProtocolError` with code ``line_too_long``, ``bad_json``, ``bad_request`` (not an
    object, missing ``cmd``, unknown top-level key), ``unsupported_version``,
    ``unknown_command`` or ``bad_arguments``.
    """
    obj = _load_object(line)
    unknown = sorted(set(obj) - {"v", "cmd", "args"})
    if unknown:
        raise ProtocolError(BAD_REQUEST, f"unknown request field(s): {', '.join(unknown)}")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError(BAD_REQUEST, "request needs a string 'cmd'")
    return Request(cmd=cmd, args=validate_args(cmd, obj.get("args")))


def decode_reply(line: bytes) -> Reply:
    """Parse one reply line into `Progress`, `Result` or `Failure`; raise `ProtocolError`."""
    obj = _load_object(line)
    if "progress" in obj:
        data = obj["progress"]
        if isinstance(data, dict):
            return Progress(data)
    elif obj.get("ok") is True:
        data = obj.get("result")
        if isinstance(data, dict):
            return Result(data)
    elif obj.get("ok") is False:
        code, message = obj.get("code"), obj.get("error")
        if isinstance(code, str) and isinstance(message, str):
            return Failure(code, message)
    raise ProtocolError(BAD_REQUEST, f"malformed reply: {line[:200]!r}")
