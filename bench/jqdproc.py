"""The real daemon as a subprocess, for the benchmark: start, control, observe, stop.

`sys.executable -m jqd` with its database and control socket in a fresh temporary directory,
an HTTP port picked free, `JQD_MAX_QUEUED=2000000`, `JQD_LOG_LEVEL=warning`; inherited
`JQD_*`, `WORKER_COUNT` and `SMTP_*` variables are dropped so the shell cannot change what is
measured, and the daemon runs in the temporary directory so no `.env` file is picked up.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from loadgen import RawHTTP, build_request

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonError(RuntimeError):
    pass


class Daemon:
    def __init__(self, name: str, *, workers: int = 10, tmp_root: str | None = None, log_dir: str,
                 extra_env: dict | None = None):
        self.name = name
        self.workers = workers
        self.dir = tempfile.mkdtemp(prefix=f"jqd-bench-{name}-", dir=tmp_root)
        self.db = os.path.join(self.dir, "jobs.db")
        self.socket_path = os.path.join(self.dir, "control.sock")
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log_path = os.path.join(log_dir, f"daemon-{name}.log")
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self._conn: RawHTTP | None = None

    # --- life cycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> "Daemon":
        env = {k: v for k, v in os.environ.items()
               if not (k.startswith(("JQD_", "SMTP_", "GMAIL_")) or k in ("WORKER_COUNT", "NOTIFY_SOCKET",
                                                                         "WATCHDOG_USEC"))}
        env.update({
            "JQD_DB": self.db, "JQD_BIND": f"{self.host}:{self.port}", "JQD_CONTROL_SOCKET": self.socket_path,
            "JQD_MAX_QUEUED": "2000000", "JQD_LOG_LEVEL": "warning", "WORKER_COUNT": str(self.workers),
        })
        env.update(self.extra_env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "jqd"], env=env, cwd=self.dir,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DaemonError(f"jqd exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                status, _ = RawHTTP(self.host, self.port, timeout=2).request(
                    build_request("GET", "/healthz", self.host, self.port))
                if status == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise DaemonError(f"jqd did not answer /healthz within {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.05)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 60.0) -> int | None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return self.proc.returncode

    def check_alive(self) -> None:
        """Raise DaemonError (with the daemon's last error line) when the process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_tail(60).splitlines()
            last = next((line.strip(" |") for line in reversed(tail)
                         if re.search(r"(Error|Exception|error|CRITICAL)", line)), tail[-1] if tail else "")
            raise DaemonError(f"jqd exited with status {self.proc.returncode} during the run: {last} "
                              f"(see {self.log_path})")

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> "Daemon":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- HTTP (one keep-alive connection for the benchmark's own calls) -----------------------
    def http(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        raw = build_request(method, path, self.host, self.port, body)
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = RawHTTP(self.host, self.port)
                return self._conn.request(raw)
            except (OSError, ConnectionError):
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                if attempt == 2:
                    self.check_alive()
                    raise
        raise AssertionError("unreachable")

    def stats(self) -> dict:
        status, body = self.http("GET", "/stats")
        if status != 200:
            raise DaemonError(f"GET /stats answered {status}: {body[:200]!r}")
        return json.loads(body)

    def counts(self) -> dict:
        return self.stats().get("counts", {})

    # --- control socket: pause / resume ------------------------------------------------------
    def ctl(self, command: str, **args) -> dict:
        """The control command through jqd-ctl's client library (the same wire protocol as
        `python -m jqd_ctl --socket S COMMAND`, without a Python start-up in the timing);
        falls back to the CLI when the library cannot be imported."""
        try:
            from jqd_ctl.client import Client
        except ImportError:
            cmd = [sys.executable, "-m", "jqd_ctl", "--socket", self.socket_path, "--json", command]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60)
            return json.loads(out.stdout or "{}")
        payload = {"queue": None, **args}
        if command == "pause":
            payload.setdefault("reason", "benchmark")
        return Client(self.socket_path, timeout=60).call(command, payload)

    # --- /proc observations ------------------------------------------------------------------
    def memory_kb(self) -> dict:
        """VmRSS and VmHWM (peak RSS) of the daemon, in KiB."""
        out = {}
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith(("VmRSS:", "VmHWM:")):
                        key, value = line.split(":", 1)
                        out[key] = int(value.split()[0])
        except OSError:
            pass
        if "VmRSS" not in out:  # a zombie has no memory lines
            self.check_alive()
            raise DaemonError(f"no VmRSS for pid {self.pid}")
        return out

    def rss_mb(self) -> float:
        return self.memory_kb()["VmRSS"] / 1024

    def cpu_seconds(self) -> dict:
        """CPU used so far: the whole process, and its main thread (the Trio event loop)."""
        def ticks(path: str) -> float:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

        return {"process": ticks(f"/proc/{self.pid}/stat"),
                "loop_thread": ticks(f"/proc/{self.pid}/task/{self.pid}/stat")}

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))


def cpu_share(before: dict, after: dict, seconds: float) -> dict:
    """Percent of one core used by the process and by its event-loop thread over `seconds`."""
    if seconds <= 0:
        return {}
    return {k: round(100 * (after[k] - before[k]) / seconds, 1) for k in before}


def machine_cpu() -> list[int]:
    """The machine's CPU counters (/proc/stat, all cores): user nice system idle iowait irq softirq steal."""
    with open("/proc/stat") as f:
        return [int(x) for x in f.readline().split()[1:9]]


def machine_share(before: list[int], after: list[int]) -> dict:
    """Percent of the whole machine (all cores) that was busy, idle, and stolen by the hypervisor."""
    d = [b - a for a, b in zip(before, after)]
    total = sum(d) or 1
    return {"machine_busy": round(100 * (total - d[3] - d[4] - d[7]) / total, 1),
            "machine_idle": round(100 * (d[3] + d[4]) / total, 1), "steal": round(100 * d[7] / total, 1)}


# --- waiting for a quiet machine -------------------------------------------------------------

QUIET = {"max_wait": 0.0, "threshold": 25.0, "log": []}  # set by run.py --wait-quiet


def wait_quiet(label: str) -> str:
    """Before a measured point: wait (at most QUIET['max_wait'] s) until the whole machine is
    at most QUIET['threshold'] % busy over one second, while nothing of the benchmark's runs
    (the daemon under test is idle or paused between points). Returns a note ('' if quiet at
    once), also kept in QUIET['log']."""
    if QUIET["max_wait"] <= 0:
        return ""
    t0 = time.monotonic()
    busy = 0.0
    while True:
        m0 = machine_cpu()
        time.sleep(1.0)
        busy = machine_share(m0, machine_cpu())["machine_busy"]
        waited = time.monotonic() - t0
        if busy <= QUIET["threshold"]:
            note = "" if waited < 1.5 else f"waited {waited:.0f} s for a quiet machine"
            break
        if waited >= QUIET["max_wait"]:
            note = f"machine still {busy:.0f}% busy after waiting {waited:.0f} s: measured anyway"
            break
        if int(waited) % 30 == 0:
            print(f"  .. {label}: machine {busy:.0f}% busy (others), waiting for a quieter moment", flush=True)
    if note:
        QUIET["log"].append(f"{label}: {note}")
    return note
