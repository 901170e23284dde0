"""Load generators for the jqd benchmark: `wrk` when installed, else a multi-process Python one.

Both keep C connections open (HTTP/1.1 keep-alive), each connection sending its next request
as soon as the previous answer arrived (closed loop, no pipelining), for a fixed duration.
A `LoadResult` says what ran, for how long, how many answers of each status came back, and
the latency percentiles the generator saw.

The Python generator spreads the connections over several processes (threads inside each),
so that 64 connections are really concurrent and one GIL is not the limit; it speaks HTTP/1.1
over raw sockets with pre-built request bytes, which costs far less CPU per request than an
HTTP client library.
"""

from __future__ import annotations

import array
import multiprocessing
import os
import re
import resource
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


# --- a minimal keep-alive HTTP/1.1 client ---------------------------------------------------

def build_request(method: str, path: str, host: str, port: int, body: bytes | None = None,
                  content_type: str = "application/json") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "User-Agent: jqd-bench"]
    if body is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


class RawHTTP:
    """One keep-alive connection; `request(raw)` sends pre-built bytes, returns (status, body)."""

    def __init__(self, host: str, port: int, timeout: float = 60.0):
        self.host, self.port = host, port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def request(self, raw: bytes) -> tuple[int, bytes]:
        self.sock.sendall(raw)
        return self._response()

    def _fill(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self._buf += chunk

    def _response(self) -> tuple[int, bytes]:
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(buf[:end])
        del buf[: end + 4]
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close = 0, False, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and b"close" in value.lower():
                close = True
        if chunked:
            body = bytearray()
            while True:
                while (eol := buf.find(b"\r\n")) < 0:
                    self._fill()
                size = int(bytes(buf[:eol]).split(b";")[0], 16)
                del buf[: eol + 2]
                while len(buf) < size + 2:
                    self._fill()
                body += buf[:size]
                del buf[: size + 2]
                if size == 0:
                    break
            body = bytes(body)
        else:
            while len(buf) < length:
                self._fill()
            body = bytes(buf[:length])
            del buf[:length]
        if close:
            raise ConnectionError(f"server closed the connection (status {status})")
        return status, body


# --- results --------------------------------------------------------------------------------

@dataclass
class LoadResult:
    generator: str
    connections: int
    duration: float  # seconds actually measured
    statuses: dict = field(default_factory=dict)  # status code -> answers
    errors: int = 0  # socket errors / timeouts
    latency_ms: dict = field(default_factory=dict)  # p50, p90, p99, max (as the generator saw them)
    client_cpu_s: float = 0.0  # CPU the generator used (user + sys), all its processes
    notes: str = ""

    def count(self, ok_status: int | tuple[int, ...]) -> int:
        wanted = (ok_status,) if isinstance(ok_status, int) else ok_status
        return sum(n for s, n in self.statuses.items() if int(s) in wanted)

    def rate(self, ok_status) -> float:
        return self.count(ok_status) / self.duration if self.duration > 0 else 0.0

    def as_dict(self) -> dict:
        return {"generator": self.generator, "connections": self.connections,
                "duration_s": round(self.duration, 3), "statuses": {str(k): v for k, v in self.statuses.items()},
                "errors": self.errors, "latency_ms": self.latency_ms,
                "client_cpu_s": round(self.client_cpu_s, 3), "notes": self.notes}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    values = sorted(values)
    pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
    return {"p50": round(pick(0.50) * 1e3, 3), "p90": round(pick(0.90) * 1e3, 3),
            "p99": round(pick(0.99) * 1e3, 3), "max": round(values[-1] * 1e3, 3)}


# --- wrk ------------------------------------------------------------------------------------

def wrk_path() -> str | None:
    return shutil.which("wrk")


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _wrk_ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _WRK_UNITS[m.group(2)]


def _lua_string(data: bytes) -> str:
    return '"' + "".join(f"\\{b:03d}" if (b < 32 or b > 126 or b in (34, 92)) else chr(b) for b in data) + '"'


def run_wrk(url: str, method: str, body: bytes | None, connections: int, duration: float,
            threads: int | None = None) -> LoadResult:
    """Run wrk for `duration` seconds; count statuses (2xx vs the rest, as wrk reports them)."""
    threads = threads or min(connections, os.cpu_count() or 2)
    # wrk's summary only splits 2xx/3xx from the rest; a tiny Lua hook counts each status.
    script = [f'wrk.method = "{method}"']
    if body is not None:
        script += [f"wrk.body = {_lua_string(body)}", 'wrk.headers["Content-Type"] = "application/json"']
    script += [
        "local threads = {}",
        "function setup(thread) table.insert(threads, thread) end",
        "function init(args) statuses = {} end",
        "function response(status, headers, body) statuses[status] = (statuses[status] or 0) + 1 end",
        "function done(summary, latency, requests)",
        "  local total = {}",
        "  for _, t in ipairs(threads) do",
        "    local s = t:get('statuses')",
        "    for code, n in pairs(s) do total[code] = (total[code] or 0) + n end",
        "  end",
        "  for code, n in pairs(total) do io.write(string.format('STATUS %d %d\\n', code, n)) end",
        "end",
    ]
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write("\n".join(script) + "\n")
        lua = f.name
    cmd = [wrk_path() or "wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(duration))}s",
           "--timeout", "30s", "--latency", "-s", lua, url]
    cpu0 = _children_cpu()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    finally:
        os.unlink(lua)
    cpu = _children_cpu() - cpu0
    out = proc.stdout
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip() or out.strip()}")
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", out)
    if not m:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    measured = _wrk_ms(m.group(2) + m.group(3)) / 1e3
    statuses = {int(code): int(n) for code, n in re.findall(r"^STATUS (\d+) (\d+)$", out, re.M)}
    errors = 0
    if (e := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)):
        errors = sum(int(x) for x in e.groups())
    latency = {}
    for label, q in (("p50", "50%"), ("p90", "90%"), ("p99", "99%")):
        if (lm := re.search(rf"^\s+{re.escape(q)}\s+(\S+)", out, re.M)):
            latency[label] = round(_wrk_ms(lm.group(1)), 3)
    if (lm := re.search(r"^\s+Latency\s+\S+\s+\S+\s+(\S+)", out, re.M)):
        latency["max"] = round(_wrk_ms(lm.group(1)), 3)
    return LoadResult("wrk", connections, measured, statuses, errors, latency, cpu,
                      notes=f"wrk -t{threads} -c{connections}")


