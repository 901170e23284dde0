"""The control plane end to end: `jqd-ctl` (a subprocess) against the real daemon's Unix socket.

Covers pause/resume (global, per queue, persisted across a restart), drain (waiting for running
jobs, and the timeout that re-queues them with their attempt refunded), the socket's mode, the
exit statuses of `jqd-ctl`, protocol garbage on the raw socket, and the SO_PEERCRED refusal.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from tests.integration.conftest import SLOW_CLAIM, post_once, read_response, wait_for, wait_state

# Every daemon here may be stopped (by the fixture) while a long sleep job runs: keep that short.
FAST_STOP = {"JQD_SHUTDOWN_GRACE": "0.5"}
NOBODY = 65534


def ctl(d, *args: str, socket_path: str | None = None, env: dict | None = None,
        timeout: float = 30.0) -> subprocess.CompletedProcess:
    """Run `jqd-ctl --socket PATH ARGS...`; socket_path="" leaves --socket out."""
    path = d.socket if socket_path is None else socket_path
    cmd = [sys.executable, "-m", "jqd_ctl", *(["--socket", path] if path else []), *args]
    return subprocess.run(cmd, env=d.env if env is None else env, capture_output=True, text=True,
                          timeout=timeout)


def status(d) -> dict:
    """The daemon's status, straight from the socket (the CLI's output is checked where it matters)."""
    [reply] = raw_exchange(d.socket, b'{"v":1,"cmd":"status"}\n')
    assert reply["ok"] is True, reply
    return reply["result"]


def raw_exchange(path: str, data: bytes, timeout: float = 5.0) -> list[dict]:
    """Send raw bytes on the control socket; return every reply line, parsed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        buffer = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buffer += chunk
    assert buffer.endswith(b"\n"), buffer
    return [json.loads(line) for line in buffer.splitlines()]


def wait_running(d, c, *job_ids: int) -> list[dict]:
    """The jobs read `running` and workers hold them (the only ones running in these tests).

    The API shows `running` from the claim's commit, a moment before the dispatcher hands the
    job to a worker (see test_drain_waits_for_a_claim_in_flight), hence the in-flight check.
    """
    jobs = [wait_state(c, job_id, "running") for job_id in job_ids]
    wait_for(lambda: status(d)["in_flight"] == len(job_ids), 5, message="workers to hold the jobs")
    return jobs


def submit(c, type_: str = "noop", payload: dict | None = None, **fields) -> dict:
    r = c.post("/createJob", json={"type": type_, "payload": payload or {}, **fields})
    assert r.status_code == 201, r.text
    return r.json()


def assert_stay_queued(c, ids, window: float = 0.5) -> None:
    """The jobs stay queued for the whole window (absence of a start can only be seen over time)."""
    deadline = time.monotonic() + window
    while True:
        for job_id in ids:
            job = c.get(f"/jobs/{job_id}").json()
            assert job["state"] == "queued", job
            assert job["attempts"] == 0, job
        if time.monotonic() >= deadline:
            return
        time.sleep(0.05)


