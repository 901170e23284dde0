#!/usr/bin/env python3
"""jqd benchmark: intake, batch intake, processing, memory and claim time at scale, pickup
latency, and the same workloads on huey (SqliteHuey) and RQ (Redis) with jqd/peer ratios.

Starts the real daemon (`python -m jqd`) as a subprocess for each scenario, drives it over
HTTP and the control socket, prints a table, writes bench/out/results.json and PNG charts.

    .venv/bin/python bench/run.py            # the full run (about 15-20 minutes)
    .venv/bin/python bench/run.py --quick    # a smoke run (a few minutes)
    .venv/bin/python bench/run.py --only intake,latency --generator python --profile

See bench/README.md for what each figure means and includes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadgen  # noqa: E402
import peers  # noqa: E402
from jqdproc import QUIET, Daemon, cpu_share, machine_cpu, machine_share, wait_quiet  # noqa: E402
from loadgen import RawHTTP, build_request, run_load  # noqa: E402
from profiling import Recording, py_spy_path  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCENARIOS = ("intake", "batch", "drain", "scale", "latency", "peers")
NOOP = b'{"type":"noop","payload":{}}'
BATCH_SIZE = 1000
POLL = 0.05  # seconds between /stats polls while draining
# What "durable" means for jqd's figures: every acknowledged write is in a committed,
# fsync'd WAL frame (PRAGMA synchronous=FULL, journal_mode=WAL); commits are grouped.
JQD_DURABILITY = "fsync(FULL)"
NOOP_JOB = {"type": "noop", "payload": {}}


def batch_body(n: int, job: dict = NOOP_JOB) -> bytes:
    return json.dumps({"jobs": [job] * n}, separators=(",", ":")).encode()


class Settings:
    def __init__(self, quick: bool):
        self.quick = quick
        self.intake_seconds = 2.0 if quick else 5.0
        self.intake_conns = (1, 16, 64)
        self.batch_seconds = 2.0 if quick else 5.0
        self.batch_conns = (1, 4)
        self.batch_sizes = (100, 1000)
        self.drain_jobs = 5_000 if quick else 100_000
        self.sleep_seconds = 0.01  # the sleep drain: 10 ms jobs
        self.claim_samples = 50 if quick else 300  # claims timed against each database copy
        self.half_peak_seconds = 3.0 if quick else 10.0
        self.peer_jobs = 5_000 if quick else 100_000
        self.peer_drain_timeout = 20.0 if quick else 90.0  # longest wait for one peer drain
        self.peer_window = 5.0 if quick else 20.0  # slow peers (RQ forking) are timed over a window
        self.rq_simple_window = 20.0 if quick else 45.0  # RQ SimpleWorker: ~300 jobs/s here, also windowed
        self.peer_latency_jobs = 20 if quick else 100
        self.scale_small = 2_000 if quick else 10_000
        self.scale_large = 20_000 if quick else 1_000_000
        self.backlog_seconds = 3.0 if quick else 10.0
        self.latency_jobs = 50 if quick else 500
        self.latency_gap = 0.01  # seconds of idle between one job's end and the next submission


# --- result rows -----------------------------------------------------------------------------

class Report:
    def __init__(self):
        self.rows: list[dict] = []
        self.details: dict = {}
        self.notes: list[str] = []

    def row(self, scenario: str, figure: str, *, generator: str = "-", conns: int | str = "-",
            duration: float | None = None, count: int | None = None, value: float | None = None,
            unit: str = "", target: str = "", note: str = "", durability: str = "-", key: str | None = None,
            **extra) -> dict:
        r = {"scenario": scenario, "figure": figure, "generator": generator, "conns": conns,
             "duration_s": None if duration is None else round(duration, 3), "count": count,
             "value": None if value is None else round(value, 3), "unit": unit, "target": target,
             "durability": durability, "load1": load1(), "key": key, "note": note, **extra}
        self.rows.append(r)
        print(f"  -> {figure}: {_fmt_value(r['value'])} {unit}" + (f"  ({note})" if note else ""), flush=True)
        return r


def load1() -> float | None:
    """The 1-minute load average when the row was recorded (2 cores: above ~2 means queueing)."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError):
        return None


def _fmt_value(v) -> str:
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def print_table(report: Report) -> None:
    cols = [("figure", 44), ("generator", 9), ("conc", 5), ("duration", 8), ("count", 10),
            ("value", 10), ("unit", 9), ("target", 9), ("durability", 12), ("load1", 5)]
    header = "  ".join(name.ljust(w) if i == 0 else name.rjust(w) for i, (name, w) in enumerate(cols)) + "  note"
    print("\n" + header)
    print("-" * (len(header) + 30))
    last = None
    for r in report.rows:
        if last is not None and r["scenario"] != last:
            print()
        last = r["scenario"]
        cells = [r["figure"][:44].ljust(44), str(r["generator"])[:9].rjust(9), str(r["conns"]).rjust(5),
                 ("-" if r["duration_s"] is None else f"{r['duration_s']:.2f}s").rjust(8),
                 ("-" if r["count"] is None else f"{r['count']:,}").rjust(10),
                 _fmt_value(r["value"]).rjust(10), r["unit"][:9].rjust(9), r["target"][:9].rjust(9),
                 str(r.get("durability", "-"))[:12].rjust(12),
                 ("-" if r.get("load1") is None else f"{r['load1']:.1f}").rjust(5)]
        print("  ".join(cells) + ("  " + r["note"] if r["note"] else ""))
    print()
    for note in report.notes:
        print(f"note: {note}")


# --- helpers -----------------------------------------------------------------------------------

def measure(daemon: Daemon, generator: str, method: str, path: str, body: bytes | None, conns: int,
            seconds: float) -> tuple[loadgen.LoadResult, dict]:
    wait_quiet(f"{method} {path} c={conns}")
    cpu0, m0, t0 = daemon.cpu_seconds(), machine_cpu(), time.monotonic()
    result = run_load(generator, daemon.host, daemon.port, method, path, body, conns, seconds)
    daemon.check_alive()
    cpu1, m1, t1 = daemon.cpu_seconds(), machine_cpu(), time.monotonic()
    share = cpu_share(cpu0, cpu1, t1 - t0)
    share.update(machine_share(m0, m1))
    share["client"] = round(100 * result.client_cpu_s / result.duration, 1) if result.duration else None
    share["others"] = other_load(share)
    return result, share


