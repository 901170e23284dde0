"""Random-kill crash campaign against the real jqd: `make chaos` (CHAOS_ARGS=...).

    python tests/chaos/harness.py [--jobs N] [--clients C] [--kills K] [--seed S]
                                  [--workers W] [--json-out PATH] [...]

What it does (see docs/RELIABILITY.md, "Method"):
- a loopback webhook receiver records every delivery (token, Jqd-Job-Id, Jqd-Attempt) and
  answers 200, or 500 for a seeded fraction of attempts (`--fail-rate`) to exercise retries;
- one jqd (`python -m jqd`) on a fixed port, WAL database in a work directory;
- C client threads submit `webhook` jobs, each with a unique token in its `json` body, with
  createJob and createJobs (2..`--batch-max` jobs); a fraction of requests carry idempotency
  keys and are retried after a connection error (a retry answered 200/201 acknowledges them);
  a token counts as acknowledged only when its request was answered 200/201;
- a killer thread SIGKILLs the daemon K times at seeded random moments spread over the
  submission, runs `PRAGMA integrity_check` on the file while the daemon is down, restarts it
  and measures restart-to-ready (spawn to the first 200 from GET /readyz);
- at the end: submission stops, every acknowledged token must be delivered (else it is lost),
  the daemon is stopped gracefully, and the database is checked once more (integrity, the
  job_counts table against a GROUP BY, every acknowledged id present with its token).

Exit status 1 when a job is lost, an integrity check failed, the counts drifted, an
acknowledged id is missing from the database, or a client got an unexpected answer.
Default sizes run in about 1-2 minutes on 2 vCPUs; the long campaign of docs/RELIABILITY.md is
`--jobs 50000 --kills 100`.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time

import httpx

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from chaoslib import JqdProcess, Receiver, counts_drift, integrity, query  # noqa: E402

MAX_RETRIES = 25  # per job: a seeded 500 or a kill costs an attempt; none may run out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=20000, help="jobs to get acknowledged (default 20000)")
    p.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--kills", type=int, default=30, help="SIGKILLs during the submission (default 30)")
    p.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    p.add_argument("--workers", type=int, default=16, help="WORKER_COUNT of the daemon (default 16)")
    p.add_argument("--json-out", help="write the figures as JSON to this file")
    p.add_argument("--batch-max", type=int, default=20, help="largest createJobs batch (default 20)")
    p.add_argument("--batch-fraction", type=float, default=0.4,
                   help="fraction of requests that are createJobs batches (default 0.4)")
    p.add_argument("--key-fraction", type=float, default=0.3,
                   help="fraction of requests with idempotency keys, retried after a disconnect (0.3)")
    p.add_argument("--fail-rate", type=float, default=0.02,
                   help="fraction of webhook attempts the receiver answers 500 (default 0.02)")
    p.add_argument("--delivery-timeout", type=float, default=None,
                   help="seconds to wait for the last deliveries (default 60 + jobs/200)")
    p.add_argument("--workdir", help="directory for the database and the daemon log (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory even on success")
    p.add_argument("--quiet", action="store_true", help="no progress lines, only the summary")
    args = p.parse_args(argv)
    if args.jobs < 1 or args.clients < 1 or args.kills < 0 or args.workers < 1 or args.batch_max < 2:
        p.error("--jobs, --clients, --workers must be >= 1, --kills >= 0, --batch-max >= 2")
    return args


class Campaign:
    def __init__(self, args: argparse.Namespace, workdir: str):
        self.args = args
        self.workdir = workdir
        self.receiver = Receiver(fail_rate=args.fail_rate, seed=args.seed)
        self.daemon = JqdProcess(workdir, env=dict(
            WORKER_COUNT=args.workers, JQD_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
            JQD_RETRY_BASE="0.05", JQD_RETRY_MAX="0.5", JQD_VISIBILITY_TIMEOUT="30",
            JQD_SHUTDOWN_GRACE="10"))
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}  # token -> job id the daemon answered with
        self.unacked: set[str] = set()  # tokens whose request got no answer (connection lost)
        self.acked_after_disconnect = 0  # keyed tokens acknowledged by a retry after a disconnect
        self.requests = collections.Counter()  # outcome -> count
        self.errors: list[str] = []  # unexpected answers: a bug in jqd or in the harness
        self.up = threading.Event()  # set while the daemon is ready
        self.clients_done = threading.Event()
        self.abort = threading.Event()
        self.kills: list[dict] = []
        self.integrity_failures: list[str] = []
        self.missing_at_kill: list[dict] = []  # acknowledged tokens not in the file after a kill
        self.drift_at_kill: list[dict] = []  # job_counts differing from a GROUP BY after a kill
        self.started = time.monotonic()

    def log(self, message: str) -> None:
        if not self.args.quiet:
            print(f"[{time.monotonic() - self.started:7.1f}s] {message}", flush=True)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    # --- clients ------------------------------------------------------------------------------
    def _job(self, token: str, keyed: bool) -> dict:
        job = {"type": "webhook", "payload": {"url": self.receiver.url, "json": {"token": token}},
               "max_retries": MAX_RETRIES}
        if keyed:
            job["idempotency_key"] = f"key-{token}"
        return job

    def client(self, number: int) -> None:
        rng = random.Random(f"{self.args.seed}:client:{number}")
        with httpx.Client(base_url=self.daemon.url, timeout=15.0) as http:
            for request_no in itertools.count():
                if self.abort.is_set() or self.acked_count() >= self.args.jobs:
                    return
                batch = rng.random() < self.args.batch_fraction
                size = rng.randint(2, self.args.batch_max) if batch else 1
                keyed = rng.random() < self.args.key_fraction
                tokens = [f"s{self.args.seed}-c{number}-r{request_no}-j{k}" for k in range(size)]
                jobs = [self._job(t, keyed) for t in tokens]
                if batch:
                    self._send(http, "/createJobs", {"jobs": jobs}, tokens, keyed)
                else:
                    self._send(http, "/createJob", jobs[0], tokens, keyed)

    def _send(self, http: httpx.Client, path: str, body: dict, tokens: list[str], keyed: bool) -> None:
        disconnected = False
        backoff = 0.02
        give_up = time.monotonic() + 120
        while not self.abort.is_set():
            try:
                r = http.post(path, json=body)
            except httpx.TransportError:
                with self.lock:
                    self.requests["disconnected"] += 1
                if not keyed or time.monotonic() > give_up:
                    with self.lock:
                        self.unacked.update(tokens)
                    self.up.wait(60)
                    return
                disconnected = True  # the keyed request may or may not be committed: send it again
                self.up.wait(60)
                continue
            if r.status_code in (200, 201):
                try:
                    data = r.json()
                    ids = [data["id"]] if path == "/createJob" else [j["id"] for j in data["jobs"]]
                except (ValueError, KeyError, TypeError) as exc:
                    with self.lock:
                        self.errors.append(f"{path} {r.status_code}: unreadable body ({exc}): {r.text[:200]}")
                    return
                with self.lock:
                    if len(ids) != len(tokens):
                        self.errors.append(f"{path}: {len(ids)} ids for {len(tokens)} jobs")
                        return
                    self.requests[f"{r.status_code}{' after retry' if disconnected else ''}"] += 1
                    for token, job_id in zip(tokens, ids):
                        self.acked[token] = job_id
                    if disconnected:
                        self.acked_after_disconnect += len(tokens)
                return
            if r.status_code in (429, 503):  # backpressure or not ready: nothing written, try again
                with self.lock:
                    self.requests[str(r.status_code)] += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
                continue
            with self.lock:
                self.requests[str(r.status_code)] += 1
                self.errors.append(f"{path} -> {r.status_code}: {r.text[:300]}")
            return

    # --- the killer -------------------------------------------------------------------------
    def killer(self) -> None:
        rng = random.Random(f"{self.args.seed}:killer")
        target = self.args.jobs
        thresholds = sorted(rng.uniform(0.03, 0.97) * target for _ in range(self.args.kills))
        for number, threshold in enumerate(thresholds, 1):
            min_uptime = rng.uniform(0.0, 0.3)
            jitter = rng.uniform(0.0, 0.05)
            ready_at = time.monotonic()
            while not self.abort.is_set():
                reached = self.acked_count() >= threshold or self.clients_done.is_set()
                if reached and time.monotonic() - ready_at >= min_uptime:
                    break
                time.sleep(0.002)
            if self.abort.is_set():
                return
            time.sleep(jitter)  # the moment within the commit pipeline is random too
            acked_at_kill = self.acked_count()
            self.up.clear()
            killed = time.monotonic()
            self.daemon.kill()
            check = integrity(self.daemon.db)
            if check != "ok":
                self.integrity_failures.append(f"after kill {number}: {check}")
            else:
                self._check_at_kill(number)
            try:
                restart = self.daemon.start()
            except Exception as exc:  # noqa: BLE001: reported, and the campaign stops
                self.errors.append(f"restart after kill {number} failed: {exc}")
                self.abort.set()
                self.up.set()
                return
            kill_to_ready = time.monotonic() - killed
            self.kills.append({"n": number, "acked_at_kill": acked_at_kill, "integrity": check,
                               "restart_to_ready_s": round(restart, 4),
                               "kill_to_ready_s": round(kill_to_ready, 4)})
            self.up.set()
            self.log(f"kill {number}/{len(thresholds)} at {acked_at_kill} acknowledged: integrity {check}, "
                     f"restart-to-ready {restart:.3f} s")

    def _check_at_kill(self, number: int) -> None:
        """While the daemon is down: every token acknowledged so far is in the file under the
        id it was acknowledged with, and the counts table has not drifted."""
        with self.lock:
            acked = dict(self.acked)  # each got its 201/200 before the kill: committed
        in_db = dict(query(self.daemon.db, "SELECT id, json_extract(payload, '$.json.token') FROM jobs"))
        missing = sorted(t for t, job_id in acked.items() if in_db.get(job_id) != t)
        if missing:
            self.missing_at_kill.append({"kill": number, "count": len(missing), "tokens": missing[:10]})
        drift = counts_drift(self.daemon.db)
        if drift:
            self.drift_at_kill.append({"kill": number, "drift": {f"{s}/{q}": v for (s, q), v in drift.items()}})

    # --- the campaign -------------------------------------------------------------------------
    def run(self) -> dict:
        args = self.args
        self.log(f"jqd on {self.daemon.url}, work dir {self.workdir}; {args.jobs} jobs, "
                 f"{args.clients} clients, {args.kills} kills, seed {args.seed}, {args.workers} workers")
        first_ready = self.daemon.start()
        self.up.set()
        t0 = time.monotonic()
        clients = [threading.Thread(target=self.client, args=(i,), name=f"client-{i}", daemon=True)
                   for i in range(args.clients)]
        killer = threading.Thread(target=self.killer, name="killer", daemon=True)
        for t in clients:
            t.start()
        killer.start()
        progress_at = time.monotonic()
        while any(t.is_alive() for t in clients):
            for t in clients:
                t.join(0.5)
            if time.monotonic() - progress_at >= 10:
                progress_at = time.monotonic()
                self.log(f"{self.acked_count()} acknowledged, {len(self.receiver.delivered())} delivered")
        submit_seconds = time.monotonic() - t0
        self.clients_done.set()
        killer.join()
        self.log(f"submission done in {submit_seconds:.1f} s: {self.acked_count()} acknowledged; "
                 "waiting for deliveries")

        with self.lock:
            acked = dict(self.acked)
            unacked = set(self.unacked) - set(acked)
        timeout = args.delivery_timeout if args.delivery_timeout is not None else 60 + len(acked) / 200
        t1 = time.monotonic()
        missing = self.receiver.wait_for(acked, timeout) if not self.abort.is_set() else set(acked)
        delivery_wait = time.monotonic() - t1
        quiet = self._wait_quiet(timeout=60)
        stop_status = self.daemon.stop()
        final_check = integrity(self.daemon.db)
        if final_check != "ok":
            self.integrity_failures.append(f"final: {final_check}")
        drift = counts_drift(self.daemon.db)
        in_db = {row[0]: row[1] for row in query(
            self.daemon.db, "SELECT id, json_extract(payload, '$.json.token') FROM jobs WHERE type = 'webhook'")}
        missing_in_db = sorted(t for t, job_id in acked.items() if in_db.get(job_id) != t)
        rescues = query(self.daemon.db, "SELECT coalesce(sum(rescues), 0) FROM jobs")[0][0]
        states = dict(query(self.daemon.db, "SELECT state, count(*) FROM jobs GROUP BY 1"))

        ok, ids, deliveries, failed_answers = self.receiver.snapshot()
        duplicates = sum(n - 1 for n in ok.values() if n > 1)
        restarts = [k["restart_to_ready_s"] for k in self.kills]
        downtime = [k["kill_to_ready_s"] for k in self.kills]
        lost = sorted(missing)
        report = {
            "campaign": "random-kill",
            "params": {"jobs": args.jobs, "clients": args.clients, "kills": args.kills, "seed": args.seed,
                       "workers": args.workers, "batch_max": args.batch_max,
                       "batch_fraction": args.batch_fraction, "key_fraction": args.key_fraction,
                       "fail_rate": args.fail_rate},
            "acknowledged": len(acked),
            "acknowledged_after_disconnect_retry": self.acked_after_disconnect,
            "unacknowledged": len(unacked),
            "unacknowledged_delivered": sum(1 for t in unacked if t in ok),
            "delivered": sum(1 for t in acked if t in ok),
            "lost": len(lost),
            "lost_tokens": lost[:50],
            "lost_detail": self._diagnose(lost[:20], ids),
            "duplicates": duplicates,
            "duplicated_tokens": sum(1 for n in ok.values() if n > 1),
            "tokens_under_several_job_ids": sum(1 for s in ids.values() if len(s) > 1),
            "tokens_under_several_job_ids_detail": self._diagnose(
                sorted(t for t, s in ids.items() if len(s) > 1)[:10], ids),
            "acked_id_mismatch": sum(1 for t, i in acked.items() if t in ids and i not in ids[t]),
            "deliveries_total": deliveries,
            "receiver_500_answers": failed_answers,
            "receiver_torn_requests": self.receiver.torn,
            "kills": len(self.kills),
            "restart_to_ready_max_s": max(restarts) if restarts else None,
            "restart_to_ready_median_s": round(statistics.median(restarts), 4) if restarts else None,
            "kill_to_ready_max_s": max(downtime) if downtime else None,
            "kill_to_ready_median_s": round(statistics.median(downtime), 4) if downtime else None,
            "first_start_to_ready_s": round(first_ready, 4),
            "integrity_checks": len(self.kills) + 1,
            "integrity_failures": len(self.integrity_failures),
            "integrity_failure_detail": self.integrity_failures,
            "counts_drift": {f"{s}/{q}": v for (s, q), v in sorted(drift.items())},
            "acked_missing_in_db": len(missing_in_db),
            "acked_missing_at_kill": self.missing_at_kill,
            "counts_drift_at_kill": self.drift_at_kill,
            "rescues_total": rescues,
            "final_states": states,
            "quiescent_at_end": quiet,
            "final_stop_exit_status": stop_status,
            "requests": dict(self.requests),
            "client_errors": self.errors[:20],
            "submit_seconds": round(submit_seconds, 2),
            "jobs_per_second_submitted": round(len(acked) / submit_seconds, 1) if submit_seconds else None,
            "delivery_wait_seconds": round(delivery_wait, 2),
            "total_seconds": round(time.monotonic() - self.started, 2),
            "python": sys.version.split()[0],
            "kill_log": self.kills,
        }
        # A token under two job ids would be a duplicate *job* made of one acknowledged request
        # (an idempotency key not honoured): not a loss, but a broken promise all the same.
        report["passed"] = (report["lost"] == 0 and not self.integrity_failures and not drift
                            and not missing_in_db and not self.errors and not self.abort.is_set()
                            and report["tokens_under_several_job_ids"] == 0
                            and not self.missing_at_kill and not self.drift_at_kill)
        return report

    def _wait_quiet(self, timeout: float) -> bool:
        """Wait until nothing is queued or running, so that the duplicate count is final."""
        deadline = time.monotonic() + timeout
        with self.daemon.client(timeout=5) as c:
            while time.monotonic() < deadline:
                try:
                    counts = c.get("/stats").json()["counts"]
                    if not counts.get("queued") and not counts.get("running"):
                        return True
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                time.sleep(0.1)
        return False

    def _diagnose(self, tokens: list[str], ids: dict[str, set[int]]) -> list:
        """What the database and the receiver know of these tokens."""
        out = []
        for token in tokens:
            rows = query(self.daemon.db, "SELECT id, state, attempts, rescues, idempotency_key, created_at, "
                         "last_error FROM jobs WHERE json_extract(payload, '$.json.token') = ?", (token,))
            out.append({"token": token, "acked_id": self.acked.get(token), "unacked": token in self.unacked,
                        "delivered_ids": sorted(ids.get(token, ())), "rows": rows})
        return out

    def close(self) -> None:
        self.abort.set()
        self.up.set()
        self.daemon.kill()
        self.receiver.close()


def summary(r: dict) -> str:
    lines = [
        f"jqd random-kill campaign, seed {r['params']['seed']}: {'PASSED' if r['passed'] else 'FAILED'}",
        f"  acknowledged            {r['acknowledged']}  (of which {r['acknowledged_after_disconnect_retry']} "
        "by a keyed retry after a disconnect)",
        f"  delivered (unique)      {r['delivered']}",
        f"  lost                    {r['lost']}",
        f"  duplicates              {r['duplicates']}  ({r['duplicated_tokens']} tokens delivered more than once)",
        f"  unacknowledged          {r['unacknowledged']}  ({r['unacknowledged_delivered']} of them ran anyway)",
        f"  kills                   {r['kills']}",
        f"  restart-to-ready        max {r['restart_to_ready_max_s']} s, median {r['restart_to_ready_median_s']} s",
        f"  kill-to-ready           max {r['kill_to_ready_max_s']} s, median {r['kill_to_ready_median_s']} s",
        f"  integrity failures      {r['integrity_failures']} of {r['integrity_checks']} checks",
        f"  counts drift            {r['counts_drift'] or 'none'} at the end, "
        f"{len(r['counts_drift_at_kill'])} kills with drift",
        f"  acked missing in db     {r['acked_missing_in_db']} at the end, "
        f"{len(r['acked_missing_at_kill'])} kills with an acknowledged job missing",
        f"  rescues                 {r['rescues_total']}",
        f"  receiver 500 answers    {r['receiver_500_answers']} of {r['deliveries_total']} deliveries",
        f"  submitted               {r['jobs_per_second_submitted']} jobs/s over {r['submit_seconds']} s "
        "(downtime included)",
        f"  total                   {r['total_seconds']} s",
    ]
    if r["client_errors"]:
        lines.append(f"  client errors           {r['client_errors'][:5]}")
    if r["lost"]:
        lines.append(f"  lost tokens             {r['lost_detail']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="jqd-chaos-")
    os.makedirs(workdir, exist_ok=True)
    campaign = Campaign(args, workdir)
    try:
        report = campaign.run()
    finally:
        campaign.close()
    report["workdir"] = workdir
    print(summary(report), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2, sort_keys=True)
            f.write("\n")
    if report["passed"] and not args.keep and not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"  work dir (database, daemon log): {workdir}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
