"""jqd-ctl against the real control server (in the test's Trio loop; the blocking CLI in a thread)."""

import io
import json
import os
import shutil
import socket
import sys
import tempfile

import pytest
import trio

from jqd.control_server import ControlError, serve
from jqd_ctl import cli

FULL_STATUS = {
    "state": "paused", "version": "0.1.0", "uptime_seconds": 7390.4, "in_flight": 3, "workers": 10,
    "counts": {"queued": 12, "running": 3, "succeeded": 1234},
    "paused_queues": [{"queue": "emails", "reason": "smtp down", "paused_at": "2024-05-01T10:00:00Z"}],
    "global_pause": {"reason": "maintenance", "paused_at": "2024-05-01T09:00:00Z"},
}


class Controller:
    def __init__(self):
        self.calls = []
        self.status_result = FULL_STATUS
        self.refuse: ControlError | None = None

    async def status(self):
        return self.status_result

    async def pause(self, queue, reason):
        self.calls.append(("pause", queue, reason))
        if self.refuse:
            raise self.refuse
        return {"state": "paused"}

    async def resume(self, queue):
        self.calls.append(("resume", queue))
        return {"state": "running"}

    async def drain(self, timeout):
        self.calls.append(("drain", timeout))
        yield {"running": 2, "queued": 5}
        yield {"running": 0, "queued": 5}
        yield {"state": "drained", "returned": [7, 9]}


class TtyOut(io.StringIO):
    def isatty(self):
        return True


@pytest.fixture
def controller():
    return Controller()


@pytest.fixture
async def path(nursery, tmp_path, controller):
    return await nursery.start(serve, str(tmp_path / "ctl.sock"), controller)


async def run(argv, out=None):
    out = out if out is not None else io.StringIO()
    err = io.StringIO()
    code = await trio.to_thread.run_sync(lambda: cli.main(argv, out=out, err=err))
    return code, out.getvalue(), err.getvalue()


async def test_status_is_readable(path):
    code, out, err = await run(["--socket", path, "status"])
    assert (code, err) == (0, "")
    assert "state:     paused" in out
    assert "2h 03m 10s" in out and "3 of 10 workers" in out
    assert "queued 12, running 3, succeeded 1234" in out
    assert "all queues since 2024-05-01T09:00:00Z: maintenance" in out
    assert "queue 'emails' since 2024-05-01T10:00:00Z: smtp down" in out


async def test_status_tolerates_missing_fields(path, controller):
    controller.status_result = {"state": "running", "global_pause": None, "paused_queues": []}
    code, out, _ = await run(["--socket", path, "status"])
    assert code == 0 and out.strip() == "state: running"


async def test_status_json_and_options_after_command(path):
    code, out, _ = await run(["status", "--socket", path, "--json"])
    assert code == 0 and json.loads(out) == FULL_STATUS


async def test_socket_from_environment(path, monkeypatch):
    monkeypatch.setenv("JQD_CONTROL_SOCKET", path)
    assert (await run(["status"]))[0] == 0


async def test_pause_and_resume(path, controller):
    code, out, _ = await run(["--socket", path, "pause", "--queue", "emails", "--reason", "smtp down"])
    assert code == 0 and out == "paused queue 'emails': smtp down (daemon paused)\n"
    code, out, _ = await run(["--socket", path, "resume"])
    assert code == 0 and out == "resumed all queues (daemon running)\n"
    assert controller.calls == [("pause", "emails", "smtp down"), ("resume", None)]


async def test_drain_prints_one_line_per_update_when_not_a_tty(path, controller):
    code, out, _ = await run(["--socket", path, "drain", "--timeout", "30"])
    assert code == 0
    assert out.splitlines() == [
        "draining: 2 running, 5 queued",
        "draining: 0 running, 5 queued",
        "drained: nothing running; 2 job(s) put back to queued: 7, 9",
    ]
    assert controller.calls == [("drain", 30.0)]


async def test_drain_overwrites_the_line_on_a_tty(path):
    code, out, _ = await run(["--socket", path, "drain"], out=TtyOut())
    assert code == 0
    assert out.startswith("\rdraining: 2 running, 5 queued\rdraining: 0 running, 5 queued\n")
    assert out.endswith("drained: nothing running; 2 job(s) put back to queued: 7, 9\n")


async def test_drain_json_lines(path):
    code, out, _ = await run(["--socket", path, "--json", "drain"])
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [
        {"running": 2, "queued": 5}, {"running": 0, "queued": 5}, {"state": "drained", "returned": [7, 9]}]


async def test_refusal_exits_1_with_the_daemons_message(path, controller):
    controller.refuse = ControlError("stopping", "the daemon is shutting down")
    code, out, err = await run(["--socket", path, "pause"])
    assert (code, out) == (1, "")
    assert "the daemon is shutting down" in err and "stopping" in err


@pytest.mark.parametrize("argv", [[], ["explode"], ["drain", "--timeout", "-1"], ["drain", "--timeout", "soon"],
                                  ["pause", "--queue", ""], ["status", "--bogus"]])
async def test_usage_errors_exit_2(argv, capsys):
    assert (await run(argv))[0] == 2


async def test_help_exits_0(capsys):
    assert (await run(["--help"]))[0] == 0
    assert "drain" in capsys.readouterr().out


async def test_missing_socket_exits_3_naming_path_and_fix(tmp_path):
    missing = str(tmp_path / "nope.sock")
    code, out, err = await run(["--socket", missing, "status"])
    assert (code, out) == (3, "")
    assert missing in err and "is jqd running?" in err
    assert "--socket" in err and "JQD_CONTROL_SOCKET" in err


async def test_stale_socket_exits_3(tmp_path):
    stale = str(tmp_path / "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(stale)
    dead.close()
    code, _, err = await run(["--socket", stale, "status"])
    assert code == 3 and stale in err and "stale" in err and "not running" in err


@pytest.mark.skipif(not (shutil.which("setpriv") and os.geteuid() == 0), reason="needs root and setpriv")
async def test_permission_denied_names_the_owner(nursery, controller):
    directory = tempfile.mkdtemp(prefix="jqd-cli-perm-")
    try:
        os.chmod(directory, 0o755)
        path = await nursery.start(serve, os.path.join(directory, "ctl.sock"), controller)  # 0600 root
        control_dir = os.path.dirname(os.path.dirname(cli.__file__))
        result = await trio.run_process(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-m", "jqd_ctl",
             "--socket", path, "status"],
            env={**os.environ, "PYTHONPATH": control_dir}, cwd=directory,
            capture_stdout=True, capture_stderr=True, check=False)
        assert result.returncode == 3, result.stderr
        assert path.encode() in result.stderr
        assert b"permission denied" in result.stderr and b"owned by root (uid 0)" in result.stderr
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_default_socket_resolution():
    assert cli.default_socket({"JQD_CONTROL_SOCKET": "/x.sock", "RUNTIME_DIRECTORY": "/run/jqd"}) == "/x.sock"
    assert cli.default_socket({"RUNTIME_DIRECTORY": "/run/jqd:/run/other"}) == "/run/jqd/control.sock"
    assert cli.default_socket({}) == "./jqd.sock"


def test_render_status_durations():
    assert "uptime: 45s" in cli.render_status({"uptime_seconds": 45})
    assert "uptime: 3d 1h 00m" in cli.render_status({"uptime_seconds": 3 * 86400 + 3600})
