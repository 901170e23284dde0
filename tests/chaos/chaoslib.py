"""Shared pieces of the crash harness and the kill-point tests.

- `JqdProcess`: the real daemon as a subprocess (`python -m jqd`, or `faulty_jqd.py` with a
  crash plan) on a fixed port, so that clients reconnect to the same address after a restart;
  ready means `GET /readyz` answered 200.
- `Receiver`: a loopback webhook target recording every delivery (token, Jqd-Job-Id,
  Jqd-Attempt, the status it answered); it answers 500 for a seeded fraction of attempts.
- `integrity`, `counts_drift`: checks of the database file with the `sqlite3` module, read-only,
  so that checking never checkpoints or removes the WAL the next start must recover from.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
FAULTY_JQD = os.path.join(HERE, "faulty_jqd.py")


def jqd_command() -> list[str]:
    return [sys.executable, "-m", "jqd"]


def faulty_command(*crash_at: str) -> list[str]:
    args = [sys.executable, FAULTY_JQD]
    for spec in crash_at:
        args += ["--crash-at", spec]
    return args + ["--"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**overrides: object) -> dict[str, str]:
    """The environment of a test daemon: nothing inherited that configures jqd."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JQD_", "SMTP_", "GMAIL_"))}
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WORKER_COUNT"):
        env.pop(key, None)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (os.path.join(ROOT, "daemon"), os.path.join(ROOT, "control"), env.get("PYTHONPATH")) if p)
    env.update({k: str(v) for k, v in overrides.items()})
    return env