def median_run(runs: list, ok: int):
    """The (result, cpu) pair with the median rate (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda rc: rc[0].rate(ok))
    return ordered[(len(ordered) - 1) // 2]


def runs_note(runs: list, ok: int) -> str:
    if len(runs) < 2:
        return ""
    return "median of " + "/".join(f"{r.rate(ok):,.0f}" for r, _ in runs) + "; "


def other_load(share: dict) -> float:
    """CPU (% of one core) used by processes other than the daemon and the load generator."""
    busy = share.get("machine_busy", 0) * (os.cpu_count() or 1)
    return round(max(0.0, busy - share.get("process", 0) - (share.get("client") or 0)), 1)


def cpu_note(share: dict, result: loadgen.LoadResult | None = None) -> str:
    text = f"cpu% daemon {share.get('process')} (loop thread {share.get('loop_thread')})"
    if share.get("client") is not None:
        text += f", client {share['client']}"
    if result is not None and result.latency_ms:
        text += f"; latency p50 {result.latency_ms.get('p50')} ms p99 {result.latency_ms.get('p99')} ms"
    if share.get("others", 0) >= 10:
        text += f"; OTHER processes used {share['others']}% of a core"
    if share.get("steal", 0) >= 5:
        text += f"; hypervisor steal {share['steal']}%"
    if result is not None and result.errors:
        text += f"; {result.errors} socket errors"
    return text


def other_statuses(result: loadgen.LoadResult, ok: int) -> str:
    bad = {s: n for s, n in result.statuses.items() if int(s) != ok}
    return f"; non-{ok} answers {bad}" if bad else ""


def submit_jobs(daemon: Daemon, n: int, threads: int = 4, job: dict = NOOP_JOB) -> float:
    """Submit `n` jobs (noop unless told) through POST /createJobs (1000 a batch); returns jobs/s."""
    full, rest = divmod(n, BATCH_SIZE)
    bodies = [build_request("POST", "/createJobs", daemon.host, daemon.port, batch_body(BATCH_SIZE, job))] * full
    if rest:
        bodies.append(build_request("POST", "/createJobs", daemon.host, daemon.port, batch_body(rest, job)))
    lock = threading.Lock()
    failures: list[str] = []
    todo = iter(bodies)

    def work():
        conn = RawHTTP(daemon.host, daemon.port)
        try:
            while True:
                with lock:
                    raw = next(todo, None)
                if raw is None or failures:
                    return
                try:
                    status, body = conn.request(raw)
                except OSError as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return
                if status != 201:
                    failures.append(f"{status}: {body[:200]!r}")
        finally:
            conn.close()

    t0 = time.monotonic()
    pool = [threading.Thread(target=work) for _ in range(min(threads, len(bodies)) or 1)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.monotonic() - t0
    if failures:
        daemon.check_alive()
        raise RuntimeError(f"submitting jobs failed: {failures[0]}")
    return n / elapsed if elapsed > 0 else 0.0


def settle_rss(daemon: Daemon, seconds: float = 2.0) -> dict:
    time.sleep(seconds)
    mem = daemon.memory_kb()
    return {"rss_mb": round(mem["VmRSS"] / 1024, 1), "peak_mb": round(mem["VmHWM"] / 1024, 1)}


def db_size_mb(daemon: Daemon) -> float:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += os.path.getsize(daemon.db + suffix)
        except OSError:
            pass
    return round(total / 2**20, 1)


def profile_run(args, daemon: Daemon, name: str, seconds: float, action, report: Report) -> None:
    """An extra, unmeasured run of `action()` under py-spy."""
    rec = Recording(daemon.pid, name, seconds, args.out)
    if rec.error:
        report.notes.append(f"profile {name}: {rec.error}")
        return
    time.sleep(0.3)  # let py-spy attach
    action()
    summary = rec.finish()
    if summary is None:
        report.notes.append(f"profile {name}: {rec.error}")
        return
    print(summary)
    report.details.setdefault("profiles", {})[name] = {
        "raw": os.path.relpath(rec.raw_path, ROOT), "svg": os.path.relpath(rec.svg_path, ROOT),
        "summary": os.path.relpath(rec.summary_path, ROOT)}


# --- scenarios -----------------------------------------------------------------------------

def scenario_intake(args, s: Settings, gen: str, report: Report) -> None:
    """POST /createJob vs GET /healthz, same daemon, same run, 1 and 64 connections (paused)."""
    with Daemon("intake", tmp_root=args.tmpdir, log_dir=args.out) as d:
        d.ctl("pause", reason="benchmark: intake")
        created = 0
        for conns in s.intake_conns:
            print(f"[intake] {conns} connection(s), {s.intake_seconds:g} s each: GET /healthz, POST /createJob"
                  + (f", alternating, {args.repeat} times" if args.repeat > 1 else ""), flush=True)
            ceilings, intakes = [], []
            for _ in range(args.repeat):  # alternate, so both see the same background noise
                ceilings.append(measure(d, gen, "GET", "/healthz", None, conns, s.intake_seconds))
                intakes.append(measure(d, gen, "POST", "/createJob", NOOP, conns, s.intake_seconds))
                created += intakes[-1][0].count(201)
            ceil, ceil_cpu = median_run(ceilings, 200)
            res, res_cpu = median_run(intakes, 201)
            report.row("intake", f"GET /healthz (ceiling), c={conns}", generator=gen, conns=conns,
                       key=f"jqd.healthz.c{conns}", durability="n/a (read)",
                       duration=ceil.duration, count=ceil.count(200), value=ceil.rate(200), unit="req/s",
                       note=runs_note(ceilings, 200) + cpu_note(ceil_cpu, ceil) + other_statuses(ceil, 200),
                       load=ceil.as_dict(), cpu=ceil_cpu, runs=[r.rate(200) for r, _ in ceilings])
            report.row("intake", f"POST /createJob, c={conns}", generator=gen, conns=conns,
                       key=f"jqd.createJob.c{conns}", durability=JQD_DURABILITY,
                       duration=res.duration, count=res.count(201), value=res.rate(201), unit="jobs/s",
                       note=runs_note(intakes, 201) + cpu_note(res_cpu, res) + other_statuses(res, 201),
                       load=res.as_dict(), cpu=res_cpu, runs=[r.rate(201) for r, _ in intakes])
            ratio = 100 * res.rate(201) / ceil.rate(200) if ceil.rate(200) else 0.0
            pairs = [100 * i.rate(201) / c.rate(200) for (c, _), (i, _) in zip(ceilings, intakes) if c.rate(200)]
            report.row("intake", f"intake / ceiling, c={conns}", generator=gen, conns=conns, value=ratio,
                       key=f"jqd.intake_ratio.c{conns}",
                       unit="%", target=">= 90%",
                       note=("ratio of the medians; per pair " + ", ".join(f"{p:.0f}%" for p in pairs))
                       if len(pairs) > 1 else "")
        counts = d.counts()
        report.details["intake_server_check"] = {"queued_on_server": counts.get("queued", 0),
                                                 "201_counted_by_client": created}
        if counts.get("queued", 0) < created:
            report.notes.append(f"intake: the server holds {counts.get('queued', 0)} queued jobs but the client "
                                f"counted {created} 201 answers: acknowledged jobs are missing!")

        # The same intake while the daemon also runs jobs (not paused): the realistic mix.
        conns = max(s.intake_conns)
        d.ctl("resume")
        before = d.counts().get("succeeded", 0)
        print(f"[intake] {conns} connections while processing (not paused)", flush=True)
        res, res_cpu = measure(d, gen, "POST", "/createJob", NOOP, conns, s.intake_seconds)
        done = d.counts().get("succeeded", 0) - before
        report.row("intake", f"POST /createJob, c={conns}, processing", generator=gen, conns=conns,
                   key=f"jqd.createJob.c{conns}.processing", durability=JQD_DURABILITY, duration=res.duration, count=res.count(201), value=res.rate(201), unit="jobs/s",
                   note=f"meanwhile {done / res.duration:,.0f} jobs/s succeeded; "
                        + cpu_note(res_cpu, res) + other_statuses(res, 201), load=res.as_dict(), cpu=res_cpu)
        if args.profile:
            d.ctl("pause", reason="benchmark: profile")
            profile_run(args, d, "intake-createJob-c64", s.intake_seconds,
                        lambda: run_load(gen, d.host, d.port, "POST", "/createJob", NOOP, conns, s.intake_seconds),
                        report)
            profile_run(args, d, "intake-healthz-c64", s.intake_seconds,
                        lambda: run_load(gen, d.host, d.port, "GET", "/healthz", None, conns, s.intake_seconds),
                        report)


def scenario_batch(args, s: Settings, gen: str, report: Report) -> None:
    """POST /createJobs with 100- and 1000-job batches (paused, so only intake runs); a fresh
    daemon per batch size, and room for the millions of jobs the repeats pile up (queued jobs
    above JQD_MAX_QUEUED would be answered 429)."""
    for size in s.batch_sizes:
        body = batch_body(size)
        with Daemon(f"batch-x{size}", tmp_root=args.tmpdir, log_dir=args.out,
                    extra_env={"JQD_MAX_QUEUED": "100000000"}) as d:
            d.ctl("pause", reason="benchmark: batch")
            for conns in s.batch_conns:
                print(f"[batch] {conns} connection(s), {s.batch_seconds:g} s, {size} jobs a request"
                      + (f", {args.repeat} times" if args.repeat > 1 else ""), flush=True)
                runs = [measure(d, gen, "POST", "/createJobs", body, conns, s.batch_seconds)
                        for _ in range(args.repeat)]
                res, cpu = median_run(runs, 201)
                jobs = res.count(201) * size
                note = ("median of " + "/".join(f"{r.rate(201) * size:,.0f}" for r, _ in runs) + " jobs/s; "
                        if len(runs) > 1 else "")
                report.row("batch", f"POST /createJobs x{size}, c={conns}", generator=gen, conns=conns,
                           key=f"jqd.batch{size}.c{conns}", durability=JQD_DURABILITY,
                           duration=res.duration, count=jobs, value=jobs / res.duration, unit="jobs/s",
                           target=">= 50,000" if size == BATCH_SIZE else "",
                           note=note + f"{res.rate(201):.1f} req/s; " + cpu_note(cpu, res) + other_statuses(res, 201),
                           load=res.as_dict(), cpu=cpu, runs=[r.rate(201) * size for r, _ in runs])
            if args.profile and size == BATCH_SIZE:
                conns = max(s.batch_conns)
                profile_run(args, d, f"batch-c{conns}", s.batch_seconds,
                            lambda: run_load(gen, d.host, d.port, "POST", "/createJobs", body, conns,
                                             s.batch_seconds),
                            report)


def drain_once(d: Daemon, n: int, timeout: float) -> dict:
    """Resume a paused daemon holding `n` queued jobs; poll /stats every 50 ms until all succeeded."""
    samples = []  # (seconds since resume, succeeded, rss MiB)
    wait_quiet(f"drain {n:,}")
    cpu0, m0 = d.cpu_seconds(), machine_cpu()
    t0 = time.monotonic()
    d.ctl("resume")
    done_at = None
    counts: dict = {}
    next_poll = t0
    while True:
        next_poll += POLL
        time.sleep(max(0.0, next_poll - time.monotonic()))
        counts = d.counts()
        now = time.monotonic() - t0
        samples.append((round(now, 3), counts.get("succeeded", 0), round(d.rss_mb(), 1)))
        finished = counts.get("succeeded", 0) + counts.get("dead", 0)
        if finished >= n:
            done_at = now
            break
        if now > timeout:
            break
    cpu = cpu_share(cpu0, d.cpu_seconds(), time.monotonic() - t0)
    cpu.update(machine_share(m0, machine_cpu()))
    cpu["others"] = other_load(cpu)
    succeeded = counts.get("succeeded", 0)
    elapsed = done_at if done_at is not None else samples[-1][0]

    def when(fraction):
        return next((t for t, ok, _ in samples if ok >= fraction * n), None)

    t10, t90 = when(0.1), when(0.9)
    steady = (0.8 * n / (t90 - t10)) if t10 is not None and t90 is not None and t90 > t10 else None
    return {"elapsed": elapsed, "succeeded": succeeded, "dead": counts.get("dead", 0), "complete": done_at is not None,
            "rate": succeeded / elapsed if elapsed else 0.0, "steady_rate": steady,
            "rss_max_mb": max(r for _, _, r in samples), "rss_min_mb": min(r for _, _, r in samples),
            "cpu": cpu, "samples": samples}


def scenario_drain(args, s: Settings, gen: str, report: Report) -> None:
    n = s.drain_jobs
    timeout = max(120.0, n / 200)
    sleep_job = {"type": "sleep", "payload": {"seconds": s.sleep_seconds}}
    points = [("noop", w, NOOP_JOB) for w in args.drain_workers]
    points += [("sleep", w, sleep_job) for w in args.sleep_drain_workers]
    for kind, workers, job in points:
        label = "noop" if kind == "noop" else f"sleep {s.sleep_seconds * 1000:g} ms"
        name = f"drain-w{workers}" + ("" if kind == "noop" else "-sleep")
        with Daemon(name, workers=workers, tmp_root=args.tmpdir, log_dir=args.out) as d:
            d.ctl("pause", reason="benchmark: drain")
            print(f"[drain] WORKER_COUNT={workers}: submitting {n:,} {label} jobs while paused", flush=True)
            submit_rate = submit_jobs(d, n, job=job)
            queued = d.counts().get("queued", 0)
            if queued != n:
                raise RuntimeError(f"expected {n} queued jobs, /stats shows {queued}")
            paused_mem = settle_rss(d, 1.0)
            print(f"[drain] resume; polling /stats every {POLL * 1000:.0f} ms until {n:,} succeeded", flush=True)
            r = drain_once(d, n, timeout)
            note = (f"RSS paused {paused_mem['rss_mb']} MiB, during drain {r['rss_min_mb']}-{r['rss_max_mb']} MiB; "
                    f"steady (10%->90%) {_fmt_value(r['steady_rate'])} jobs/s; " + cpu_note(r["cpu"]))
            if not r["complete"]:
                note = f"INCOMPLETE after {timeout:g} s: {r['succeeded']:,} succeeded; " + note
            if r["dead"]:
                note += f"; {r['dead']} dead!"
            if kind == "sleep":
                note = (f"bound: {workers} workers / {s.sleep_seconds * 1000:g} ms = "
                        f"{workers / s.sleep_seconds:,.0f} jobs/s; " + note)
            report.row("drain", f"drain {n:,} {label}, WORKER_COUNT={workers}", generator="poll /stats",
                       conns=workers, key=f"jqd.drain.{kind}.w{workers}", durability=JQD_DURABILITY,
                       duration=r["elapsed"], count=r["succeeded"], value=r["rate"], unit="jobs/s",
                       target=">= 5,000" if kind == "noop" else "", note=note, submit_rate=round(submit_rate, 1), rss_paused=paused_mem,
                       rss_drain_max_mb=r["rss_max_mb"], cpu=r["cpu"], steady_rate=r["steady_rate"])
            report.details.setdefault("drain_samples", {})[f"{kind} workers={workers}"] = r["samples"]
            if args.profile and kind == "noop" and workers == args.drain_workers[0]:
                extra = min(n, 20_000)
                d.ctl("pause", reason="benchmark: profile")
                submit_jobs(d, extra)
                base = d.counts().get("succeeded", 0)

                def drain_extra():
                    d.ctl("resume")
                    deadline = time.monotonic() + max(60.0, extra / 200)
                    while d.counts().get("succeeded", 0) < base + extra and time.monotonic() < deadline:
                        time.sleep(POLL)

                profile_run(args, d, f"drain-w{workers}", min(8.0, 1 + extra / max(r["rate"], 1)), drain_extra, report)


def db_copy(d: Daemon, name: str) -> str:
    """A consistent copy of the daemon's database (sqlite3 backup API; the daemon is paused)."""
    import sqlite3

    copy = os.path.join(d.dir, f"{name}.db")
    src = sqlite3.connect(f"file:{d.db}?mode=ro", uri=True)
    dst = sqlite3.connect(copy)
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    return copy