# --- the Python generator -------------------------------------------------------------------

def _py_thread(host, port, raw, start_at, end_at, results, lock):
    statuses: Counter = Counter()
    lats = array.array("d")
    errors = 0
    conn = None
    try:
        conn = RawHTTP(host, port)
    except OSError:
        errors += 1
    while time.time() < start_at:
        time.sleep(min(0.01, max(0.0, start_at - time.time())))
    while time.time() < end_at:
        if conn is None:
            try:
                conn = RawHTTP(host, port)
            except OSError:
                errors += 1
                time.sleep(0.01)
                continue
        t0 = time.perf_counter()
        try:
            status, _ = conn.request(raw)
        except (OSError, ValueError, IndexError):
            errors += 1
            conn.close()
            conn = None
            continue
        t1 = time.perf_counter()
        if time.time() > end_at:
            break  # answered after the window closed: not counted
        statuses[status] += 1
        lats.append(t1 - t0)
    if conn is not None:
        conn.close()
    with lock:
        results.append((statuses, lats, errors))


def _py_process(host, port, raw, threads, start_at, end_at, queue):
    results: list = []
    lock = threading.Lock()
    workers = [threading.Thread(target=_py_thread, args=(host, port, raw, start_at, end_at, results, lock),
                                daemon=True) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    statuses: Counter = Counter()
    lats = array.array("d")
    errors = 0
    for s, lat, e in results:
        statuses.update(s)
        lats.extend(lat)
        errors += e
    queue.put((dict(statuses), lats.tobytes(), errors))


def run_python(host: str, port: int, method: str, path: str, body: bytes | None, connections: int,
               duration: float, processes: int | None = None) -> LoadResult:
    """`connections` keep-alive connections spread over several processes, for `duration` s."""
    processes = processes or min(connections, 4)
    per = [connections // processes + (1 if i < connections % processes else 0) for i in range(processes)]
    raw = build_request(method, path, host, port, body)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.3 + 0.01 * connections  # time to fork and connect
    end_at = start_at + duration
    cpu0 = _children_cpu()
    procs = [ctx.Process(target=_py_process, args=(host, port, raw, n, start_at, end_at, queue), daemon=True)
             for n in per if n > 0]
    for p in procs:
        p.start()
    collected = [queue.get(timeout=duration + 120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    cpu = _children_cpu() - cpu0
    statuses: Counter = Counter()
    lats: list[float] = []
    errors = 0
    for s, lat_bytes, e in collected:
        statuses.update(s)
        a = array.array("d")
        a.frombytes(lat_bytes)
        lats.extend(a)
        errors += e
    return LoadResult("python", connections, duration, dict(statuses), errors, _percentiles(lats), cpu,
                      notes=f"{len(procs)} processes x {max(per)} threads, raw keep-alive sockets")


def run_load(generator: str, host: str, port: int, method: str, path: str, body: bytes | None,
             connections: int, duration: float) -> LoadResult:
    if generator == "wrk":
        return run_wrk(f"http://{host}:{port}{path}", method, body, connections, duration)
    return run_python(host, port, method, path, body, connections, duration)
