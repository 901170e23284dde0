"""sd_notify end to end: the real daemon talks to a datagram socket standing in for systemd.

READY=1 only once HTTP and the control socket accept connections, STATUS= lines, STOPPING=1
with EXTEND_TIMEOUT_USEC= at shutdown, the abstract-namespace form of NOTIFY_SOCKET, and
WATCHDOG=1 pings that stop while the event loop is blocked.
"""

from __future__ import annotations

import signal
import socket
import textwrap
import threading
import time
import uuid

import httpx

from tests.integration.conftest import control_status, wait_for, wait_state


class NotifyListener:
    """An AF_UNIX datagram socket playing systemd's side; records (monotonic time, datagram).

    ``on_ready`` runs in the receiving thread as soon as READY=1 arrives, before anything else
    is received, so it sees the daemon exactly as systemd would at that moment.
    """

    def __init__(self, address: str | bytes, on_ready=None):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.05)
        self.datagrams: list[tuple[float, str]] = []
        self.on_ready = on_ready
        self.ready_check: object = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            received = time.monotonic()
            text = data.decode()
            if "READY=1" in text.split("\n") and self.on_ready is not None:
                try:
                    self.ready_check = self.on_ready()
                except Exception as exc:  # reported by the test, not lost in the thread
                    self.ready_check = exc
            self.datagrams.append((received, text))

    def lines(self) -> list[str]:
        return [line for _, text in list(self.datagrams) for line in text.split("\n") if line]

    def times_of(self, line: str) -> list[float]:
        return [t for t, text in list(self.datagrams) if line in text.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _probe_ready(holder: dict):
    """What a client sees the instant READY=1 arrives: HTTP and the control socket both answer."""
    d = holder["daemon"]
    d.wait_ready(10)  # the port, from the "ready" log line the daemon wrote before READY=1
    health = httpx.get(f"{d.url}/healthz", timeout=2).status_code  # one try, no retry
    return health, control_status(d)  # one try too



def test_ready_status_and_stopping(start_jqd, tmp_path):
    path = str(tmp_path / "notify.sock")
    holder: dict = {}
    listener = NotifyListener(path, on_ready=lambda: _probe_ready(holder))
    try:
        d = start_jqd(wait=False, NOTIFY_SOCKET=path, JQD_SHUTDOWN_GRACE="2")
        holder["daemon"] = d
        d.wait_ready()
        wait_for(lambda: listener.times_of("READY=1"), 10, message="READY=1")
        check = listener.ready_check
        assert isinstance(check, tuple), check  # else the probe failed (the exception) or never ran
        health, control = check
        assert health == 200
        assert control["state"] == "running", control
        assert listener.lines()[0] == "READY=1", listener.lines()  # nothing before READY=1
        assert listener.lines().count("READY=1") == 1
        status = wait_for(lambda: [x for x in listener.lines() if x.startswith("STATUS=")], 10,
                          message="a STATUS= line")
        assert "running" in status[0] and "workers" in status[0], status

        with d.client() as c:  # a job still running at SIGTERM: STATUS= says what shutdown waits for
            job = c.post("/createJob", json={"type": "sleep", "payload": {"seconds": 60}}).json()
            wait_state(c, job["id"], "running")
        # a worker holds it (the API says running from the claim's commit, a moment earlier)
        wait_for(lambda: control_status(d)["in_flight"] == 1, 5, message="a worker to hold the job")
        before_stop = len(listener.lines())
        d.signal(signal.SIGTERM)
        assert d.wait(15) == 0, d.log
        wait_for(lambda: "STOPPING=1" in listener.lines(), 5, message="STOPPING=1")
        after = listener.lines()[before_stop:]
        assert "STOPPING=1" in after, after
        extend = [x for x in after if x.startswith("EXTEND_TIMEOUT_USEC=")]
        assert extend, after
        usec = int(extend[0].split("=", 1)[1])
        assert usec > 2_000_000, extend  # more than the grace
        assert after.index("STOPPING=1") < after.index(extend[0])
        assert any(x.startswith("STATUS=") and "stopping" in x and "1 running job" in x for x in after), after
        assert "READY=1" not in after
    finally:
        listener.close()


def test_abstract_notify_socket(start_jqd):
    name = f"jqd-test-{uuid.uuid4().hex[:16]}"
    listener = NotifyListener(b"\0" + name.encode())
    try:
        d = start_jqd(NOTIFY_SOCKET="@" + name)
        wait_for(lambda: listener.times_of("READY=1"), 10, message="READY=1 on the abstract socket")
        wait_for(lambda: any(x.startswith("STATUS=") for x in listener.lines()), 10, message="a STATUS= line")
        assert d.stop() == 0
        wait_for(lambda: "STOPPING=1" in listener.lines(), 5, message="STOPPING=1")
        assert "sd_notify" not in d.log  # no send failed
    finally:
        listener.close()


BLOCKING_HANDLER = textwrap.dedent("""
    import time

    from jqd import job_type


    @job_type("block")
    async def block(job):
        time.sleep(job.payload["seconds"])  # deliberately blocks the whole event loop
        return {"blocked": job.payload["seconds"]}
""")


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


def test_watchdog_pings_stop_while_the_loop_is_blocked(start_jqd, tmp_path):
    (tmp_path / "blockmod.py").write_text(BLOCKING_HANDLER)
    path = str(tmp_path / "notify.sock")
    listener = NotifyListener(path)
    try:
        d = start_jqd("--handlers", "blockmod", NOTIFY_SOCKET=path, WATCHDOG_USEC="200000", WATCHDOG_PID="",
                      JQD_SHUTDOWN_GRACE="1")
        # steady pings every 0.1 s (half of WATCHDOG_USEC) while idle
        wait_for(lambda: len(listener.times_of("WATCHDOG=1")) >= 8, 10, message="8 watchdog pings")
        idle = listener.times_of("WATCHDOG=1")
        assert max(_gaps(idle)) < 1.0, _gaps(idle)  # 0.1 s apart, with room for a loaded machine

        with d.client() as c:
            before = len(listener.times_of("WATCHDOG=1"))
            job = c.post("/createJob", json={"type": "block", "payload": {"seconds": 1.5}}).json()
            done = wait_state(c, job["id"], "succeeded", timeout=15)
        assert done["result"] == {"blocked": 1.5}

        def after_block() -> list[float]:
            """The pings after the first silence of 1.2 s or more since the job was submitted."""
            pings = listener.times_of("WATCHDOG=1")[max(0, before - 1):]
            silences = [i for i, gap in enumerate(_gaps(pings)) if gap >= 1.2]
            return pings[silences[0] + 1:] if silences else []

        # no ping while the loop was blocked (1.5 s), then regular pings again
        wait_for(lambda: len(after_block()) >= 5, 10, message="5 pings after a silence of >= 1.2 s")
        pings = listener.times_of("WATCHDOG=1")[max(0, before - 1):]
        assert max(_gaps(pings)) < 3.0, _gaps(pings)  # one silence, about the block's length
        resumed = after_block()[:5]
        assert max(_gaps(resumed)) < 1.0, _gaps(resumed)
        assert d.stop() == 0
    finally:
        listener.close()