def claim_timing(paths: list[str], samples: int) -> list[dict]:
    """Time the daemon's own claim statement (jqd.store.sqlite_ops.job_claim, 10 jobs) in this
    process against copies of the daemon's database, alternating between the copies so that
    each sees the same background noise: each claim runs in BEGIN IMMEDIATE ... ROLLBACK, so
    every sample claims from the same backlog. No HTTP, no event loop, no fsync: the SQL cost
    of claiming alone."""
    import sqlite3
    import statistics

    from jqd.store.params import ClaimParams
    from jqd.store.sqlite_ops import job_claim

    conns = []
    for path in paths:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conns.append(conn)
    times: list[list[float]] = [[] for _ in paths]
    claimed = [0 for _ in paths]
    wait_quiet("claim timing")
    try:
        for i in range(samples + 10):
            for k, conn in enumerate(conns):
                now = time.time()
                params = ClaimParams(limit=10, now=now, owner="bench-claim", token=i + 1,
                                     lease_expires_at=now + 60)
                conn.execute("BEGIN IMMEDIATE")
                t = time.perf_counter()
                result = job_claim(conn, params)
                elapsed = time.perf_counter() - t
                conn.execute("ROLLBACK")
                if i >= 10:  # the first ten warm the page cache and the statement cache
                    times[k].append(elapsed)
                    claimed[k] += len(result.jobs)
        queued = [conn.execute("SELECT count(*) FROM jobs WHERE state = 'queued'").fetchone()[0] for conn in conns]
    finally:
        for conn in conns:
            conn.close()
    out = []
    for k in range(len(paths)):
        us = sorted(t * 1e6 for t in times[k])
        out.append({"median_us": statistics.median(us), "p90_us": us[int(0.9 * len(us))], "min_us": us[0],
                    "samples": len(us), "jobs_per_claim": claimed[k] / max(1, len(us)), "queued": queued[k]})
    return out


