"""The control server, run for real on a Unix socket under tmp_path with a fake Controller."""

import json
import os
import shutil
import socket
import stat
import sys
import tempfile
from functools import partial

import pytest
import trio

from jqd import control_server
from jqd.control_server import ControlError, ControlSocketError, ControlSocketInUse, peer_allowed, serve
from jqd_ctl import wire
from jqd_ctl.client import Client, Refused


class FakeController:
    def __init__(self):
        self.calls = []
        self.fail: BaseException | None = None
        self.drain_items = [{"running": 2, "queued": 5}, {"running": 1, "queued": 5},
                            {"state": "drained", "returned": [7, 9]}]
        self.drain_gate: trio.Event | None = None  # when set, drain waits on it after 2 items
        self.drain_closed = trio.Event()

    async def status(self):
        self.calls.append(("status",))
        if self.fail:
            raise self.fail
        return {"state": "running", "version": "0.1.0", "in_flight": 0}

    async def pause(self, queue, reason):
        self.calls.append(("pause", queue, reason))
        if self.fail:
            raise self.fail
        return {"state": "paused"}

    async def resume(self, queue):
        self.calls.append(("resume", queue))
        return {"state": "running"}

    async def drain(self, timeout):
        self.calls.append(("drain", timeout))
        try:
            for i, item in enumerate(self.drain_items):
                if i == 2 and self.drain_gate is not None:
                    await self.drain_gate.wait()
                yield item
        finally:
            self.drain_closed.set()


@pytest.fixture
def controller():
    return FakeController()


@pytest.fixture
async def path(nursery, tmp_path, controller):
    return await nursery.start(serve, str(tmp_path / "ctl.sock"), controller)


