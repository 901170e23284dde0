"""Fixtures that run the real `jqd` as a subprocess.

`start_jqd(**env)` starts a daemon on a free port with its database and control socket in
the test's tmp_path, waits for its "ready" log line, and returns a `Daemon`. Every daemon
still running at the end of the test is stopped with SIGTERM (then SIGKILL).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

READY = re.compile(r"jqd \S+ ready: http://[^:]+:(\d+), control (\S+),")
START_TIMEOUT = 20.0


class Daemon:
    def __init__(self, proc: subprocess.Popen, db: str, socket_path: str, env: dict, cwd: str):
        self.proc = proc
        self.db = db
        self.socket = socket_path
        self.env = env
        self.cwd = cwd
        self.port: int | None = None
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            match = READY.search(line)
            if match:
                self.port = int(match.group(1))
                self._ready.set()
        self._ready.set()  # EOF: the process died before (or after) ready

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> "Daemon":
        if not self._ready.wait(timeout) or self.port is None:
            self.proc.kill()
            raise AssertionError(f"jqd did not become ready; log:\n{self.log}")
        return self

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0, **kw)

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.wait(5)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.wait(10)


def jqd_command() -> list[str]:
    return [sys.executable, "-m", "jqd"]


@pytest.fixture
def start_jqd(tmp_path):
    started: list[Daemon] = []
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

    def start(*args: str, wait: bool = True, db: str | None = None, cwd: str | None = None,
              **env_overrides: str) -> Daemon:
        db = db or str(tmp_path / "jobs.db")
        socket_path = env_overrides.pop("JQD_CONTROL_SOCKET", str(tmp_path / "jqd.sock"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JQD_", "SMTP_", "GMAIL_"))}
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env["PYTHONPATH"] = os.pathsep.join(
            [os.path.join(src, "daemon"), os.path.join(src, "control"), env.get("PYTHONPATH", "")])
        env.update({"JQD_DB": db, "JQD_CONTROL_SOCKET": socket_path, "JQD_BIND": "127.0.0.1:0",
                    "JQD_LOG_LEVEL": "info"})
        env.update({k: str(v) for k, v in env_overrides.items()})
        proc = subprocess.Popen(jqd_command() + list(args), env=env, cwd=cwd or str(tmp_path),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        daemon = Daemon(proc, db, socket_path, env, cwd or str(tmp_path))
        started.append(daemon)
        return daemon.wait_ready() if wait else daemon

    yield start
    for daemon in started:
        if daemon.proc.poll() is None:
            daemon.stop(10)


def post_once(d, path: str, body: dict) -> tuple[int, dict, dict]:
    """POST on a fresh connection, request line, headers and body in one write; (status, headers, json).

    Intake refusals are probed on their own connection so that each check stands alone; the
    pooled-connection case is test_control_plane.test_connection_after_an_early_503_is_closed_or_reusable.
    """
    data = json.dumps(body).encode()
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data
    with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
        s.sendall(request)
        status, headers, payload = read_response(s)
    return status, headers, json.loads(payload)


def read_response(sock, timeout: float | None = None) -> tuple[int, dict, bytes]:
    """Read one HTTP/1.1 response (Content-Length framed) from a blocking socket, or anything
    with `recv`; `timeout` (seconds) is set on the socket first. EOFError when the peer closes
    before the response is complete."""
    if timeout is not None:
        sock.settimeout(timeout)
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"connection closed before the response head: {buffer!r}")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed in the middle of the response body")
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Wait for an external process to reach a state (the only sleeps in these tests)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")


def wait_state(client: httpx.Client, job_id: int, states, timeout: float = 10.0) -> dict:
    states = {states} if isinstance(states, str) else set(states)

    def check():
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["state"] in states else None

    return wait_for(check, timeout, message=f"job {job_id} to reach {states}")


# A --handlers module that holds the store writer for two seconds right after a claim
# commits, so the job already reads as `running` while the dispatcher has not started it:
# widens the race that drain and shutdown must handle (wait for the claim in flight).
SLOW_CLAIM = """
import time

from jqd import faults

_claimed = [False]


def _plan(point):
    if point == "claim":
        _claimed[0] = True
    elif point == "commit.after" and _claimed[0]:
        _claimed[0] = False
        time.sleep(2.0)


faults.install(_plan)
"""


def control_status(daemon: Daemon) -> dict:
    """The daemon's `status` over the control socket, through the real client."""
    from jqd_ctl.client import Client

    return Client(daemon.socket, timeout=5).call("status", {})