def scenario_scale(args, s: Settings, gen: str, report: Report) -> None:
    """RSS with a small and with a large backlog (paused), then the drain rate at the large backlog."""
    with Daemon("scale", tmp_root=args.tmpdir, log_dir=args.out) as d:
        d.ctl("pause", reason="benchmark: scale")
        empty = settle_rss(d, 1.0)
        print(f"[scale] submitting {s.scale_small:,} jobs (paused)", flush=True)
        submit_jobs(d, s.scale_small)
        small = settle_rss(d)
        report.row("scale", f"RSS, {s.scale_small:,} queued (paused)", count=s.scale_small, value=small["rss_mb"],
                   unit="MiB", key="jqd.rss.small",
                   note=f"empty daemon {empty['rss_mb']} MiB; db {db_size_mb(d)} MiB", rss=small)
        small_copy = db_copy(d, "claim-small")
        print(f"[scale] submitting up to {s.scale_large:,} jobs (paused)", flush=True)
        t0 = time.monotonic()
        rate = submit_jobs(d, s.scale_large - s.scale_small)
        elapsed = time.monotonic() - t0
        queued = d.counts().get("queued", 0)
        large = settle_rss(d)
        report.row("scale", f"RSS, {queued:,} queued (paused)", count=queued, value=large["rss_mb"], unit="MiB",
                   target="<= +20%", key="jqd.rss.large",
                   note=f"peak {large['peak_mb']} MiB; db {db_size_mb(d)} MiB; growth vs {s.scale_small:,}: "
                        f"{large['rss_mb'] - small['rss_mb']:+.1f} MiB "
                        f"({100 * (large['rss_mb'] / small['rss_mb'] - 1):+.0f}%)", rss=large)
        t_copy = time.monotonic()
        large_copy = db_copy(d, "claim-large")
        copy_s = time.monotonic() - t_copy
        print(f"[scale] timing {s.claim_samples} claims of 10 against each copy of the database "
              f"({s.scale_small:,} and {queued:,} queued), alternating", flush=True)
        claim_small, claim_large = claim_timing([small_copy, large_copy], s.claim_samples)
        for path in (small_copy, large_copy):
            for suffix in ("", "-wal", "-shm"):
                try:
                    os.unlink(path + suffix)
                except OSError:
                    pass
        report.row("scale", f"claim 10 jobs, {claim_small['queued']:,} queued", generator="sqlite3",
                   count=claim_small["samples"], value=claim_small["median_us"], unit="us median",
                   key="jqd.claim.small",
                   note=f"p90 {claim_small['p90_us']:.0f} us, min {claim_small['min_us']:.0f} us; "
                        f"{claim_small['jobs_per_claim']:.0f} jobs a claim; job_claim() on a backup copy, "
                        "each in BEGIN IMMEDIATE..ROLLBACK (no HTTP, no fsync)", claim=claim_small)
        report.row("scale", f"claim 10 jobs, {claim_large['queued']:,} queued", generator="sqlite3",
                   count=claim_large["samples"], value=claim_large["median_us"], unit="us median",
                   target="<= +20%", key="jqd.claim.large",
                   note=f"p90 {claim_large['p90_us']:.0f} us, min {claim_large['min_us']:.0f} us; "
                        f"{100 * (claim_large['median_us'] / claim_small['median_us'] - 1):+.0f}% vs "
                        f"{claim_small['queued']:,} queued (timed alternately); backup copy took {copy_s:.2f} s",
                   claim=claim_large)
        report.row("scale", f"createJobs x{BATCH_SIZE} fill to {s.scale_large:,}", generator="python", conns=4,
                   durability=JQD_DURABILITY,
                   duration=elapsed, count=s.scale_large - s.scale_small, value=rate, unit="jobs/s",
                   note="the backlog's own submission (4 threads, one process)")
        print(f"[scale] resume with {queued:,} queued; drain rate over {s.backlog_seconds:g} s", flush=True)
        wait_quiet("drain rate, large backlog")
        before = d.counts().get("succeeded", 0)
        cpu0, m0 = d.cpu_seconds(), machine_cpu()
        rss = []
        t0 = time.monotonic()
        d.ctl("resume")
        while time.monotonic() - t0 < s.backlog_seconds:
            time.sleep(POLL)
            rss.append(d.rss_mb())
        elapsed = time.monotonic() - t0
        done = d.counts().get("succeeded", 0) - before
        cpu = cpu_share(cpu0, d.cpu_seconds(), elapsed)
        cpu.update(machine_share(m0, machine_cpu()))
        cpu["others"] = other_load(cpu)
        report.row("scale", f"drain rate, {queued:,} backlog", generator="poll /stats", conns=d.workers,
                   durability=JQD_DURABILITY, key="jqd.drain.backlog_large",
                   duration=elapsed, count=done, value=done / elapsed, unit="jobs/s", target=">= 5,000",
                   note=f"RSS during {min(rss):.1f}-{max(rss):.1f} MiB; " + cpu_note(cpu), cpu=cpu)