async def exchange(path: str, data: bytes, *, shut_write: bool = False) -> list[dict]:
    """Send raw bytes, read until the server closes, return the reply lines as dicts."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(path)
    async with trio.SocketStream(sock) as stream:
        try:
            await stream.send_all(data)
            if shut_write:
                await stream.send_eof()
        except trio.BrokenResourceError:
            pass
        received = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                received += chunk
                assert len(received) < 1 << 20
    return [json.loads(line) for line in received.splitlines()]


async def call(path: str, cmd: str, args=None):
    return await trio.to_thread.run_sync(Client(path, timeout=5).call, cmd, args)


async def test_socket_is_0600_and_unlinked_on_exit(tmp_path, controller):
    path = str(tmp_path / "run" / "ctl.sock")
    async with trio.open_nursery() as nursery:
        assert await nursery.start(serve, path, controller) == path
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o700
        nursery.cancel_scope.cancel()
    assert not os.path.exists(path)


async def test_group_socket_is_0660_with_group(tmp_path, controller):
    path = str(tmp_path / "run" / "ctl.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(serve, path, controller, group=str(os.getgid())))
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getgid()
        assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o750
        nursery.cancel_scope.cancel()


async def test_unknown_group_is_a_clear_error(nursery, tmp_path, controller):
    with pytest.raises(ControlSocketError, match="no-such-group-jqd"):
        await nursery.start(partial(serve, str(tmp_path / "ctl.sock"), controller, group="no-such-group-jqd"))


async def test_unusable_directory_is_a_clear_error(nursery, tmp_path, controller):
    (tmp_path / "file").write_text("")
    with pytest.raises(ControlSocketError, match="cannot create .*Not a directory"):
        await nursery.start(serve, str(tmp_path / "file" / "ctl.sock"), controller)


async def test_stale_socket_is_replaced(tmp_path, controller, caplog):
    path = str(tmp_path / "ctl.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)  # bound, never listened on, closed: exactly what a crash leaves behind
    dead.close()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve, path, controller)
        assert (await call(path, "status"))["state"] == "running"
        nursery.cancel_scope.cancel()
    assert "removed stale control socket" in caplog.text


async def test_live_socket_is_not_stolen(nursery, path, controller):
    with pytest.raises(ControlSocketInUse, match=path):
        await nursery.start(serve, path, FakeController())
    assert (await call(path, "status"))["state"] == "running"  # the first server still serves


async def test_regular_file_is_not_replaced(nursery, tmp_path, controller):
    path = tmp_path / "ctl.sock"
    path.write_text("precious")
    with pytest.raises(ControlSocketError, match="not a socket"):
        await nursery.start(serve, str(path), controller)
    assert path.read_text() == "precious"


async def test_status_pause_resume_round_trip(path, controller):
    assert await call(path, "status") == {"state": "running", "version": "0.1.0", "in_flight": 0}
    assert await call(path, "pause", {"queue": "emails", "reason": "smtp down"}) == {"state": "paused"}
    assert await call(path, "pause") == {"state": "paused"}
    assert await call(path, "resume", {"queue": "emails"}) == {"state": "running"}
    assert controller.calls == [("status",), ("pause", "emails", "smtp down"), ("pause", None, None),
                                ("resume", "emails")]


async def test_drain_streams_progress_then_result(path, controller):
    replies = await exchange(path, wire.encode(wire.request("drain", {"timeout": 3})))
    assert replies == [
        {"v": 1, "progress": {"running": 2, "queued": 5}},
        {"v": 1, "progress": {"running": 1, "queued": 5}},
        {"v": 1, "ok": True, "result": {"state": "drained", "returned": [7, 9]}},
    ]
    assert controller.calls == [("drain", 3)]
    items = await trio.to_thread.run_sync(lambda: list(Client(path, 5).stream("drain")))
    assert items == [{"running": 2, "queued": 5}, {"running": 1, "queued": 5}, {"state": "drained", "returned": [7, 9]}]


async def test_client_leaving_mid_drain_does_not_crash_server(path, controller):
    controller.drain_gate = trio.Event()
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.connect(path)
    async with trio.SocketStream(sock) as stream:
        await stream.send_all(wire.encode(wire.request("drain")))
        with trio.fail_after(5):
            first = await stream.receive_some()
    assert json.loads(first) == {"v": 1, "progress": {"running": 2, "queued": 5}}
    controller.drain_gate.set()  # next item makes the server write to the closed connection
    with trio.fail_after(5):
        await controller.drain_closed.wait()
    assert (await call(path, "status"))["state"] == "running"


@pytest.mark.parametrize("raw, code", [
    (b"hello there\n", "bad_json"),
    (b'{"v": 1, "cmd": "explode"}\n', "unknown_command"),
    (b'{"v": 2, "cmd": "status"}\n', "unsupported_version"),
    (b'{"v": 1, "cmd": "pause", "args": {"queue": 1}}\n', "bad_arguments"),
])
async def test_bad_requests_get_error_replies(path, controller, raw, code):
    [reply] = await exchange(path, raw)
    assert reply["v"] == 1 and reply["ok"] is False and reply["code"] == code and reply["error"]
    assert controller.calls == []
    assert (await call(path, "status"))["state"] == "running"


async def test_oversized_line_is_refused_and_closed(path, controller):
    [reply] = await exchange(path, b"x" * (wire.MAX_LINE + 10))  # no newline: the cap must trigger
    assert reply["code"] == "line_too_long"
    assert controller.calls == []


async def test_eof_without_newline_closes_quietly(path, controller):
    assert await exchange(path, b'{"v": 1, "cmd": "status"}', shut_write=True) == []
    assert controller.calls == []


async def test_idle_connection_times_out(nursery, tmp_path, controller):
    path = await nursery.start(partial(serve, str(tmp_path / "ctl.sock"), controller, request_timeout=0.05))
    [reply] = await exchange(path, b"")
    assert reply["code"] == "request_timeout"


async def test_control_error_becomes_error_reply(path, controller):
    controller.fail = ControlError("stopping", "the daemon is shutting down")
    with pytest.raises(Refused) as info:
        await call(path, "pause", {"reason": "x"})
    assert (info.value.code, info.value.message) == ("stopping", "the daemon is shutting down")


async def test_unexpected_exception_is_internal_and_server_survives(path, controller, caplog):
    controller.fail = RuntimeError("boom")
    with pytest.raises(Refused) as info:
        await call(path, "status")
    assert info.value.code == "internal" and "boom" not in info.value.message
    assert "RuntimeError: boom" in caplog.text  # logged with its traceback
    controller.fail = None
    assert (await call(path, "status"))["state"] == "running"


async def test_drain_yielding_nothing_is_internal(path, controller):
    controller.drain_items = []
    with pytest.raises(Refused) as info:
        await call(path, "drain")
    assert info.value.code == "internal"


@pytest.mark.parametrize("uid, gid, groups, group_gid, allowed", [
    (1000, 1000, (), None, True),  # our own uid
    (0, 0, (), None, True),  # root
    (1001, 1001, (), None, False),
    (1001, 1001, (), 2000, False),
    (1001, 2000, (), 2000, True),  # primary group
    (1001, 1001, (5, 2000), 2000, True),  # supplementary group
    (1001, 2000, (2000,), None, False),  # no group configured
])
def test_peer_allowed(uid, gid, groups, group_gid, allowed):
    assert peer_allowed(uid, gid, own_uid=1000, group_gid=group_gid, groups=groups) is allowed


def test_peer_credentials_of_a_socketpair():
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        peer = control_server.peer_credentials(left)
    assert (peer.pid, peer.uid, peer.gid) == (os.getpid(), os.getuid(), os.getgid())
    if control_server._SO_PEERGROUPS is not None:
        assert sorted(peer.groups) == sorted(os.getgroups())


async def test_refused_peer_gets_permission_denied(path, controller, monkeypatch, caplog):
    monkeypatch.setattr(control_server, "peer_allowed", lambda *a, **k: False)
    with pytest.raises(Refused) as info:
        await call(path, "status")
    assert info.value.code == "permission_denied"
    assert f"uid {os.getuid()}" in info.value.message and "root" in info.value.message
    assert controller.calls == []
    assert "refused control connection from pid" in caplog.text


@pytest.mark.skipif(not (shutil.which("setpriv") and os.geteuid() == 0), reason="needs root and setpriv")
async def test_so_peercred_refuses_other_user_end_to_end(nursery, controller, caplog):
    # A world-traversable directory (tmp_path's parents are 0700) holding a 0666 socket: the
    # file mode lets uid 65534 connect, so only the SO_PEERCRED check stands in the way.
    directory = tempfile.mkdtemp(prefix="jqd-peercred-")
    try:
        os.chmod(directory, 0o755)
        path = await nursery.start(serve, os.path.join(directory, "ctl.sock"), controller)
        os.chmod(path, 0o666)
        control_dir = os.path.dirname(os.path.dirname(wire.__file__))
        result = await trio.run_process(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-c", "import sys; from jqd_ctl.cli import main; sys.exit(main())",
             "--socket", path, "status"],
            env={**os.environ, "PYTHONPATH": control_dir}, cwd=directory,
            capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 1, result.stderr
        assert b"permission denied" in result.stderr and b"permission_denied" in result.stderr
        assert controller.calls == []
        assert "uid 65534" in caplog.text
    finally:
        shutil.rmtree(directory, ignore_errors=True)
