"""Peer queues on the same machine, same run: huey with SqliteStorage (the embedded, durable
peer) and RQ on Redis (loopback), driven the way their documentation drives them.

What each figure includes (see bench/README.md, "Peers"):
- enqueue: the peer's Python client library called in this process, one producer: no HTTP,
  no JSON validation. jqd's HTTP intake includes both, so single enqueue vs `POST /createJob`
  is printed side by side but is not like for like; batch vs batch is closer (both one
  durable commit for many jobs where the peer can; huey has no batch API at all).
- processing: N pre-queued noop jobs, then the peer's own consumer (`huey_consumer`,
  `rq worker-pool`) is started; value = jobs / (time from starting it to the first 50 ms poll
  that saw all done) — the consumer's start-up counts, as jqd's resume does. Slow points
  (RQ forking a work horse per job) are timed over a window instead and say so.
- latency: sequential submissions to an idle consumer; the task returns time.time() at its
  start, so pickup = handler start - the client's time before the enqueue call.

Durability, printed beside every figure: huey's SqliteStorage is created with its defaults
(journal_mode=WAL, `fsync=None`, which leaves SQLite's default `synchronous`: FULL in this
build, read back and printed), so each enqueue and each dequeue is one fsync'd commit, like
jqd's. RQ's Redis runs as SERVICES.md starts it: no AOF, no RDB — nothing reaches the disk,
a Redis restart loses every job: RQ's figures are NOT durable.
"""

from __future__ import annotations

import os
import resource
import signal
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from jqdproc import machine_cpu, machine_share, wait_quiet

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
POLL = 0.05
REDIS_URL = "redis://127.0.0.1:6379/0"
# SERVICES.md: how the project's machines start Redis when it is down (keeps nothing on disk).
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
               "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis", "--logfile", "/var/log/redis/ci.log"]
DEFAULT_HUEY_POINTS = "thread:10,thread:4"
DEFAULT_RQ_POINTS = "simple:10,simple:2,fork:10"


# --- CPU of a process tree, of this process, of Redis ----------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_cpu(root: int) -> float:
    """CPU seconds of `root` and all its live descendants, with their reaped children."""
    parent = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (st := _stat(int(name))):
            parent[int(name)] = int(st[1])
    total = 0.0
    for pid in parent:
        p = pid
        while p and p != root:
            p = parent.get(p, 0)
        if p == root and (st := _stat(pid)):
            total += sum(int(x) for x in st[11:15]) / CLK_TCK  # utime stime cutime cstime
    return total


def pid_cpu(pid: int | None) -> float:
    st = _stat(pid) if pid else None
    return sum(int(x) for x in st[11:13]) / CLK_TCK if st else 0.0


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class CpuWindow:
    """CPU use over a phase: the peer's consumer tree, this process (the producer), Redis,
    and what OTHER processes used (machine busy minus those), in % of one core."""

    def __init__(self, redis_pid: int | None = None):
        self.redis_pid = redis_pid
        self.m0, self.t0 = machine_cpu(), time.monotonic()
        self.self0, self.redis0 = self_cpu(), pid_cpu(redis_pid)

    def finish(self, consumer_cpu: float = 0.0) -> dict:
        elapsed = time.monotonic() - self.t0
        share = machine_share(self.m0, machine_cpu())
        pct = lambda sec: round(100 * sec / elapsed, 1) if elapsed > 0 else 0.0  # noqa: E731
        share.update({"consumer": pct(consumer_cpu), "bench": pct(self_cpu() - self.self0),
                      "redis": pct(pid_cpu(self.redis_pid) - self.redis0) if self.redis_pid else None})
        busy = share.get("machine_busy", 0) * (os.cpu_count() or 1)
        share["others"] = round(max(0.0, busy - share["consumer"] - share["bench"] - (share["redis"] or 0)), 1)
        return share


def cpu_text(share: dict) -> str:
    parts = []
    if share.get("consumer"):
        parts.append(f"consumer {share['consumer']}")
    parts.append(f"bench/producer {share['bench']}")
    if share.get("redis") is not None:
        parts.append(f"redis {share['redis']}")
    text = "cpu% " + ", ".join(parts)
    if share.get("others", 0) >= 10:
        text += f"; OTHER processes used {share['others']}% of a core"
    if share.get("steal", 0) >= 5:
        text += f"; hypervisor steal {share['steal']}%"
    return text


# --- a consumer process, drained -------------------------------------------------------------