def parse_time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def assert_recent(text: str, within: float = 120.0) -> None:
    when = parse_time(text)
    assert when.tzinfo is not None, text
    age = (datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()
    assert -5 < age < within, text


# --- pause / resume -------------------------------------------------------------------------------

def test_pause_keeps_new_jobs_queued_and_resume_runs_them(start_jqd):
    d = start_jqd()
    r = ctl(d, "pause")
    assert r.returncode == 0, r.stderr
    assert "paused all queues" in r.stdout and "(daemon paused)" in r.stdout
    with d.client() as c:
        ids = [submit(c)["id"] for _ in range(3)]  # intake continues while paused
        assert_stay_queued(c, ids)
        st = status(d)
        assert st["state"] == "paused"
        assert st["global_pause"]["reason"] is None
        assert_recent(st["global_pause"]["paused_at"])
        assert st["counts"].get("queued") == 3 and st["in_flight"] == 0
        human = ctl(d, "status")
        assert human.returncode == 0, human.stderr
        assert "paused" in human.stdout and "all queues" in human.stdout
        assert c.get("/readyz").status_code == 200  # paused is not draining: intake stays open

        r = ctl(d, "resume")
        assert r.returncode == 0, r.stderr
        assert "resumed all queues" in r.stdout and "(daemon running)" in r.stdout
        for job_id in ids:
            assert wait_state(c, job_id, "succeeded")["attempts"] == 1
    st = status(d)
    assert st["state"] == "running" and st["global_pause"] is None


def test_pause_with_reason_survives_restart(start_jqd):
    d = start_jqd()
    r = ctl(d, "pause", "--reason", "maintenance")
    assert r.returncode == 0, r.stderr
    assert "maintenance" in r.stdout
    with contextlib.closing(sqlite3.connect(d.db)) as db:  # acknowledged means stored
        assert db.execute("SELECT queue, reason FROM pauses").fetchall() == [("*", "maintenance")]
    assert d.stop() == 0

    d = start_jqd()  # same database (tmp_path/jobs.db)
    st = status(d)
    assert st["state"] == "paused", st
    assert st["global_pause"]["reason"] == "maintenance"
    assert_recent(st["global_pause"]["paused_at"])
    human = ctl(d, "status").stdout
    assert "maintenance" in human and st["global_pause"]["paused_at"] in human
    with d.client() as c:
        job = submit(c)
        assert_stay_queued(c, [job["id"]])
        r = ctl(d, "resume")
        assert r.returncode == 0, r.stderr
        wait_state(c, job["id"], "succeeded")
    # the resume is stored as well: nothing left for the next start to restore
    with contextlib.closing(sqlite3.connect(d.db)) as db:
        assert db.execute("SELECT queue, reason FROM pauses").fetchall() == []


def test_pause_one_queue(start_jqd):
    d = start_jqd()
    r = ctl(d, "pause", "--queue", "mail", "--reason", "smtp down")
    assert r.returncode == 0, r.stderr
    assert "paused queue 'mail': smtp down" in r.stdout
    with d.client() as c:
        mail = submit(c, queue="mail")
        other = submit(c, queue="reports")
        default = submit(c)
        wait_state(c, other["id"], "succeeded")
        wait_state(c, default["id"], "succeeded")
        assert_stay_queued(c, [mail["id"]])
        st = status(d)
        assert st["state"] == "running" and st["global_pause"] is None
        [paused] = st["paused_queues"]
        assert paused["queue"] == "mail" and paused["reason"] == "smtp down"
        assert_recent(paused["paused_at"])
        assert "queue 'mail'" in ctl(d, "status").stdout

        r = ctl(d, "resume", "--queue", "mail")
        assert r.returncode == 0, r.stderr
        assert "resumed queue 'mail'" in r.stdout
        wait_state(c, mail["id"], "succeeded")
    assert status(d)["paused_queues"] == []


# --- drain ----------------------------------------------------------------------------------------

class _Lines:
    """Collects a subprocess's stdout lines in a thread, so the test can look while it runs."""

    def __init__(self, proc: subprocess.Popen):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def test_drain_waits_for_running_jobs_then_resume_reopens(start_jqd):
    d = start_jqd(**FAST_STOP)
    with d.client() as c:
        ids = [submit(c, "sleep", {"seconds": 2})["id"] for _ in range(2)]
        wait_running(d, c, *ids)
        drain = subprocess.Popen([sys.executable, "-m", "jqd_ctl", "--socket", d.socket, "drain"],
                                 env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out = _Lines(drain)
            wait_for(lambda: c.get("/readyz").status_code == 503, 5, message="readyz 503")
            # intake is closed while the drain waits
            code, headers, body = post_once(d, "/createJob", {"type": "noop", "payload": {}})
            assert code == 503 and body["code"] == "draining", body
            assert int(headers["retry-after"]) > 0
            code, headers, body = post_once(d, "/createJobs", {"jobs": [{"type": "noop", "payload": {}}]})
            assert code == 503 and body["code"] == "draining", body
            assert int(headers["retry-after"]) > 0
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["code"] == "draining"
            st = status(d)
            assert st["state"] == "draining" and st["in_flight"] == 2
            # progress is shown while the jobs still run
            wait_for(lambda: out.lines, 5, message="a drain progress line")
            assert out.lines[0] == "draining: 2 running, 0 queued", out.lines
            assert drain.poll() is None
            assert drain.wait(15) == 0, drain.stderr.read()
            out.join(5)
        finally:
            if drain.poll() is None:
                drain.kill()
        assert out.lines[-1] == "drained: nothing running", out.lines
        assert all(line.startswith("draining: ") for line in out.lines[:-1]), out.lines
        for job_id in ids:
            job = c.get(f"/jobs/{job_id}").json()
            assert job["state"] == "succeeded" and job["attempts"] == 1, job
        st = status(d)
        assert st["state"] == "drained" and st["in_flight"] == 0
        # drained: intake stays closed until resume
        assert post_once(d, "/createJob", {"type": "noop", "payload": {}})[0] == 503

        r = ctl(d, "resume")
        assert r.returncode == 0, r.stderr
        assert "(daemon running)" in r.stdout
        assert c.get("/readyz").status_code == 200
        job = submit(c)
        wait_state(c, job["id"], "succeeded")
    assert status(d)["state"] == "running"


def test_drain_timeout_requeues_without_using_an_attempt(start_jqd):
    d = start_jqd(**FAST_STOP)
    with d.client() as c:
        job = submit(c, "sleep", {"seconds": 60})
        assert job["attempts"] == 0
        assert wait_running(d, c, job["id"])[0]["attempts"] == 1
        started = time.monotonic()
        r = ctl(d, "drain", "--timeout", "0.5", "--json")
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - started < 10
        replies = [json.loads(line) for line in r.stdout.splitlines()]
        assert replies[-1] == {"state": "drained", "returned": [job["id"]]}, replies
        assert len(replies) >= 2, replies  # at least one progress line before the result
        for progress in replies[:-1]:
            assert progress == {"running": 1, "queued": 0}, replies

        after = c.get(f"/jobs/{job['id']}").json()
        assert after["state"] == "queued", after
        assert after["attempts"] == 0, after  # 1 while running, refunded
        assert after["rescues"] == 0, after
        st = status(d)
        assert st["state"] == "drained" and st["in_flight"] == 0
        assert st["counts"] == {"queued": 1}
        assert_stay_queued(c, [job["id"]])  # drained: nothing is claimed

        # draining again with nothing running returns at once
        again = ctl(d, "drain", "--timeout", "0")
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == "drained: nothing running"

        assert ctl(d, "resume").returncode == 0
        assert wait_running(d, c, job["id"])[0]["attempts"] == 1  # the refunded attempt is reused
        # the human form names the jobs put back
        r = ctl(d, "drain", "--timeout", "0.2")
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines()[-1] == f"drained: nothing running; 1 job(s) put back to queued: {job['id']}"
        after = c.get(f"/jobs/{job['id']}").json()
        assert after["state"] == "queued" and after["attempts"] == 0, after




def test_drain_waits_for_a_claim_in_flight(start_jqd, tmp_path):
    (tmp_path / "slowclaim.py").write_text(SLOW_CLAIM)
    d = start_jqd("--handlers", "slowclaim", **FAST_STOP)
    try:
        with d.client() as c:
            job = submit(c, "sleep", {"seconds": 0.3})
            wait_state(c, job["id"], "running")  # committed; the dispatcher is still waiting for it
            r = ctl(d, "--json", "drain")
            assert r.returncode == 0, r.stderr
            result = json.loads(r.stdout.splitlines()[-1])
            after = c.get(f"/jobs/{job['id']}").json()
    finally:
        d.kill()  # not a shutdown test: no need to wait for the held writer
    assert result["state"] == "drained", result
    # "returns when nothing runs": the job finished, or was put back (and reported)
    assert after["state"] in ("succeeded", "queued"), (result, after)
    if after["state"] == "queued":
        assert after["attempts"] == 0 and result["returned"] == [job["id"]], (result, after)


def test_resume_during_drain_does_not_interrupt_jobs_later(start_jqd):
    d = start_jqd(**FAST_STOP)
    with d.client() as c:
        job = submit(c, "sleep", {"seconds": 60})
        [first] = wait_running(d, c, job["id"])
        drain = subprocess.Popen(
            [sys.executable, "-m", "jqd_ctl", "--socket", d.socket, "--json", "drain", "--timeout", "1.5"],
            env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for(lambda: status(d)["state"] == "draining", 5, message="the drain to start")
            r = ctl(d, "resume")
            assert r.returncode == 0, r.stderr
            assert "(daemon running)" in r.stdout
            out, err = drain.communicate(timeout=20)  # the drain client returns either way
        finally:
            if drain.poll() is None:
                drain.kill()
        assert drain.returncode == 0, err
        result = json.loads(out.splitlines()[-1])
        now = c.get(f"/jobs/{job['id']}").json()
    assert result["returned"] == [], result  # the resumed daemon's jobs are left alone
    assert now["state"] == "running" and now["attempts"] == 1, now
    assert now["started_at"] == first["started_at"], (first, now)  # the same attempt, never restarted
    assert "interrupted job" not in d.log and "interrupted by shutdown or drain" not in json.dumps(now)


def test_resume_refuses_the_global_pause_name_as_a_queue(start_jqd):
    d = start_jqd()
    assert ctl(d, "pause", "--reason", "maintenance").returncode == 0
    r = ctl(d, "resume", "--queue", "*")
    st = status(d)
    assert st["state"] == "paused" and st["global_pause"]["reason"] == "maintenance", st
    assert r.returncode == 1 and "bad_arguments" in r.stderr, (r.stdout, r.stderr)


def test_connection_after_an_early_503_is_closed_or_reusable(start_jqd):
    """After an answer, the connection is usable for the next request, or the server closes it
    (RFC 9112 9.6: a server that sends `Connection: close` must then close)."""
    d = start_jqd()
    try:
        _early_answer_rounds(d)
    finally:
        d.kill()  # a wedged connection would hold a graceful stop for hypercorn's graceful_timeout


def _early_answer_rounds(d) -> None:
    assert ctl(d, "drain").returncode == 0
    body = json.dumps({"type": "noop", "payload": {}}).encode()
    head = (f"POST /createJob HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", d.port), timeout=10) as s:
            s.sendall(head)
            # A client whose body trails its head (a slow network, or httpx, which writes them
            # separately): this pause is the stimulus, not a wait for some state.
            time.sleep(0.1)
            early = _available(s)  # the daemon may answer before it has the body
            try:
                s.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                assert early, "the connection closed without an answer"
            code, headers, payload = read_response(_Prefixed(s if not early else None, early))
            assert code == 503 and json.loads(payload)["code"] == "draining"
            s.settimeout(2)
            try:
                if headers.get("connection", "").lower() != "close":
                    s.sendall(f"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:{d.port}\r\n\r\n".encode())
                answer = s.recv(65536)
            except socket.timeout:
                pytest.fail(f"the connection hangs: neither closed nor answering (response headers {headers})")
            except (BrokenPipeError, ConnectionResetError):
                answer = b""
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer


def _available(s: socket.socket) -> bytes:
    """What the peer has already sent, without waiting."""
    data = b""
    s.setblocking(False)
    try:
        while chunk := s.recv(65536):
            data += chunk
    except (BlockingIOError, ConnectionResetError):
        pass
    finally:
        s.settimeout(10)
    return data


class _Prefixed:
    """A socket whose first recv() returns bytes already read (sock None: those bytes are all)."""

    def __init__(self, sock: socket.socket | None, prefix: bytes):
        self._sock = sock
        self._prefix = prefix

    def recv(self, n: int) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            return data
        return self._sock.recv(n) if self._sock is not None else b""


# --- socket, exit statuses, protocol errors -------------------------------------------------------

def test_socket_mode_and_exit_statuses(start_jqd, tmp_path):
    d = start_jqd()
    st = os.stat(d.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.getuid()

    r = ctl(d, "status")
    assert r.returncode == 0, r.stderr
    assert "state:" in r.stdout and "running" in r.stdout and "workers" in r.stdout
    # --socket and --json also work after the command
    r = subprocess.run([sys.executable, "-m", "jqd_ctl", "status", "--json", "--socket", d.socket],
                       env=d.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "running"
    # the socket defaults to $JQD_CONTROL_SOCKET
    r = ctl(d, "status", socket_path="", env={**d.env, "JQD_CONTROL_SOCKET": d.socket})
    assert r.returncode == 0, r.stderr

    # 2: usage errors
    for args in (["frobnicate"], [], ["drain", "--timeout", "-1"], ["pause", "--queue", ""]):
        r = ctl(d, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "usage:" in r.stderr, (args, r.stderr)

    # 3: no socket; the message names the path and says how to point at the right one
    missing = str(tmp_path / "nowhere" / "jqd.sock")
    for r in (ctl(d, "status", socket_path=missing),
              ctl(d, "status", socket_path="", env={**d.env, "JQD_CONTROL_SOCKET": missing})):
        assert r.returncode == 3, (r.stdout, r.stderr)
        assert missing in r.stderr
        assert "--socket" in r.stderr and "JQD_CONTROL_SOCKET" in r.stderr
        assert r.stdout == ""
    # 3: a stale socket file nobody listens on
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(stale)
    r = ctl(d, "status", socket_path=stale)
    assert r.returncode == 3, (r.stdout, r.stderr)
    assert stale in r.stderr and "refused" in r.stderr

    # 1: the daemon refuses ('*' is where the global pause is stored, not a queue)
    r = ctl(d, "pause", "--queue", "*")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "bad_arguments" in r.stderr and "refused" in r.stderr
    st = status(d)
    assert st["state"] == "running" and st["global_pause"] is None and st["paused_queues"] == []


def test_garbage_on_the_socket_gets_error_replies(start_jqd):
    d = start_jqd()
    oversized = b'{"v":1,"cmd":"pause","args":{"reason":"' + b"x" * (100 * 1024) + b'"}}\n'
    cases = [
        (b"garbage\n", "bad_json"),
        (b"{}\n", "unsupported_version"),
        (b'{"v":2,"cmd":"status"}\n', "unsupported_version"),
        (b"[1,2]\n", "bad_request"),
        (b'{"v":1}\n', "bad_request"),
        (b'{"v":1,"cmd":"status","extra":1}\n', "bad_request"),
        (b'{"v":1,"cmd":"frobnicate","args":{}}\n', "unknown_command"),
        (b'{"v":1,"cmd":"pause","args":{"queue":""}}\n', "bad_arguments"),
        (b'{"v":1,"cmd":"drain","args":{"timeout":-1}}\n', "bad_arguments"),
        (b"\xff\xfe\n", "bad_json"),
        (oversized, "line_too_long"),
    ]
    for data, code in cases:
        replies = raw_exchange(d.socket, data)
        assert len(replies) == 1, (data[:60], replies)
        [reply] = replies
        assert reply["v"] == 1 and reply["ok"] is False, (data[:60], reply)
        assert reply["code"] == code, (data[:60], reply)
        assert isinstance(reply["error"], str) and reply["error"], reply

    # connecting and leaving without a request is not an error
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(d.socket)
    # the daemon still answers, and none of the above took effect (the oversized pause included)
    [reply] = raw_exchange(d.socket, b'{"v":1,"cmd":"status","args":{}}\n')
    assert reply["ok"] is True and reply["result"]["state"] == "running", reply
    assert status(d)["state"] == "running"
    assert d.proc.poll() is None


def test_peer_with_another_uid_is_refused(start_jqd):
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to run jqd-ctl as another user (uid 65534)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv (util-linux) to run jqd-ctl as uid 65534")
    # tmp_path lives under /tmp/pytest-of-root (0700), which uid 65534 cannot traverse
    sock_dir = tempfile.mkdtemp(prefix="jqd-ctl-", dir="/tmp")
    d = None
    try:
        os.chmod(sock_dir, 0o755)
        sock = os.path.join(sock_dir, "control.sock")
        d = start_jqd(JQD_CONTROL_SOCKET=sock)
        as_nobody = [setpriv, "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups"]
        probe = subprocess.run(as_nobody + [sys.executable, "-c", "import os, jqd_ctl.cli; print(os.getuid())"],
                               env=d.env, cwd="/", capture_output=True, text=True, timeout=30)
        if probe.returncode != 0 or probe.stdout.strip() != str(NOBODY):
            pytest.skip(f"uid {NOBODY} cannot run {sys.executable} with jqd_ctl from the source tree "
                        f"(is /work or the venv readable by nobody?): {probe.stderr.strip()[-300:]}")
        os.chmod(sock, 0o666)  # the file mode would let it in: SO_PEERCRED must not
        r = subprocess.run(as_nobody + [sys.executable, "-m", "jqd_ctl", "--socket", sock, "status"],
                           env=d.env, cwd="/", capture_output=True, text=True, timeout=30)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert "permission_denied" in r.stderr, r.stderr
        assert r.stdout == ""
        wait_for(lambda: "refused control connection" in d.log and f"uid {NOBODY}" in d.log, 5,
                 message="the refusal in the daemon log")
        # our own uid is still served
        assert status(d)["state"] == "running"
    finally:
        if d is not None:
            d.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