def _parse_time(text: str | None) -> float | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _pickup_histogram(d: Daemon) -> dict | None:
    """The daemon's own jqd_job_pickup_seconds histogram (due -> handler start), or None."""
    try:
        status, body = d.http("GET", "/metrics")
    except OSError:
        return None
    if status != 200:
        return None
    buckets, total, count = {}, 0.0, 0
    for line in body.decode().splitlines():
        if m := re.match(r'jqd_job_pickup_seconds_bucket\{le="([^"]+)"\} (\S+)', line):
            buckets[m.group(1)] = float(m.group(2))
        elif line.startswith("jqd_job_pickup_seconds_sum "):
            total = float(line.split()[1])
        elif line.startswith("jqd_job_pickup_seconds_count "):
            count = int(float(line.split()[1]))
    return {"buckets": buckets, "sum": total, "count": count}


def _histogram_quantile(before: dict, after: dict, q: float) -> str:
    n = after["count"] - before["count"]
    if n <= 0:
        return "-"
    for le, cum in sorted(after["buckets"].items(), key=lambda kv: float(kv[0])):
        if cum - before["buckets"].get(le, 0) >= q * n:
            return f"<= {float(le) * 1000:g} ms" if le != "+Inf" else "> largest bucket"
    return "-"


def scenario_latency(args, s: Settings, gen: str, report: Report) -> None:
    """Sequential submissions to an idle daemon; pickup = started_at - created_at (and - client t0)."""
    with Daemon("latency", tmp_root=args.tmpdir, log_dir=args.out) as d:
        conn = RawHTTP(d.host, d.port)
        raw = build_request("POST", "/createJob", d.host, d.port, NOOP)

        def one() -> dict:
            t0 = time.time()
            status, body = conn.request(raw)
            t_ack = time.time()
            if status != 201:
                raise RuntimeError(f"POST /createJob answered {status}: {body[:200]!r}")
            job = json.loads(body)
            time.sleep(0.005)
            deadline = time.monotonic() + 10
            while True:  # wait until it ran, so the daemon is idle again before the next one
                st, jb = d.http("GET", f"/jobs/{job['id']}")
                cur = json.loads(jb)
                if cur.get("finished_at") or time.monotonic() > deadline:
                    break
                time.sleep(0.002)
            started, created = _parse_time(cur.get("started_at")), _parse_time(cur.get("created_at"))
            if started is None:
                raise RuntimeError(f"job {job['id']} did not start within 10 s: {cur}")
            return {"send_to_ack": t_ack - t0, "created_to_started": started - created,
                    "send_to_started": started - t0, "send_to_created": created - t0}

        for _ in range(10):  # warm-up: first requests import and compile things
            one()
            time.sleep(s.latency_gap)
        wait_quiet("idle latency")
        hist0 = _pickup_histogram(d)
        print(f"[latency] {s.latency_jobs} sequential submissions, {s.latency_gap * 1000:g} ms idle between",
              flush=True)
        results = []
        t_start = time.monotonic()
        for _ in range(s.latency_jobs):
            results.append(one())
            time.sleep(s.latency_gap)
        elapsed = time.monotonic() - t_start
        hist1 = _pickup_histogram(d)
        conn.close()

        def row(key, figure, target="", extra="", target99=""):
            ms = [r[key] * 1000 for r in results]
            p50, p99 = _pct(ms, 0.5), _pct(ms, 0.99)
            report.row("latency", f"{figure} p50", generator="sequential", conns=1, duration=elapsed,
                       count=len(ms), value=p50, unit="ms", target=target, key=f"jqd.idle.{key}.p50",
                       note=f"p90 {_pct(ms, 0.9):.3f} ms, min {min(ms):.3f}, max {max(ms):.3f} ms{extra}")
            report.row("latency", f"{figure} p99", generator="sequential", conns=1, duration=elapsed,
                       count=len(ms), value=p99, unit="ms", target=target99, key=f"jqd.idle.{key}.p99")

        row("created_to_started", "pickup created_at->started_at", target="p50 < 5", target99="p99 < 20")
        row("send_to_started", "pickup client send->started_at")
        row("send_to_ack", "POST /createJob round trip (201)")
        negative = sum(1 for r in results if r["send_to_created"] < 0)
        if negative:
            report.notes.append(f"latency: {negative} jobs have created_at before the client's send time: "
                                "the daemon's clock (jqd.clock, anchored on time.time() at start) and the "
                                "client's disagree by that much")
        if hist0 and hist1 and hist1["count"] > hist0["count"]:
            n = hist1["count"] - hist0["count"]
            mean = (hist1["sum"] - hist0["sum"]) / n * 1000
            report.row("latency", "pickup due->handler start (/metrics)", generator="histogram", conns=1,
                       count=n, value=mean, unit="ms mean", key="jqd.idle.histogram_mean",
                       note=f"p50 {_histogram_quantile(hist0, hist1, 0.5)}, "
                            f"p99 {_histogram_quantile(hist0, hist1, 0.99)} (bucket bounds)")
        else:
            report.notes.append("latency: /metrics pickup histogram not available")
        report.details["latency_samples_ms"] = [{k: round(v * 1000, 3) for k, v in r.items()} for r in results]
        latency_half_peak(args, s, gen, report, d)