def stop_group(proc: subprocess.Popen) -> None:
    """Stop a consumer we started in its own session: SIGTERM to its group, then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    else:
        try:  # the leader exited: make sure no child of it is left
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def timed_drain(cmd: list[str], env: dict, log_path: str, done, n: int, timeout: float,
                redis_pid: int | None = None) -> dict:
    """Start the consumer; poll `done()` every 50 ms until it reaches `n` or `timeout` s passed."""
    wait_quiet(f"peer drain {cmd[0].rsplit('/', 1)[-1]}")
    cpu = CpuWindow(redis_pid)
    t0 = time.monotonic()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    samples = []
    complete = False
    consumer_cpu = 0.0
    try:
        next_poll = t0
        while True:
            next_poll += POLL
            time.sleep(max(0.0, next_poll - time.monotonic()))
            count = done()
            now = time.monotonic() - t0
            samples.append((round(now, 3), count))
            if count >= n:
                complete = True
                break
            if now > timeout:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}; see {log_path}")
            if len(samples) % 20 == 0:
                consumer_cpu = tree_cpu(proc.pid)
        consumer_cpu = max(consumer_cpu, tree_cpu(proc.pid))
    finally:
        share = cpu.finish(consumer_cpu)
        stop_group(proc)
    elapsed, count = samples[-1]
    t10 = next((t for t, c in samples if c >= 0.1 * count), None)
    t90 = next((t for t, c in samples if c >= 0.9 * count), None)
    steady = 0.8 * count / (t90 - t10) if t10 is not None and t90 is not None and t90 > t10 else None
    first = next((t for t, c in samples if c > 0), None)
    return {"elapsed": elapsed, "done": count, "complete": complete, "rate": count / elapsed if elapsed else 0.0,
            "steady_rate": steady, "first_done_s": first, "cpu": share, "samples": samples}


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _parse_points(text: str, kinds: tuple[str, ...]) -> list[tuple[str, int]]:
    points = []
    for item in text.split(","):
        if not item.strip():
            continue
        kind, _, n = item.strip().partition(":")
        if kind not in kinds or not n.isdigit():
            raise ValueError(f"bad worker point {item!r}: expected one of {kinds} and ':N'")
        points.append((kind, int(n)))
    return points


# --- huey ------------------------------------------------------------------------------------

def run_huey(args, s, report) -> None:
    try:
        import huey  # noqa: F401
    except ImportError:
        report.notes.append("peers: huey skipped: the package is not installed (pip install -e '.[bench]')")
        print("[peers] huey not installed: skipped", flush=True)
        return
    folder = tempfile.mkdtemp(prefix="jqd-bench-huey-", dir=args.tmpdir)
    os.environ["JQD_BENCH_HUEY_DB"] = os.path.join(folder, "huey.db")
    sys.path.insert(0, HERE)
    tasks = None
    try:
        import peer_huey_tasks as tasks
        import huey as huey_pkg

        h = tasks.huey
        conn = h.storage.conn
        sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(conn.execute("PRAGMA synchronous").fetchone()[0])
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        durability = f"fsync({sync})" if sync in ("FULL", "EXTRA") else f"sync={sync}"
        setting = (f"huey {huey_pkg.__version__} SqliteHuey defaults: journal_mode={journal}, synchronous={sync} "
                   "(fsync=None: SQLite's default), one commit per enqueue and per dequeue")
        print(f"[peers] {setting}", flush=True)
        report.details["huey_durability"] = setting

        # enqueue, one producer
        h.storage.flush_queue()
        wait_quiet("huey enqueue")
        cpu = CpuWindow()
        n, t0 = 0, time.perf_counter()
        end = t0 + s.intake_seconds
        while time.perf_counter() < end:
            tasks.noop()
            n += 1
        elapsed = time.perf_counter() - t0
        report.row("peers", "huey enqueue, 1 producer", generator="library", conns=1, duration=elapsed, count=n,
                   value=n / elapsed, unit="jobs/s", durability=durability, key="huey.enqueue",
                   note=f"noop.__call__() in a loop; {setting}; " + cpu_text(cpu.finish()))
        h.storage.flush_queue()
        loops = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            for _ in range(1000):
                tasks.noop()
            loops.append(1000 / (time.perf_counter() - t0))
            h.storage.flush_queue()
        loop_rate = statistics.median(loops)
        report.row("peers", "huey 1000 enqueues in a loop (no batch API)", generator="library", conns=1,
                   count=1000, value=loop_rate, unit="jobs/s", durability=durability, key="huey.enqueue_loop1000",
                   note="huey has no bulk enqueue: the batch analogue is 1000 calls, 1000 commits; "
                        + ("median of " + "/".join(f"{x:,.0f}" for x in loops) if len(loops) > 1 else ""))

        # processing
        points = _parse_points(args.huey_workers or DEFAULT_HUEY_POINTS, ("thread", "process"))
        env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        consumer = os.path.join(BIN, "huey_consumer")
        if not os.path.exists(consumer):
            consumer = shutil.which("huey_consumer") or "huey_consumer"
        for kind, workers in points:
            n = s.peer_jobs
            h.storage.flush_queue()
            print(f"[peers] huey: pre-fill {n:,} noop tasks, then huey_consumer -k {kind} -w {workers}", flush=True)
            rows = [(h.storage.name, h.serialize_task(tasks.noop.s()), 0) for _ in range(n)]
            with h.storage.db(commit=True) as cur:  # huey's own messages, one transaction
                cur.executemany("INSERT INTO task (queue, data, priority) VALUES (?, ?, ?)", rows)
            del rows
            if h.storage.queue_size() != n:
                raise RuntimeError(f"huey pre-fill: {h.storage.queue_size()} queued, expected {n}")
            cmd = [consumer, "peer_huey_tasks.huey", "-k", kind, "-w", str(workers), "-q", "-n"]
            r = timed_drain(cmd, env, os.path.join(args.out, f"peer-huey-{kind}{workers}.log"),
                            lambda: n - h.storage.queue_size(), n, s.peer_drain_timeout)
            note = (f"steady (10%->90%) {_fmt(r['steady_rate'])} jobs/s; first done at {r['first_done_s']} s; "
                    + cpu_text(r["cpu"]) + f"; `huey_consumer -k {kind} -w {workers} -q -n`, default polling; "
                    "done = dequeued (at most w in flight)")
            if not r["complete"]:
                note = f"PARTIAL: {r['done']:,} of {n:,} in {r['elapsed']:.0f} s; " + note
            report.row("peers", f"huey drain {n:,} noop, {kind} x{workers}", generator="poll queue",
                       conns=workers, duration=r["elapsed"], count=r["done"], value=r["rate"], unit="jobs/s",
                       durability=durability, key=f"huey.drain.{kind}{workers}", note=note,
                       steady_rate=r["steady_rate"], cpu=r["cpu"])
            report.details.setdefault("peer_drain_samples", {})[f"huey {kind}:{workers}"] = r["samples"]
            h.storage.flush_queue()

        # idle pickup latency, consumer at its defaults (thread x10 unless told)
        kind, workers = points[0]
        cmd = [consumer, "peer_huey_tasks.huey", "-k", kind, "-w", str(workers), "-q", "-n"]
        with open(os.path.join(args.out, "peer-huey-latency.log"), "wb") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(1.5)
            wait_quiet("huey latency")
            lat = []
            for i in range(s.peer_latency_jobs + 5):
                t0 = time.time()
                res = tasks.stamp()
                deadline = time.monotonic() + 15
                started = None
                while started is None and time.monotonic() < deadline:
                    started = res.get()
                    if started is None:
                        time.sleep(0.002)
                if started is None:
                    raise RuntimeError("huey: a stamp task did not run within 15 s")
                if i >= 5:
                    lat.append((started - t0) * 1000)
                time.sleep(0.01)
        finally:
            stop_group(proc)
        report.row("peers", "huey pickup client enqueue->start p50", generator="sequential", conns=1,
                   count=len(lat), value=_pct(lat, 0.5), unit="ms", durability=durability, key="huey.idle.p50",
                   note=f"p90 {_pct(lat, 0.9):.1f} ms, max {max(lat):.1f} ms; {kind} x{workers}, huey's default "
                        "polling (0.1 s, x1.15 backoff when idle, up to 10 s); includes the enqueue commit")
        report.row("peers", "huey pickup client enqueue->start p99", generator="sequential", conns=1,
                   count=len(lat), value=_pct(lat, 0.99), unit="ms", durability=durability, key="huey.idle.p99")
    finally:
        if tasks is not None:
            tasks.huey.storage.close()
        shutil.rmtree(folder, ignore_errors=True)


# --- RQ --------------------------------------------------------------------------------------

def redis_connection(report) -> tuple[object | None, str | None]:
    """A Redis client, starting Redis with SERVICES.md's command when it does not answer."""
    try:
        from redis import Redis
        import rq  # noqa: F401
    except ImportError as exc:
        return None, f"RQ skipped: {exc.name} is not installed (pip install -e '.[bench]')"
    r = Redis.from_url(REDIS_URL, socket_timeout=30)
    try:
        r.ping()
        return r, None
    except Exception as exc:
        first = exc
    if not shutil.which("redis-server"):
        return None, f"RQ skipped: Redis at {REDIS_URL} does not answer ({first}) and redis-server is not installed"
    print("[peers] Redis does not answer: starting it as SERVICES.md says", flush=True)
    for d in ("/var/lib/redis", "/var/log/redis"):
        os.makedirs(d, exist_ok=True)
    subprocess.run(REDIS_START, capture_output=True, timeout=30)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            r.ping()
            report.notes.append("peers: Redis was down and was started with SERVICES.md's command")
            return r, None
        except Exception as exc:
            err = exc
            time.sleep(0.2)
    return None, f"RQ skipped: Redis could not be reached or started at {REDIS_URL} ({err})"