def poll(predicate, timeout: float, interval: float = 0.01, message: str = "condition"):
    """Wait for an external process to reach a state; the value of the predicate, or raise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {message}")
        time.sleep(interval)


class JqdProcess:
    """One daemon process at a time on `port`; `start` may be called again after a kill."""

    def __init__(self, workdir: str, port: int | None = None, *, env: dict | None = None,
                 log_name: str = "jqd.log"):
        self.workdir = workdir
        self.port = port or free_port()
        self.db = os.path.join(workdir, "jobs.db")
        self.socket = os.path.join(workdir, "jqd.sock")
        self.log_path = os.path.join(workdir, log_name)
        self.env = base_env(JQD_DB=self.db, JQD_BIND=f"127.0.0.1:{self.port}",
                            JQD_CONTROL_SOCKET=self.socket, JQD_LOG_LEVEL="info", **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.last_start_seconds: float | None = None  # spawn to ready, of the last `start`

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def spawn(self, command: list[str] | None = None) -> subprocess.Popen:
        assert self.proc is None or self.proc.poll() is not None, "a daemon is still running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"---- start {self.starts}: {' '.join(command or jqd_command())}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(command or jqd_command(), env=self.env, cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        return self.proc

    def is_ready(self) -> bool:
        try:
            return httpx.get(self.url + "/readyz", timeout=1.0).status_code == 200
        except httpx.TransportError:
            return False

    def wait_ready(self, timeout: float = 30.0) -> float:
        """Poll /readyz until 200; the seconds it took. Raises if the process exits first."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            if self.is_ready():
                return time.monotonic() - start
            code = self.proc.poll()
            if code is not None:
                raise DaemonExited(code, self.log_tail())
            if time.monotonic() >= deadline:
                raise TimeoutError(f"jqd not ready after {timeout:g} s; log tail:\n{self.log_tail()}")
            time.sleep(0.005)

    def start(self, command: list[str] | None = None, timeout: float = 30.0, tries: int = 5) -> float:
        """Start and wait until ready; retried when the process exits at start-up (e.g. the
        port is not free yet after a kill). Returns the seconds from spawn to ready."""
        for attempt in range(tries):
            started = time.monotonic()
            self.spawn(command)
            try:
                self.wait_ready(timeout)
                self.last_start_seconds = time.monotonic() - started
                return self.last_start_seconds
            except DaemonExited:
                if attempt == tries - 1:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(30)

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM (graceful); SIGKILL if it does not exit in time. The exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def wait_exit(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log()[-chars:]


class DaemonExited(Exception):
    def __init__(self, code: int, log_tail: str):
        super().__init__(f"jqd exited with status {code} before it was ready; log tail:\n{log_tail}")
        self.code = code


# --- the database, read-only ------------------------------------------------------------

def connect_ro(db: str) -> sqlite3.Connection:
    """A read-only connection: it reads the WAL but never checkpoints or deletes it."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)


def integrity(db: str) -> str:
    conn = connect_ro(db)
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()
    return "ok" if rows == [("ok",)] else "; ".join(r[0] for r in rows[:10])


def counts_drift(db: str) -> dict:
    """{(state, queue): (job_counts, actual)} for every pair where the counts table differs
    from `SELECT state, queue, count(*) FROM jobs GROUP BY 1, 2`. Empty when consistent."""
    conn = connect_ro(db)
    try:
        kept = {(s, q): n for s, q, n in conn.execute("SELECT state, queue, n FROM job_counts")}
        actual = {(s, q): n for s, q, n in conn.execute(
            "SELECT state, queue, count(*) FROM jobs GROUP BY 1, 2")}
    finally:
        conn.close()
    return {key: (kept.get(key, 0), actual.get(key, 0)) for key in kept.keys() | actual.keys()
            if kept.get(key, 0) != actual.get(key, 0)}


def query(db: str, sql: str, params: tuple = ()) -> list[tuple]:
    conn = connect_ro(db)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


# --- the webhook receiver ------------------------------------------------------------------

Delivery = collections.namedtuple("Delivery", "token job_id attempt status")


class Receiver:
    """Records every webhook delivery; answers 500 when `fails(token, attempt)`, else 200.
    A delivery is recorded when it is answered (after its gate, if any), even if the daemon
    that sent it is dead by then.

    The default failure rule is a seeded hash of (seed, token, attempt): the same run of the
    same seed fails the same attempts, whatever the thread interleaving."""

    def __init__(self, fail_rate: float = 0.0, seed: int = 0, fails=None, gates: dict | None = None):
        self.fail_rate = fail_rate
        # token prefix -> threading.Event: such a delivery is held (the job stays `running`)
        # until the event is set; how the kill-point tests keep a job running across a kill
        self.gates: dict[str, threading.Event] = gates or {}
        self.seed = seed
        self.fails = fails or self._seeded_failure
        self.lock = threading.Lock()
        self.deliveries: list[Delivery] = []
        self.torn = 0  # requests cut short by a kill of jqd: not deliveries
        self.ok: collections.Counter = collections.Counter()  # token -> deliveries answered 200
        self.ok_ids: dict[str, set[int]] = collections.defaultdict(set)  # token -> job ids answered 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                raw = self.rfile.read(length)
                try:
                    token = str(json.loads(raw)["token"])
                except (ValueError, KeyError, TypeError):
                    # a request torn by the kill of the sender (short body): nobody to answer
                    with receiver.lock:
                        receiver.torn += 1
                    self.close_connection = True
                    return
                for prefix, gate in receiver.gates.items():
                    if token.startswith(prefix):
                        gate.wait(60)
                job_id = int(self.headers.get("Jqd-Job-Id", "0"))
                attempt = int(self.headers.get("Jqd-Attempt", "0"))
                status = 500 if receiver.fails(token, attempt) else 200
                with receiver.lock:
                    receiver.deliveries.append(Delivery(token, job_id, attempt, status))
                    if status == 200:
                        receiver.ok[token] += 1
                        receiver.ok_ids[token].add(job_id)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):  # quiet
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # every worker of the daemon may connect at once
            daemon_threads = True

            def handle_error(self, request, client_address):
                # jqd's connections vanish when it is killed: expected, not worth a traceback
                if not isinstance(sys.exc_info()[1], ConnectionError):
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="receiver", daemon=True)
        self.thread.start()

    def _seeded_failure(self, token: str, attempt: int) -> bool:
        if self.fail_rate <= 0:
            return False
        return zlib.crc32(f"{self.seed}|{token}|{attempt}".encode()) / 2**32 < self.fail_rate

    def delivered(self) -> set[str]:
        with self.lock:
            return set(self.ok)

    def snapshot(self) -> tuple[collections.Counter, dict[str, set[int]], int, int]:
        """(200-deliveries per token, job ids per token, all deliveries, 500 answers)."""
        with self.lock:
            failed = sum(1 for d in self.deliveries if d.status != 200)
            return (collections.Counter(self.ok), {t: set(ids) for t, ids in self.ok_ids.items()},
                    len(self.deliveries), failed)

    def wait_for(self, tokens, timeout: float) -> set[str]:
        """Wait until every token got a 200 delivery; the tokens still missing at the timeout."""
        missing = set(tokens)
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                missing = {t for t in missing if t not in self.ok}
            if not missing or time.monotonic() >= deadline:
                return missing
            time.sleep(0.05)

    def close(self) -> None:
        for gate in self.gates.values():
            gate.set()
        self.server.shutdown()
        self.server.server_close()