def _open_loop(d: Daemon, rate: float, seconds: float, threads: int = 16) -> dict:
    """Submit noop jobs at a fixed rate (open loop: each job has a due time, whatever the
    answers do), over `threads` keep-alive connections. Returns per-job send times."""
    total = max(1, int(rate * seconds))
    raw = build_request("POST", "/createJob", d.host, d.port, NOOP)
    start = time.time() + 0.3
    sent: dict[int, tuple[float, float]] = {}  # id -> (due, sent)
    errors: list[str] = []
    lock = threading.Lock()

    def work(k: int) -> None:
        conn = RawHTTP(d.host, d.port)
        mine = {}
        try:
            for i in range(k, total, threads):
                due = start + i / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                t0 = time.time()
                status, body = conn.request(raw)
                if status != 201:
                    errors.append(f"{status}: {body[:100]!r}")
                    continue
                mine[json.loads(body)["id"]] = (due, t0)
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()
            with lock:
                sent.update(mine)

    pool = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.time() - start
    return {"sent": sent, "errors": errors, "elapsed": elapsed, "total": total}


def _fetch_jobs(d: Daemon, ids: set[int]) -> dict[int, dict]:
    """created_at/started_at of the given (finished) jobs, through GET /jobs pages (newest first)."""
    found: dict[int, dict] = {}
    low = min(ids)
    after = None
    while True:
        path = "/jobs?limit=1000" + (f"&after={after}" if after else "")
        status, body = d.http("GET", path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
        page = json.loads(body)
        for job in page["jobs"]:
            if job["id"] in ids:
                found[job["id"]] = job
        after = page.get("next_after")
        if not after or after < low or len(found) == len(ids):
            return found


def latency_half_peak(args, s: Settings, gen: str, report: Report, d: Daemon) -> None:
    """Pickup latency while the daemon takes and runs jobs at half of its peak rate.

    The peak is measured on this daemon first: durable intake alone (paused, POST /createJob
    at c=64), then processing alone (resume and time the drain of what came in); the peak
    is the smaller of the two (the rate it can sustain end to end) and the open loop
    submits at half of it, one job at a time, while the jobs run."""
    probe = 2.0 if s.quick else 3.0
    print(f"[latency] peak: POST /createJob c=64 for {probe:g} s (paused), then the drain of those jobs",
          flush=True)
    d.ctl("pause", reason="benchmark: latency peak")
    res, _ = measure(d, gen, "POST", "/createJob", NOOP, 64, probe)
    backlog = d.counts().get("queued", 0)
    t0 = time.monotonic()
    d.ctl("resume")
    deadline = t0 + 120
    while time.monotonic() < deadline:
        c = d.counts()
        if not c.get("queued", 0) and not c.get("running", 0):
            break
        time.sleep(POLL)
    done_rate = backlog / (time.monotonic() - t0)
    intake_rate = res.rate(201)
    peak = min(intake_rate, done_rate) if done_rate > 0 else intake_rate
    time.sleep(0.5)
    rate = peak / 2
    print(f"[latency] open loop at {rate:,.0f} jobs/s (half of {peak:,.0f}) for {s.half_peak_seconds:g} s",
          flush=True)
    wait_quiet("half-peak latency")
    hist0 = _pickup_histogram(d)
    cpu0, m0, t0 = d.cpu_seconds(), machine_cpu(), time.monotonic()
    client0 = loadgen._self_cpu()
    run = _open_loop(d, rate, s.half_peak_seconds)
    elapsed = time.monotonic() - t0
    cpu = cpu_share(cpu0, d.cpu_seconds(), elapsed)
    cpu.update(machine_share(m0, machine_cpu()))
    cpu["client"] = round(100 * (loadgen._self_cpu() - client0) / elapsed, 1)
    cpu["others"] = other_load(cpu)
    ids = set(run["sent"])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        c = d.counts()
        if not c.get("queued", 0) and not c.get("running", 0):
            break
        time.sleep(0.05)
    hist1 = _pickup_histogram(d)
    jobs = _fetch_jobs(d, ids) if ids else {}
    created_started, send_started, lag = [], [], []
    for job_id, (due, sent_at) in run["sent"].items():
        job = jobs.get(job_id)
        if not job or not job.get("started_at"):
            continue
        started, created = _parse_time(job["started_at"]), _parse_time(job["created_at"])
        created_started.append((started - created) * 1000)
        send_started.append((started - sent_at) * 1000)
        lag.append((sent_at - due) * 1000)
    if not created_started:
        raise RuntimeError(f"half-peak latency: no job data ({len(run['errors'])} errors: {run['errors'][:1]})")
    achieved = len(run["sent"]) / run["elapsed"]
    common = (f"open loop {achieved:,.0f} jobs/s achieved of {rate:,.0f} asked (peak {peak:,.0f}: min of "
              f"intake alone {intake_rate:,.0f}/s at c=64 and processing alone {done_rate:,.0f}/s); send lag p99 "
              f"{_pct(lag, 0.99):.1f} ms; " + cpu_note(cpu))
    if run["errors"]:
        common += f"; {len(run['errors'])} errors, first {run['errors'][0]}"
    for values, name, key in ((created_started, "pickup created->started", "created_to_started"),
                              (send_started, "pickup client send->started", "send_to_started")):
        report.row("latency", f"{name} @half peak p50", generator="open loop", conns=16,
                   duration=run["elapsed"], count=len(values), value=_pct(values, 0.5), unit="ms",
                   key=f"jqd.halfpeak.{key}.p50",
                   note=f"p90 {_pct(values, 0.9):.2f} ms, max {max(values):.1f} ms; " + common)
        report.row("latency", f"{name} @half peak p99", generator="open loop", conns=16,
                   duration=run["elapsed"], count=len(values), value=_pct(values, 0.99), unit="ms",
                   key=f"jqd.halfpeak.{key}.p99")
    if hist0 and hist1 and hist1["count"] > hist0["count"]:
        n = hist1["count"] - hist0["count"]
        report.row("latency", "pickup due->handler start @half peak", generator="histogram", conns=16, count=n,
                   value=(hist1["sum"] - hist0["sum"]) / n * 1000, unit="ms mean", key="jqd.halfpeak.histogram_mean",
                   note=f"p50 {_histogram_quantile(hist0, hist1, 0.5)}, "
                        f"p99 {_histogram_quantile(hist0, hist1, 0.99)} (bucket bounds)")
    report.details["half_peak"] = {"peak": peak, "rate": rate, "achieved": achieved,
                                   "intake_alone_c64": intake_rate, "processing_alone": done_rate}


def fsync_probe(tmpdir: str | None, seconds: float = 2.0) -> dict:
    """The disk's durable-commit rate as SQLite sees it: one-row INSERT + COMMIT in a loop,
    WAL with synchronous=FULL (jqd's and huey's setting): each commit is one fsync of the WAL."""
    import sqlite3
    import tempfile

    folder = tempfile.mkdtemp(prefix="jqd-bench-fsync-", dir=tmpdir)
    path = os.path.join(folder, "probe.db")
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (x)")
        times = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.perf_counter()
            conn.execute("BEGIN")
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("COMMIT")
            times.append(time.perf_counter() - t0)
    finally:
        conn.close()
        for suffix in ("", "-wal", "-shm"):
            try:
                os.unlink(path + suffix)
            except OSError:
                pass
        os.rmdir(folder)
    ms = sorted(t * 1000 for t in times)
    return {"commits_per_s": round(len(ms) / sum(times), 1), "p50_ms": round(ms[len(ms) // 2], 3),
            "p99_ms": round(ms[int(0.99 * len(ms))], 3), "commits": len(ms)}


def load_now() -> str:
    """The load averages (1, 5, 15 min), to print beside the figures."""
    try:
        with open("/proc/loadavg") as f:
            la = " ".join(f.read().split()[:3])
    except OSError:
        la = "?"
    return f"load average {la}"


# --- main ------------------------------------------------------------------------------------

def environment(gen: str, args) -> dict:
    def git(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except OSError:
            return ""

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "python": platform.python_version(),
            "cpus": os.cpu_count(), "cpu_model": cpu, "generator": gen, "quick": args.quick,
            "git_head": git("rev-parse", "--short", "HEAD"),
            "git_dirty_files": [line[3:] for line in git("status", "--porcelain").splitlines()
                                if line[3:].startswith(("daemon/", "control/"))],
            "tmpdir": args.tmpdir or "system default (tempfile)", "py_spy": py_spy_path(),
            "memory_mb": _mem_total_mb(), "load_at_start": load_now()}


def _mem_total_mb() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts and short runs (smoke test)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run (default all: {','.join(SCENARIOS)})")
    parser.add_argument("--generator", choices=("auto", "wrk", "python"), default="auto",
                        help="HTTP load generator: wrk if installed (auto), or the multi-process Python one")
    parser.add_argument("--repeat", type=int, default=None,
                        help="intake and batch points: alternate this many runs and report the median "
                             "(default 1 with --quick, else 3)")
    parser.add_argument("--drain-workers", default="10,100", help="WORKER_COUNT values for the noop drain")
    parser.add_argument("--sleep-drain-workers", default="100",
                        help="WORKER_COUNT values for the 10 ms sleep-job drain (empty: skip it)")
    parser.add_argument("--profile", action="store_true",
                        help="also run py-spy during extra (unmeasured) intake, batch and drain runs")
    parser.add_argument("--tmpdir", default=None, help="where the daemons' databases go (default: system temp)")
    parser.add_argument("--out", default=os.path.join(HERE, "out"), help="results directory (default bench/out)")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each measured point, wait up to this long for the machine to be at most "
                             "25%% busy with other processes (default 0: do not wait); for published figures")
    parser.add_argument("--charts-dir", default=None,
                        help="where the PNG charts go (default: the --out directory; docs/ to publish them)")
    parser.add_argument("--huey-workers", default=None,
                        help="huey consumer points, TYPE:N comma-separated (default thread:10,thread:4)")
    parser.add_argument("--rq-workers", default=None,
                        help="RQ worker points, CLASS:N comma-separated, CLASS simple|fork "
                             "(default simple:10,simple:2,fork:10)")
    args = parser.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)}")
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    args.repeat = max(1, args.repeat)
    args.drain_workers = [int(x) for x in args.drain_workers.split(",") if x.strip()]
    args.sleep_drain_workers = [int(x) for x in args.sleep_drain_workers.split(",") if x.strip()]
    os.makedirs(args.out, exist_ok=True)
    if args.generator == "auto":
        gen = "wrk" if loadgen.wrk_path() else "python"
    else:
        gen = args.generator
        if gen == "wrk" and not loadgen.wrk_path():
            parser.error("--generator wrk: wrk is not installed (apt-get install wrk)")
    s = Settings(args.quick)
    report = Report()
    env = environment(gen, args)
    print(f"jqd benchmark ({'quick' if args.quick else 'full'}): scenarios {', '.join(only)}")
    print(f"load generator: {gen}" + ("" if gen == "wrk" else " (multi-process Python, raw keep-alive sockets)")
          + ("" if loadgen.wrk_path() or gen == "wrk" else "; wrk not installed"))
    caveat = (f"this machine has {os.cpu_count()} CPU core(s); the load generator and the bench's /stats polling "
              "share them with the daemon, so every rate is a lower bound of what the daemon alone could do")
    print(f"caveat: {caveat}")
    report.notes.append(caveat)
    QUIET["max_wait"] = args.wait_quiet
    wait_quiet("fsync probe")
    probe = fsync_probe(args.tmpdir)
    env["fsync_probe"] = probe
    print(f"machine: {os.cpu_count()} cores, {env['cpu_model']}, {env['memory_mb']} MiB; {load_now()}")
    print(f"disk: SQLite WAL synchronous=FULL one-row commits: {probe['commits_per_s']:,.0f}/s, "
          f"p50 {probe['p50_ms']} ms, p99 {probe['p99_ms']} ms\n", flush=True)
    report.row("machine", "SQLite FULL-sync commit (fsync) rate", generator="sqlite3", conns=1, duration=2.0,
               count=probe["commits"], value=probe["commits_per_s"], unit="commits/s", durability="fsync(FULL)",
               key="machine.fsync",
               note=f"p50 {probe['p50_ms']} ms, p99 {probe['p99_ms']} ms per commit; {load_now()} at start")
    runners = {"intake": scenario_intake, "batch": scenario_batch, "drain": scenario_drain,
               "scale": scenario_scale, "latency": scenario_latency, "peers": peers.scenario_peers}
    failed = False
    t0 = time.monotonic()
    for name in SCENARIOS:
        if name not in only:
            continue
        print(f"[{name}] starting; {load_now()}", flush=True)
        try:
            runners[name](args, s, gen, report)
        except Exception as exc:  # report the rest anyway
            failed = True
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
            report.notes.append(f"{name}: FAILED: {type(exc).__name__}: {exc}")
    env["wall_seconds"] = round(time.monotonic() - t0, 1)
    env["load_at_end"] = load_now()
    env["quiet_waits"] = QUIET["log"]
    if QUIET["log"]:
        report.notes.append("waits for a quiet machine: " + "; ".join(QUIET["log"]))
    peers.compare(report)
    print_table(report)
    print(f"load at start: {env['load_at_start']}; at end: {env['load_at_end']}")
    try:
        import charts
        for path in charts.draw(report.rows, args.charts_dir or args.out):
            print(f"chart written to {os.path.relpath(path, os.getcwd())}")
    except ImportError as exc:
        print(f"charts skipped: {exc} (pip install -e '.[bench]')")
    path = os.path.join(args.out, "results.json")
    with open(path, "w") as f:
        json.dump({"environment": env, "rows": report.rows, "notes": report.notes, "details": report.details},
                  f, indent=1)
    print(f"results written to {os.path.relpath(path, os.getcwd())}; daemon logs in {os.path.relpath(args.out)}/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