def redis_durability(r) -> tuple[str, str]:
    cfg = {}
    for key in ("appendonly", "appendfsync", "save"):
        try:
            cfg.update(r.config_get(key))
        except Exception:
            pass
    aof = cfg.get("appendonly", "?")
    save = cfg.get("save", "?")
    if aof == "yes":
        short = f"AOF {cfg.get('appendfsync', '?')}"
        text = f"Redis AOF on, appendfsync={cfg.get('appendfsync', '?')}, save={save!r}"
    else:
        short = "NONE(memory)"
        text = (f"Redis appendonly={aof}, save={save!r}: nothing on disk, NOT durable"
                if not save else f"Redis appendonly={aof}, RDB snapshots save={save!r}: NOT durable per job")
    return short, text


def run_rq(args, s, report) -> None:
    r, err = redis_connection(report)
    if r is None:
        report.notes.append("peers: " + err)
        print(f"[peers] {err}", flush=True)
        return
    from rq import Queue
    from rq.registry import FinishedJobRegistry
    import rq as rq_pkg

    redis_pid = r.info("server").get("process_id")
    durability, setting = redis_durability(r)
    setting = f"rq {rq_pkg.__version__}, redis-py; " + setting
    print(f"[peers] {setting}", flush=True)
    report.details["rq_durability"] = setting
    name = f"jqdbench-{os.getpid()}"
    q = Queue(name, connection=r)
    func = "peer_rq_tasks.noop"

    def cleanup():
        q.empty()
        registry = FinishedJobRegistry(queue=q)
        ids = registry.get_job_ids()
        for i in range(0, len(ids), 1000):
            with r.pipeline() as pipe:
                for job_id in ids[i:i + 1000]:
                    pipe.delete(f"rq:job:{job_id}", f"rq:results:{job_id}")
                pipe.execute()
        for key in r.scan_iter(match=f"*{name}*", count=1000):
            r.delete(key)

    try:
        cleanup()
        # enqueue, one producer
        wait_quiet("RQ enqueue")
        cpu = CpuWindow(redis_pid)
        n, t0 = 0, time.perf_counter()
        end = t0 + s.intake_seconds
        while time.perf_counter() < end:
            q.enqueue(func)
            n += 1
        elapsed = time.perf_counter() - t0
        report.row("peers", "RQ Queue.enqueue, 1 producer", generator="library", conns=1, duration=elapsed, count=n,
                   value=n / elapsed, unit="jobs/s", durability=durability, key="rq.enqueue",
                   note=f"{setting}; " + cpu_text(cpu.finish()))
        cleanup()
        for size in s.batch_sizes:
            wait_quiet(f"RQ enqueue_many x{size}")
            cpu = CpuWindow(redis_pid)
            n, t0 = 0, time.perf_counter()
            end = t0 + s.batch_seconds
            while time.perf_counter() < end:
                with r.pipeline() as pipe:
                    q.enqueue_many([Queue.prepare_data(func) for _ in range(size)], pipeline=pipe)
                    pipe.execute()
                n += size
            elapsed = time.perf_counter() - t0
            report.row("peers", f"RQ enqueue_many x{size} (pipeline), 1 producer", generator="library", conns=1,
                       duration=elapsed, count=n, value=n / elapsed, unit="jobs/s", durability=durability,
                       key=f"rq.enqueue_many{size}", note="one Redis pipeline a batch; " + cpu_text(cpu.finish()))
            cleanup()

        points = _parse_points(args.rq_workers or DEFAULT_RQ_POINTS, ("simple", "fork"))
        env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
        rq_bin = os.path.join(BIN, "rq")
        if not os.path.exists(rq_bin):
            rq_bin = shutil.which("rq") or "rq"
        classes = {"simple": "rq.worker.SimpleWorker", "fork": "rq.Worker"}
        for kind, workers in points:
            n = s.peer_jobs
            print(f"[peers] RQ: enqueue {n:,} noop jobs (enqueue_many x1000), then rq worker-pool -n {workers} "
                  f"-w {classes[kind]}", flush=True)
            for i in range(0, n, 1000):
                with r.pipeline() as pipe:
                    q.enqueue_many([Queue.prepare_data(func) for _ in range(min(1000, n - i))], pipeline=pipe)
                    pipe.execute()
            if q.count != n:
                raise RuntimeError(f"RQ pre-fill: {q.count} queued, expected {n}")
            finished = FinishedJobRegistry(queue=q)
            base = finished.count
            timeout = s.peer_window if kind == "fork" else s.rq_simple_window
            cmd = [rq_bin, "worker-pool", "-n", str(workers), "-w", classes[kind], "-q", "-u", REDIS_URL, name]
            r_ = timed_drain(cmd, env, os.path.join(args.out, f"peer-rq-{kind}{workers}.log"),
                             lambda: finished.count - base, n, timeout, redis_pid)
            note = (f"steady (10%->90%) {_fmt(r_['steady_rate'])} jobs/s; first done at {r_['first_done_s']} s; "
                    + cpu_text(r_["cpu"]) + f"; `rq worker-pool -n {workers} -w {classes[kind]} -q`"
                    + ("; the default Worker forks a work horse per job" if kind == "fork" else
                       "; SimpleWorker runs jobs in the worker process (no fork)"))
            if not r_["complete"]:
                note = (f"{'WINDOW' if kind == 'fork' else 'PARTIAL'}: {r_['done']:,} of {n:,} in "
                        f"{r_['elapsed']:.0f} s; " + note)
            report.row("peers", f"RQ drain {n:,} noop, {kind} x{workers}", generator="poll registry", conns=workers,
                       duration=r_["elapsed"], count=r_["done"], value=r_["rate"], unit="jobs/s",
                       durability=durability, key=f"rq.drain.{kind}{workers}", note=note,
                       steady_rate=r_["steady_rate"], cpu=r_["cpu"])
            report.details.setdefault("peer_drain_samples", {})[f"rq {kind}:{workers}"] = r_["samples"]
            cleanup()

        # idle pickup latency: one SimpleWorker, blocking on the queue (BLPOP-style dequeue)
        cmd = [rq_bin, "worker-pool", "-n", "1", "-w", classes["simple"], "-q", "-u", REDIS_URL, name]
        with open(os.path.join(args.out, "peer-rq-latency.log"), "wb") as log:
            proc = subprocess.Popen(cmd, env=env, cwd=HERE, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(2.0)
            wait_quiet("RQ latency")
            lat = []
            for i in range(s.peer_latency_jobs + 5):
                t0 = time.time()
                job = q.enqueue("peer_rq_tasks.stamp")
                deadline = time.monotonic() + 15
                started = None
                while started is None and time.monotonic() < deadline:
                    started = job.return_value(refresh=True)
                    if started is None:
                        time.sleep(0.002)
                if started is None:
                    raise RuntimeError("RQ: a stamp job did not run within 15 s")
                if i >= 5:
                    lat.append((started - t0) * 1000)
                time.sleep(0.01)
        finally:
            stop_group(proc)
        report.row("peers", "RQ pickup client enqueue->start p50", generator="sequential", conns=1,
                   count=len(lat), value=_pct(lat, 0.5), unit="ms", durability=durability, key="rq.idle.p50",
                   note=f"p90 {_pct(lat, 0.9):.1f} ms, max {max(lat):.1f} ms; 1 SimpleWorker, blocking dequeue")
        report.row("peers", "RQ pickup client enqueue->start p99", generator="sequential", conns=1,
                   count=len(lat), value=_pct(lat, 0.99), unit="ms", durability=durability, key="rq.idle.p99")
    finally:
        try:
            cleanup()
        except Exception:
            pass


def scenario_peers(args, s, gen, report) -> None:
    failures = []
    for name, fn in (("huey", run_huey), ("RQ", run_rq)):
        try:
            fn(args, s, report)
        except Exception as exc:  # one peer failing does not hide the other
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            print(f"[peers] {name} FAILED: {type(exc).__name__}: {exc}", flush=True)
    if failures:
        raise RuntimeError("; ".join(failures))


# --- jqd / peer ratios -----------------------------------------------------------------------

def compare(report) -> None:
    """Rows `jqd / peer` for the figures measured in this run (where both sides exist)."""
    by_key = {r["key"]: r for r in report.rows if r.get("key")}

    def best(prefix: str):
        rows = [r for k, r in by_key.items() if k.startswith(prefix) and r["value"]]
        return max(rows, key=lambda r: r["value"]) if rows else None

    jqd_drain_best = best("jqd.drain.noop.")
    pairs = [
        ("batch: jqd x1000 c=1 / huey 1000 enqueues", by_key.get("jqd.batch1000.c1"),
         by_key.get("huey.enqueue_loop1000"), ">= 10x",
         "both durable (fsync per commit); jqd over HTTP (one commit per 1000), huey in-process (1000 commits)"),
        ("batch: jqd x1000 c=1 / RQ enqueue_many x1000", by_key.get("jqd.batch1000.c1"),
         by_key.get("rq.enqueue_many1000"), "",
         "jqd durable over HTTP; RQ in-process client, Redis in memory (not durable)"),
        ("batch: jqd x100 c=1 / RQ enqueue_many x100", by_key.get("jqd.batch100.c1"),
         by_key.get("rq.enqueue_many100"), "", "as above, 100 a batch"),
        ("single: jqd createJob c=1 / huey enqueue", by_key.get("jqd.createJob.c1"),
         by_key.get("huey.enqueue"), "",
         "NOT like for like: jqd's includes an HTTP round trip and validation; both one fsync per job"),
        ("single: jqd createJob c=16 / huey enqueue", by_key.get("jqd.createJob.c16"),
         by_key.get("huey.enqueue"), "",
         "16 clients share jqd's group commits; huey's storage serialises producers on one lock"),
        ("single: jqd createJob c=1 / RQ enqueue", by_key.get("jqd.createJob.c1"),
         by_key.get("rq.enqueue"), "", "NOT like for like: HTTP + fsync vs an in-memory Redis call"),
        ("noop: jqd w=10 / huey thread x10", by_key.get("jqd.drain.noop.w10"),
         by_key.get("huey.drain.thread10"), ">= 4x", "same worker count; both fsync every state change commit"),
        ("noop: jqd best / huey best", jqd_drain_best, best("huey.drain."), ">= 4x",
         "each system's best point of this run"),
        ("noop: jqd w=10 / RQ SimpleWorker x10", by_key.get("jqd.drain.noop.w10"),
         by_key.get("rq.drain.simple10"), ">= 10x", "RQ not durable"),
        ("noop: jqd best / RQ best", jqd_drain_best, best("rq.drain."), ">= 10x",
         "each system's best point of this run; RQ not durable"),
        ("noop: jqd w=10 / RQ Worker (fork) x10", by_key.get("jqd.drain.noop.w10"),
         by_key.get("rq.drain.fork10"), "", "RQ's default worker forks per job; windowed rate"),
    ]
    for figure, jqd, peer, target, why in pairs:
        if not jqd or not peer or not jqd["value"] or not peer["value"]:
            continue
        ratio = jqd["value"] / peer["value"]
        steady = ""
        if jqd.get("steady_rate") and peer.get("steady_rate"):
            steady = f"; steady-rate ratio {jqd['steady_rate'] / peer['steady_rate']:.1f}x"
        def short(d: str | None) -> str:
            d = d or "-"
            return "fsync" if d.startswith("fsync") else "none" if d.startswith("NONE") else d[:5]

        row = report.row("ratios", figure, value=ratio, unit="x", target=target, key=None,
                   durability=f"{short(jqd.get('durability'))}/{short(peer.get('durability'))}",
                   note=f"{jqd['value']:,.0f} ({jqd['figure']}) / {peer['value']:,.0f} ({peer['figure']}){steady}; "
                        + why)
        row["load1"] = None  # a ratio of figures taken at different times: see each figure's own load1
