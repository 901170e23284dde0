"""Load held: a soak run of the real jqd under sustained intake, watching for slow leaks.

    python tests/chaos/soak.py [--seconds N] [--clients C] [--workers W] [--interval S]
                               [--retention S] [--warmup S] [--json-out PATH]

One jqd (`python -m jqd`) with a short `JQD_RETENTION` (so the reaper prunes finished jobs
while the run lasts) and a short visibility timeout (the reaper ticks every quarter of it).
C client threads submit `noop` jobs as fast as they are answered: a mix of `createJob` and
`createJobs` batches; a client answered 429 waits as `Retry-After` says. The workers run
the jobs meanwhile. Every `--interval` seconds the run samples, from outside the daemon:

- RSS (`VmRSS` of /proc/PID/status) and open file descriptors (/proc/PID/fd);
- the size of the database file and of its WAL (`<db>-wal`);
- intake latency p50 / p99 over the interval (every request, singles and batches), the
  requests and jobs acknowledged in it, the jobs that finished (`jqd_jobs_succeeded_total`);
- the queued count from `GET /stats`.

It prints one row per interval and a summary. Bounds, on the samples after `--warmup`
(default: retention + 3 reaper ticks, the time the store needs to reach its steady size),
split in thirds: RSS, fds, WAL and db size must not grow without bound (the last third's max
may exceed the first third's max by at most 1.5x, and by at least a noise floor per figure),
and intake latency must not drift (p50 of the last third at most 3x the first third's, plus
a floor). Any answer but 201/200/429, a transport error, the daemon dying, a failed integrity
check at the end or a non-zero exit status of the final SIGTERM also fail the run.

Exit status 0 when every bound holds, 1 otherwise. The figures of docs/RELIABILITY.md
("Load held") come from `--seconds 600 --clients 8 --workers 16`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from chaoslib import JqdProcess, integrity  # noqa: E402

MiB = 1 << 20

# figure -> (growth ratio allowed, absolute noise floor): a figure fails only when the last
# third's max exceeds BOTH first-third max * ratio AND first-third max + floor.
BOUNDS = {
    "rss": (1.5, 24 * MiB),
    "fds": (1.5, 16),
    "wal": (1.5, 8 * MiB),
    "db": (1.5, 8 * MiB),
}
LATENCY_RATIO = 3.0
LATENCY_FLOOR = 0.025  # seconds: p50 may grow by this much whatever the ratio (scheduler noise)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=120, help="length of the load (default 120)")
    p.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--workers", type=int, default=16, help="WORKER_COUNT of the daemon (default 16)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    p.add_argument("--retention", type=float, default=5.0, help="JQD_RETENTION, seconds (default 5)")
    p.add_argument("--visibility", type=float, default=4.0,
                   help="JQD_VISIBILITY_TIMEOUT (the reaper ticks every quarter of it; default 4)")
    p.add_argument("--max-queued", type=int, default=5000, help="JQD_MAX_QUEUED (default 5000)")
    p.add_argument("--batch-fraction", type=float, default=0.3,
                   help="fraction of requests that are createJobs batches (default 0.3)")
    p.add_argument("--batch-size", type=int, default=20, help="jobs per createJobs batch (default 20)")
    p.add_argument("--warmup", type=float, default=None,
                   help="seconds whose samples are shown but not judged (default retention + 3 reaper ticks)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", help="directory of the database and the daemon log (default: a temp dir)")
    p.add_argument("--json-out", help="write the samples and the summary as JSON to this file")
    p.add_argument("--quiet", action="store_true", help="no row per interval, only the summary")
    args = p.parse_args(argv)
    if args.clients < 1 or args.workers < 1 or args.seconds <= 0 or args.interval <= 0:
        p.error("--clients and --workers must be >= 1, --seconds and --interval > 0")
    if args.warmup is None:
        args.warmup = args.retention + 3 * max(0.05, min(args.visibility / 4, 15.0))
    return args


def proc_figures(pid: int) -> tuple[int, int]:
    """(RSS bytes, open fds) of a live process."""
    with open(f"/proc/{pid}/status") as f:
        rss_kib = int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))
    return rss_kib * 1024, len(os.listdir(f"/proc/{pid}/fd"))


def file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def succeeded_total(client: httpx.Client) -> int:
    text = client.get("/metrics").text
    return int(sum(float(m.group(1)) for m in re.finditer(r'^jqd_jobs_succeeded_total\{[^}]*\} (\S+)$', text, re.M)))


class Load:
    """C client threads; latencies and counts collected per sampling window."""

    def __init__(self, url: str, clients: int, batch_fraction: float, batch_size: int, seed: int):
        self.url = url
        self.batch_fraction = batch_fraction
        self.batch_size = batch_size
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.requests = 0
        self.jobs = 0
        self.backpressure = 0  # 429 answers
        self.errors: list[str] = []
        self.totals = {"requests": 0, "jobs": 0, "429": 0}
        self.threads = [threading.Thread(target=self._client, args=(seed * 1000 + i,), daemon=True,
                                         name=f"client-{i}") for i in range(clients)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def window(self) -> tuple[list[float], int, int, int]:
        """The latencies, requests, jobs and 429s since the last call; resets them."""
        with self.lock:
            out = (self.latencies, self.requests, self.jobs, self.backpressure)
            self.latencies, self.requests, self.jobs, self.backpressure = [], 0, 0, 0
        return out

    def _client(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=30.0) as c:
            while not self.stop.is_set():
                batch = rng.random() < self.batch_fraction
                if batch:
                    path, body, n = "/createJobs", {"jobs": [{"type": "noop", "payload": {}}] * self.batch_size}, self.batch_size
                else:
                    path, body, n = "/createJob", {"type": "noop", "payload": {}}, 1
                started = time.monotonic()
                try:
                    r = c.post(path, json=body)
                except httpx.HTTPError as exc:
                    if not self.stop.is_set():
                        with self.lock:
                            self.errors.append(f"{path}: {type(exc).__name__}: {exc}")
                    time.sleep(0.1)
                    continue
                elapsed = time.monotonic() - started
                with self.lock:
                    self.latencies.append(elapsed)
                    if r.status_code in (200, 201):
                        self.requests += 1
                        self.jobs += n
                        self.totals["requests"] += 1
                        self.totals["jobs"] += n
                    elif r.status_code == 429:
                        self.backpressure += 1
                        self.totals["429"] += 1
                    else:
                        self.errors.append(f"{path}: {r.status_code} {r.text[:200]}")
                if r.status_code == 429:
                    self.stop.wait(min(float(r.headers.get("Retry-After", "1")), 2.0))


def judge(samples: list[dict], warmup: float) -> tuple[list[str], dict]:
    """Check the bounds on the samples after the warm-up; (failures, per-figure detail)."""
    judged = [s for s in samples if s["t"] > warmup]
    if len(judged) < 3:
        return [f"only {len(judged)} sample(s) after the {warmup:g} s warm-up: run longer"], {}
    third = max(1, len(judged) // 3)
    first, last = judged[:third], judged[-third:]
    failures, detail = [], {}
    for key, (ratio, floor) in BOUNDS.items():
        a, b = max(s[key] for s in first), max(s[key] for s in last)
        limit = max(a * ratio, a + floor)
        detail[key] = {"first_third_max": a, "last_third_max": b, "limit": limit, "ok": b <= limit}
        if b > limit:
            failures.append(f"{key} grows: last third max {b} > limit {limit:.0f} (first third max {a})")
    p50s_first = [s["p50"] for s in first if s["p50"] is not None]
    p50s_last = [s["p50"] for s in last if s["p50"] is not None]
    if p50s_first and p50s_last:
        a, b = statistics.median(p50s_first), statistics.median(p50s_last)
        limit = max(a * LATENCY_RATIO, a + LATENCY_FLOOR)
        detail["p50"] = {"first_third": a, "last_third": b, "limit": limit, "ok": b <= limit}
        if b > limit:
            failures.append(f"intake latency drifts: p50 {b * 1000:.1f} ms in the last third > "
                            f"limit {limit * 1000:.1f} ms (first third {a * 1000:.1f} ms)")
    else:
        failures.append("no latency samples in the first or last third")
    return failures, detail


HEADER = (f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>5} {'WAL MiB':>8} {'db MiB':>7} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'req/s':>7} {'jobs/s in':>9} {'jobs/s done':>11} {'429':>5} {'queued':>7}")


def row(s: dict) -> str:
    def ms(v):
        return f"{v * 1000:7.1f}" if v is not None else f"{'-':>7}"
    return (f"{s['t']:7.1f} {s['rss'] / MiB:8.1f} {s['fds']:5d} {s['wal'] / MiB:8.2f} {s['db'] / MiB:7.2f} "
            f"{ms(s['p50'])} {ms(s['p99'])} {s['req_s']:7.0f} {s['in_s']:9.0f} {s['done_s']:11.0f} "
            f"{s['429']:5d} {s['queued']:7d}")


def run(args: argparse.Namespace) -> int:
    workdir = args.workdir or tempfile.mkdtemp(prefix="jqd-soak-")
    os.makedirs(workdir, exist_ok=True)
    daemon = JqdProcess(workdir, env=dict(
        JQD_RETENTION=args.retention, JQD_VISIBILITY_TIMEOUT=args.visibility, WORKER_COUNT=args.workers,
        JQD_MAX_QUEUED=args.max_queued))
    daemon.start()
    pid = daemon.proc.pid
    wal = daemon.db + "-wal"
    print(f"soak: jqd pid {pid} on {daemon.url}, db {daemon.db}; {args.clients} clients, {args.workers} workers, "
          f"retention {args.retention:g} s, {args.seconds:g} s, sample every {args.interval:g} s, "
          f"warm-up {args.warmup:g} s", flush=True)
    load = Load(daemon.url, args.clients, args.batch_fraction, args.batch_size, args.seed)
    samples: list[dict] = []
    failures: list[str] = []
    jobs_done = 0
    with daemon.client() as probe:
        done_before = succeeded_total(probe)
        t0 = last = time.monotonic()
        load.start()
        if not args.quiet:
            print(HEADER, flush=True)
        try:
            while True:
                now = time.monotonic()
                next_at = last + args.interval
                if next_at > t0 + args.seconds + 1e-6:
                    break
                time.sleep(max(0.0, next_at - now))
                if daemon.proc.poll() is not None:
                    failures.append(f"the daemon exited with status {daemon.proc.returncode}")
                    break
                latencies, requests, jobs, backpressure = load.window()
                now = time.monotonic()
                span, last = now - last, now
                rss, fds = proc_figures(pid)
                done = succeeded_total(probe)
                stats = probe.get("/stats").json()
                sample = {
                    "t": round(now - t0, 2), "rss": rss, "fds": fds, "wal": file_size(wal),
                    "db": file_size(daemon.db), "p50": percentile(latencies, 0.5),
                    "p99": percentile(latencies, 0.99), "max": max(latencies) if latencies else None,
                    "req_s": requests / span, "in_s": jobs / span, "done_s": (done - done_before) / span,
                    "429": backpressure, "queued": int(stats["counts"].get("queued", 0)),
                    "rows": sum(stats["counts"].values()),
                }
                done_before = done
                samples.append(sample)
                jobs_done = done
                if not args.quiet:
                    print(row(sample), flush=True)
        finally:
            load.join()
    wall = time.monotonic() - t0
    if daemon.proc.poll() is None:
        code = daemon.stop()
        if code != 0:
            failures.append(f"SIGTERM at the end: exit status {code}")
    check = integrity(daemon.db)
    if check != "ok":
        failures.append(f"integrity check: {check}")
    if load.errors:
        failures.append(f"{len(load.errors)} unexpected answer(s), first: {load.errors[:3]}")
    bound_failures, detail = judge(samples, args.warmup)
    failures += bound_failures

    all_lat = [s["p50"] for s in samples if s["p50"] is not None]
    summary = {
        "seconds": round(wall, 1), "clients": args.clients, "workers": args.workers,
        "retention": args.retention, "samples": len(samples), "warmup": args.warmup,
        "requests_acknowledged": load.totals["requests"], "jobs_acknowledged": load.totals["jobs"],
        "answers_429": load.totals["429"], "jobs_done": jobs_done, "jobs_per_second": round(load.totals["jobs"] / wall, 1),
        "rss_max": max((s["rss"] for s in samples), default=0),
        "fds_max": max((s["fds"] for s in samples), default=0),
        "wal_max": max((s["wal"] for s in samples), default=0),
        "db_max": max((s["db"] for s in samples), default=0),
        "p50_median": statistics.median(all_lat) if all_lat else None,
        "p99_max": max((s["p99"] for s in samples if s["p99"] is not None), default=None),
        "latency_max": max((s["max"] for s in samples if s["max"] is not None), default=None),
        "bounds": detail, "integrity": check, "failures": failures, "passed": not failures,
        "log_warnings": sum(1 for line in daemon.log().splitlines() if " WARNING " in line or " ERROR " in line),
    }
    print()
    print(f"summary: {wall:.0f} s, {summary['jobs_acknowledged']} jobs acknowledged in "
          f"{summary['requests_acknowledged']} requests ({summary['jobs_per_second']} jobs/s), "
          f"{summary['answers_429']} answers 429")
    print(f"  RSS max {summary['rss_max'] / MiB:.1f} MiB, fds max {summary['fds_max']}, "
          f"WAL max {summary['wal_max'] / MiB:.2f} MiB, db max {summary['db_max'] / MiB:.2f} MiB")
    if summary["p50_median"] is not None:
        print(f"  intake latency: median of interval p50s {summary['p50_median'] * 1000:.1f} ms, "
              f"worst interval p99 {summary['p99_max'] * 1000:.1f} ms, slowest request "
              f"{summary['latency_max'] * 1000:.0f} ms")
    for key, d in detail.items():
        if key == "p50":
            print(f"  p50: first third {d['first_third'] * 1000:.1f} ms, last third {d['last_third'] * 1000:.1f} ms, "
                  f"limit {d['limit'] * 1000:.1f} ms: {'ok' if d['ok'] else 'FAIL'}")
        else:
            unit, div = ("MiB", MiB) if key != "fds" else ("", 1)
            print(f"  {key}: first third max {d['first_third_max'] / div:.2f}{unit}, last third max "
                  f"{d['last_third_max'] / div:.2f}{unit}, limit {d['limit'] / div:.2f}{unit}: "
                  f"{'ok' if d['ok'] else 'FAIL'}")
    print(f"  integrity {check}; daemon WARNING/ERROR log lines: {summary['log_warnings']}")
    print("PASSED" if not failures else "FAILED:\n  " + "\n  ".join(failures), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"summary": summary, "samples": samples}, f, indent=1)
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
