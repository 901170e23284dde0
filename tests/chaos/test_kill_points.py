"""Targeted kills: the real daemon SIGKILLs itself at a named point (tests/chaos/faulty_jqd.py).

For every point the daemon is started with `faulty_jqd.py --crash-at POINT:N`, driven by a
workload that reaches the point, and dies there. Then, with the daemon down:
`PRAGMA integrity_check` is "ok" and `job_counts` equals a GROUP BY of `jobs`; every job the
clients got 201/200 for is in the database. The normal `python -m jqd` is started on the same
file: jobs that were `running` at the kill come back with `rescues` one higher, every
acknowledged job runs to `succeeded`, and the counts still match.

Two kinds of test:
- deterministic ones (one client, one request at a time; the daemon paused where a commit
  count must be exact), which also check what the point itself promises: at `commit.before`
  the batch being committed was neither acknowledged nor written; at `commit.after` it was
  written though the client saw a connection error; and so on;
- `test_kill_under_load`: the same point under concurrent load (group commits of many
  requests, retries, completions merged), checking the invariants only.

A job is kept `running` across a kill by a webhook the receiver holds until the test
releases it; the tests never sleep, they poll. With CHAOS_FIGURES=FILE set, each test appends its figures (acknowledged, lost,
duplicates, kills, restart-to-ready) to FILE as a JSON line: docs/RELIABILITY.md's table.
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.chaos.chaoslib import (
    ROOT, JqdProcess, Receiver, counts_drift, faulty_command, integrity, poll, query,
)

MIGRATIONS = os.path.join(ROOT, "daemon", "jqd", "store", "migrations")
KILLED = -9  # Popen.returncode of a process that died of SIGKILL
QUIET_ENV = dict(JQD_VISIBILITY_TIMEOUT="600", JQD_RETRY_BASE="0.05", JQD_RETRY_MAX="0.2",
                 JQD_WEBHOOK_ALLOWED_HOSTS="127.0.0.1", WORKER_COUNT="8")


# --- helpers ------------------------------------------------------------------------------

def record(name: str, d: JqdProcess, *, acknowledged: int, lost: int = 0, duplicates: int, kills: int = 1):
    """Append this campaign's figures to $CHAOS_FIGURES (JSON lines), when it is set."""
    path = os.environ.get("CHAOS_FIGURES")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps({"test": name, "acknowledged": acknowledged, "lost": lost,
                                "duplicates": duplicates, "kills": kills,
                                "restart_to_ready_s": round(d.last_start_seconds or 0, 3)}) + "\n")


@pytest.fixture
def daemon(tmp_path):
    started: list[JqdProcess] = []

    def make(**env) -> JqdProcess:
        d = JqdProcess(str(tmp_path), env={**QUIET_ENV, **env})
        started.append(d)
        return d

    yield make
    for d in started:
        d.kill()


@pytest.fixture
def receiver():
    """Tokens "fail..." are answered 500 on attempt 1. Deliveries of tokens "hold..." wait
    for `release` (the job stays running until the test lets it go: no sleep, no timing);
    tokens "acked..." wait for `acked`, set once the client holds its 201, so that a kill at
    the job's completion cannot overtake the acknowledgement."""
    r = Receiver(fails=lambda token, attempt: attempt == 1 and token.startswith("fail"),
                 gates={"hold": threading.Event(), "acked": threading.Event(), "fail-acked": threading.Event()})
    r.release, r.acked = r.gates["hold"], r.gates["acked"]
    yield r
    r.close()


def hook(receiver: Receiver, token: str, **fields) -> dict:
    return {"type": "webhook", "payload": {"url": receiver.url, "json": {"token": token}}, **fields}


def post(c: httpx.Client, path: str, body: dict) -> httpx.Response | None:
    """The answer, or None when the connection broke (the daemon died)."""
    try:
        return c.post(path, json=body)
    except httpx.TransportError:
        return None


def ctl(d: JqdProcess, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jqd_ctl", "--socket", d.socket, *args], env=d.env,
                          capture_output=True, text=True, timeout=timeout)


def wait_killed(d: JqdProcess, point: str, timeout: float = 20) -> None:
    code = d.wait_exit(timeout)
    assert code == KILLED, f"expected death by SIGKILL at {point}, got exit {code}:\n{d.log_tail()}"
    assert f"FAULT: killing at {point}" in d.log(), d.log_tail()


def check_file(db: str) -> None:
    """While the daemon is down: the file is intact and the counts table exact."""
    assert integrity(db) == "ok"
    assert counts_drift(db) == {}, counts_drift(db)


def rows(db: str) -> dict[int, dict]:
    out = {}
    for r in query(db, "SELECT id, state, attempts, rescues, idempotency_key, "
                       "json_extract(payload, '$.json.token') FROM jobs"):
        out[r[0]] = dict(zip(("id", "state", "attempts", "rescues", "key", "token"), r))
    return out


def wait_quiet(d: JqdProcess, timeout: float = 30) -> dict:
    """Until nothing is queued or running; the final counts by state."""
    with d.client() as c:
        def done():
            counts = c.get("/stats").json()["counts"]
            return counts if not counts.get("queued") and not counts.get("running") else None
        return poll(done, timeout, 0.02, "every job to finish")


def wait_running(c: httpx.Client, job_id: int) -> None:
    poll(lambda: c.get(f"/jobs/{job_id}").json()["state"] == "running", 10, 0.005, f"job {job_id} running")


def finish(d: JqdProcess) -> dict[int, dict]:
    """Restart with the normal daemon (unless it runs), let everything run, stop, check;
    the final rows."""
    if d.proc.poll() is not None:
        d.start()
    wait_quiet(d)
    assert d.stop() == 0
    check_file(d.db)
    return rows(d.db)


def paused_daemon(make) -> JqdProcess:
    """A database whose global pause is stored: a daemon started on it claims nothing, so
    the only commits are start-up recovery (commit 1) and the client's requests."""
    d = make()
    d.start()
    assert ctl(d, "pause", "--reason", "chaos test").returncode == 0
    assert d.stop() == 0
    return d


def noop(key: str | None = None) -> dict:
    job = {"type": "noop", "payload": {}}
    if key:
        job["idempotency_key"] = key
    return job


# --- commit.before / commit.after ---------------------------------------------------------

@pytest.mark.parametrize("point", ["commit.before", "commit.after"])
def test_group_commit_kill(daemon, point):
    d = paused_daemon(daemon)
    d.spawn(faulty_command(f"{point}:5"))  # commits: 1 recovery, 2-4 acknowledged, 5 killed
    d.wait_ready()
    acked: dict[str, int] = {}
    with d.client() as c:
        r = post(c, "/createJob", noop("one"))
        assert r is not None and r.status_code == 201
        acked["one"] = r.json()["id"]
        r = post(c, "/createJobs", {"jobs": [noop(f"two-{i}") for i in range(3)]})
        assert r is not None and r.status_code == 201
        acked.update({f"two-{i}": j["id"] for i, j in enumerate(r.json()["jobs"])})
        r = post(c, "/createJob", {"type": "sleep", "payload": {"seconds": 0.01}, "idempotency_key": "three"})
        assert r is not None and r.status_code == 201
        acked["three"] = r.json()["id"]
        killed_batch = {"jobs": [noop(f"four-{i}") for i in range(5)]}
        r = post(c, "/createJobs", killed_batch)
        assert r is None, f"the killed commit was acknowledged: {r.status_code} {r.text}"
    wait_killed(d, point)
    check_file(d.db)
    found = {row["key"]: row for row in rows(d.db).values()}
    for key, job_id in acked.items():
        assert found[key]["id"] == job_id and found[key]["state"] == "queued"
    killed_keys = {f"four-{i}" for i in range(5)}
    if point == "commit.before":
        assert not killed_keys & set(found), "a batch killed before COMMIT was written"
    else:
        assert killed_keys <= set(found), "a batch killed after COMMIT was not written"

    d.start()
    check_file(d.db)
    with d.client() as c:
        # The client retries the batch it got no answer for: created now (commit.before) or a
        # replay of what was committed (commit.after): exactly one job per key either way.
        r = c.post("/createJobs", json=killed_batch)
        assert r.status_code == (201 if point == "commit.before" else 200), r.text
        if point == "commit.after":
            assert [j["id"] for j in r.json()["jobs"]] == [found[f"four-{i}"]["id"] for i in range(5)]
        for key, job_id in acked.items():
            assert c.get(f"/jobs/{job_id}").json()["idempotency_key"] == key
    assert ctl(d, "resume").returncode == 0
    final = finish(d)
    assert len(final) == 10
    assert all(row["state"] == "succeeded" and row["attempts"] == 1 and row["rescues"] == 0
               for row in final.values()), final
    record(point, d, acknowledged=len(acked), duplicates=0)


# --- claim ----------------------------------------------------------------------------------

def test_claim_kill_rescues_running_jobs(daemon, receiver):
    """Claims 1 and 2 start two webhooks held by the receiver; claim 3 (of a noop) dies
    before its COMMIT: the held jobs were running at the kill and are rescued; the noop was
    never claimed."""
    d = daemon()
    d.spawn(faulty_command("claim:3"))
    d.wait_ready()
    with d.client() as c:
        sleepers = []
        for n in range(2):
            r = c.post("/createJob", json=hook(receiver, f"hold-{n}"))
            assert r.status_code == 201
            sleepers.append(r.json()["id"])
            wait_running(c, sleepers[-1])
        r = post(c, "/createJob", noop())  # committed; the kill may overtake its 201
        acked_noop = r.json()["id"] if r is not None and r.status_code == 201 else None
    wait_killed(d, "claim")
    receiver.release.set()
    check_file(d.db)
    before = rows(d.db)
    assert [before[i]["state"] for i in sleepers] == ["running", "running"]
    assert [before[i]["attempts"] for i in sleepers] == [1, 1]
    (last,) = set(before) - set(sleepers)  # the noop: committed, its claim rolled back
    assert acked_noop in (None, last)
    assert before[last]["state"] == "queued" and before[last]["attempts"] == 0

    final = finish(d)
    for i in sleepers:
        assert final[i]["state"] == "succeeded"
        assert final[i]["rescues"] == 1 and final[i]["attempts"] == 2, final[i]
    assert final[last]["state"] == "succeeded"
    assert final[last]["rescues"] == 0 and final[last]["attempts"] == 1
    record("claim", d, acknowledged=len(sleepers) + (acked_noop is not None), duplicates=len(sleepers))


def test_claimed_last_attempt_ends_dead_not_lost(daemon):
    """Killed right after the COMMIT of a claim, before the worker starts the handler: the
    attempt was counted at the claim (SPEC: that is what stops a job that crashes the
    daemon from crash-looping it), so a job with max_retries 0 comes back `dead`, with the
    rescue in last_error: accounted for and retryable by hand, not lost, never run."""
    d = paused_daemon(daemon)
    d.spawn(faulty_command("commit.after:4"))  # 1 recovery, 2 insert, 3 resume, 4 the claim
    d.wait_ready()
    with d.client() as c:
        r = c.post("/createJob", json={"type": "noop", "payload": {}, "max_retries": 0})
        assert r.status_code == 201
        job_id = r.json()["id"]
    ctl(d, "resume")
    wait_killed(d, "commit.after")
    check_file(d.db)
    assert (rows(d.db)[job_id]["state"], rows(d.db)[job_id]["attempts"]) == ("running", 1)
    d.start()
    with d.client() as c:
        job = c.get(f"/jobs/{job_id}").json()
        assert (job["state"], job["attempts"], job["rescues"]) == ("dead", 1, 1), job
        assert job["last_error"].startswith("rescued")
        assert c.post(f"/jobs/{job_id}/retry").status_code == 200  # the operator's way back
    final = finish(d)
    assert final[job_id]["state"] == "succeeded"
    record("commit.after:4 = a claim (max_retries 0)", d, acknowledged=1, duplicates=0)


# --- complete / complete.retry ----------------------------------------------------------------

def test_complete_kill_redelivers_webhook(daemon, receiver):
    """The webhook was delivered (200) but its `succeeded` was never committed: after the
    restart it is rescued and delivered again, attempt 2: at-least-once, a duplicate. A
    second, held job was running at the kill: rescued too."""
    d = daemon()
    d.spawn(faulty_command("complete:1"))
    d.wait_ready()
    with d.client() as c:
        r = c.post("/createJob", json=hook(receiver, "hold-s"))
        sleeper = r.json()["id"]
        wait_running(c, sleeper)
        r = post(c, "/createJob", hook(receiver, "acked-w"))
        assert r is not None and r.status_code == 201
        job = r.json()["id"]
        receiver.acked.set()
    wait_killed(d, "complete")
    check_file(d.db)
    before = rows(d.db)
    assert before[job]["state"] == "running" and before[sleeper]["state"] == "running"
    assert [(x.job_id, x.attempt, x.status) for x in receiver.deliveries] == [(job, 1, 200)]
    receiver.release.set()

    final = finish(d)
    assert final[job]["state"] == "succeeded" and final[job]["rescues"] == 1 and final[job]["attempts"] == 2
    assert final[sleeper]["state"] == "succeeded" and final[sleeper]["rescues"] == 1
    delivered = [(x.job_id, x.attempt, x.status) for x in receiver.deliveries if x.job_id == job]
    assert delivered == [(job, 1, 200), (job, 2, 200)]
    record("complete", d, acknowledged=2, duplicates=2)  # each webhook delivered twice


def test_complete_retry_kill(daemon, receiver):
    """Attempt 1 is answered 500; the daemon dies recording the retry. After the restart the
    job is rescued (not dead, not lost) and attempt 2 succeeds."""
    d = daemon()
    d.spawn(faulty_command("complete.retry:1"))
    d.wait_ready()
    with d.client() as c:
        r = post(c, "/createJob", hook(receiver, "fail-acked", max_retries=1))
        assert r is not None and r.status_code == 201
        job = r.json()["id"]
        receiver.gates["fail-acked"].set()
    wait_killed(d, "complete.retry")
    check_file(d.db)
    assert rows(d.db)[job]["state"] == "running"

    final = finish(d)
    assert final[job]["state"] == "succeeded", final[job]
    assert final[job]["rescues"] == 1 and final[job]["attempts"] == 2
    assert [(x.attempt, x.status) for x in receiver.deliveries] == [(1, 500), (2, 200)]
    record("complete.retry", d, acknowledged=1, duplicates=0)


# --- start-up recovery, and a job that kills the daemon every time ----------------------------

@pytest.mark.parametrize("point", ["commit.before", "commit.after"])
def test_kill_during_startup_recovery(daemon, receiver, point):
    """Commit 1 of a run is the start-up recovery of the jobs its predecessor left running.
    Killed before it commits, the next start recovers them; killed after, they are already
    queued: either way each is rescued exactly once and runs again."""
    d = daemon()
    d.start()
    with d.client() as c:
        r = c.post("/createJobs", json={"jobs": [hook(receiver, f"hold-{n}") for n in range(3)]})
        ids = [j["id"] for j in r.json()["jobs"]]
        for i in ids:
            wait_running(c, i)
    d.kill()
    receiver.release.set()
    check_file(d.db)
    d.spawn(faulty_command(f"{point}:1"))
    wait_killed(d, point)
    check_file(d.db)
    expected = ("running", 0) if point == "commit.before" else ("queued", 1)
    assert {(rows(d.db)[i]["state"], rows(d.db)[i]["rescues"]) for i in ids} == {expected}
    final = finish(d)
    for i in ids:
        assert final[i]["state"] == "succeeded" and final[i]["rescues"] == 1 and final[i]["attempts"] == 2
    record(f"start-up recovery, {point}:1", d, acknowledged=len(ids), duplicates=len(ids), kills=2)


def test_job_that_kills_the_daemon_every_time_ends_dead(daemon, receiver):
    """An attempt counts when claimed: a job whose every attempt takes the process down
    (here: killed at each completion) ends `dead` after max_retries + 1 attempts, and the
    daemon stops crash-looping."""
    d = daemon()
    d.spawn(faulty_command("complete:1"))
    d.wait_ready()
    with d.client() as c:
        r = post(c, "/createJob", hook(receiver, "acked-poison", max_retries=1))
        assert r is not None and r.status_code == 201
        job_id = r.json()["id"]
        receiver.acked.set()
    wait_killed(d, "complete")
    d.spawn(faulty_command("complete:1"))  # recovered (attempt 1 of 2 used), claimed again, killed
    wait_killed(d, "complete")
    check_file(d.db)
    assert (rows(d.db)[job_id]["attempts"], rows(d.db)[job_id]["rescues"]) == (2, 1)
    d.start(faulty_command("complete:1"))  # recovered with no attempt left: dead, nothing to run
    with d.client() as c:
        job = c.get(f"/jobs/{job_id}").json()
        assert job["state"] == "dead" and job["attempts"] == 2, job
        assert "rescued" in job["last_error"]
    assert d.stop() == 0
    check_file(d.db)
    assert rows(d.db)[job_id]["rescues"] == 2
    record("complete:1, every start (poison job)", d, acknowledged=1, duplicates=1, kills=2)


# --- drain ------------------------------------------------------------------------------------

def test_drain_kill(daemon, receiver):
    """Killed as `jqd-ctl drain` begins, with (held) jobs running: the drain is not stored
    (the restarted daemon serves), the running jobs are rescued and finish."""
    d = daemon()
    d.spawn(faulty_command("drain:1"))
    d.wait_ready()
    with d.client() as c:
        r = c.post("/createJobs", json={"jobs": [hook(receiver, f"hold-{n}") for n in range(3)]})
        ids = [j["id"] for j in r.json()["jobs"]]
        for i in ids:
            wait_running(c, i)
    result = ctl(d, "drain", "--timeout", "30")
    assert result.returncode != 0, result
    wait_killed(d, "drain")
    receiver.release.set()
    check_file(d.db)
    assert {rows(d.db)[i]["state"] for i in ids} == {"running"}

    d.start()
    with d.client() as c:
        assert c.get("/readyz").status_code == 200
        assert c.post("/createJob", json=noop()).status_code == 201
    wait_quiet(d)
    assert d.stop() == 0
    check_file(d.db)
    final = rows(d.db)
    for i in ids:
        assert final[i]["state"] == "succeeded" and final[i]["rescues"] == 1 and final[i]["attempts"] == 2
    assert all(row["state"] == "succeeded" for row in final.values())
    record("drain", d, acknowledged=len(ids) + 1, duplicates=len(ids))


# --- migrate.step -------------------------------------------------------------------------------

def build_v1_database(db: str) -> None:
    """Schema v1 as shipped (its triggers count inserts), with jobs in every state."""
    with open(os.path.join(MIGRATIONS, "0001_initial.sql")) as f:
        schema = f.read()
    conn = sqlite3.connect(db)
    conn.executescript(schema)
    conn.execute("PRAGMA user_version = 1")
    now = time.time()
    columns = "type, payload, state, queue, priority, run_at, attempts, rescues, created_at, finished_at, " \
              "idempotency_key, request_hash, lease_owner, lease_token, lease_expires_at"
    jobs = []
    for i in range(30):
        jobs.append(("noop", "{}", "queued", ("default", "mail", "reports")[i % 3], i % 10, now - 5, 0, 0,
                     now - 10, None, f"v1-{i}" if i % 4 == 0 else None, "h" if i % 4 == 0 else None,
                     None, None, None))
    for i, state in enumerate(["succeeded"] * 6 + ["dead"] * 3 + ["cancelled"] * 2):
        jobs.append(("noop", "{}", state, "default", 0, now - 60, 1, 0, now - 60, now - 30, None, None,
                     None, None, None))
    for i in range(4):  # left running by a daemon that is gone
        jobs.append(("sleep", '{"seconds": 0.01}', "running", "mail", 0, now - 20, 1, 0, now - 20, None,
                     None, None, "old-run", i + 1, now + 3600))
    conn.executemany(f"INSERT INTO jobs ({columns}) VALUES ({', '.join('?' * 15)})", jobs)
    conn.execute("UPDATE jobs SET state = 'dead' WHERE id = 1")  # a transition under the v1 trigger
    conn.commit()
    conn.close()


def test_migration_kill_on_populated_v1_database(daemon, tmp_path):
    from jqd.store.sqlite import SCHEMA_VERSION  # tests/conftest.py puts daemon/ on sys.path

    d = daemon()
    build_v1_database(d.db)
    check_file(d.db)
    before = query(d.db, "SELECT count(*) FROM jobs")[0][0]
    d.spawn(faulty_command("migrate.step:1"))
    wait_killed(d, "migrate.step")
    # The migration to v2 died between its statements: nothing of it is in the file.
    check_file(d.db)
    assert query(d.db, "PRAGMA user_version")[0][0] == 1
    assert query(d.db, "SELECT count(*) FROM sqlite_master WHERE name = 'job_counts_insert'")[0][0] == 1
    assert query(d.db, "SELECT count(*) FROM jobs")[0][0] == before

    d.start()
    assert query(d.db, "PRAGMA user_version")[0][0] == SCHEMA_VERSION
    assert query(d.db, "SELECT count(*) FROM jobs")[0][0] == before
    assert counts_drift(d.db) == {}
    with d.client() as c:
        stats = c.get("/stats").json()
        assert sum(stats["counts"].values()) == before
        # Intake on the migrated file keeps the counts exact (v2 counts inserts per batch).
        assert c.post("/createJobs", json={"jobs": [noop(), noop("v1-0")] + [
            {"type": "noop", "payload": {}, "queue": "new"}] * 3}).status_code == 409  # v1-0: other request
        assert c.post("/createJobs", json={"jobs": [noop()] + [
            {"type": "noop", "payload": {}, "queue": "new"}] * 3}).status_code == 201
    wait_quiet(d)
    assert d.stop() == 0
    check_file(d.db)
    final = rows(d.db)
    assert len(final) == before + 4
    rescued = [r for r in final.values() if r["rescues"]]
    assert len(rescued) == 4 and all(r["state"] == "succeeded" and r["attempts"] == 2 for r in rescued)
    assert sum(1 for r in final.values() if r["state"] == "queued") == 0
    record("migrate.step (v1 -> v2, populated)", d, acknowledged=before + 4, duplicates=len(rescued))


def test_migration_kill_on_fresh_database(daemon):
    """Killed in the middle of creating schema v1 on an empty file: the next start creates it."""
    d = daemon()
    d.spawn(faulty_command("migrate.step:4"))
    wait_killed(d, "migrate.step")
    if os.path.exists(d.db) and os.path.getsize(d.db) > 0:
        assert integrity(d.db) == "ok"
        assert query(d.db, "PRAGMA user_version")[0][0] == 0
    d.start()
    with d.client() as c:
        assert c.post("/createJob", json=noop()).status_code == 201
    wait_quiet(d)
    assert d.stop() == 0
    check_file(d.db)
    record("migrate.step (fresh file)", d, acknowledged=1, duplicates=0)


# --- every point under concurrent load ------------------------------------------------------

class Load:
    """Client threads submitting webhook jobs (single and batches, some keyed) until the
    daemon dies; a token is acknowledged only by a 201/200."""

    def __init__(self, url: str, hook: str, clients: int = 4, limit: int = 3000):
        self.url, self.hook, self.limit = url, hook, limit
        self.lock = threading.Lock()
        self.acked: dict[str, int] = {}
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def start(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout: float = 30) -> None:
        for t in self.threads:
            t.join(timeout)
            assert not t.is_alive(), "a client hung"

    def _job(self, token: str, keyed: bool) -> dict:
        job = {"type": "webhook", "max_retries": 5, "payload": {"url": self.hook, "json": {"token": token}}}
        if keyed:
            job["idempotency_key"] = token
        return job

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            for i in itertools.count():
                with self.lock:
                    if len(self.acked) >= self.limit:
                        return
                size = 5 if i % 3 == 0 else 1
                # every fourth token fails its first attempt: retries reach complete.retry
                tokens = [f"{'fail' if (i + k) % 4 == 0 else 'ok'}-c{n}-r{i}-j{k}" for k in range(size)]
                jobs = [self._job(t, keyed=i % 2 == 0) for t in tokens]
                r = post(c, "/createJobs", {"jobs": jobs}) if size > 1 else post(c, "/createJob", jobs[0])
                if r is None:
                    return  # the daemon died
                if r.status_code not in (200, 201):
                    with self.lock:
                        self.errors.append(f"{r.status_code}: {r.text[:200]}")
                    return
                ids = [r.json()["id"]] if size == 1 else [j["id"] for j in r.json()["jobs"]]
                with self.lock:
                    self.acked.update(zip(tokens, ids))


@pytest.mark.parametrize("crash_at", ["commit.before:40", "commit.after:40", "claim:20", "complete:30",
                                      "complete.retry:8"])
def test_kill_under_load(daemon, crash_at):
    point = crash_at.split(":")[0]
    receiver = Receiver(fails=lambda token, attempt: attempt == 1 and token.startswith("fail"))
    try:
        d = daemon()
        d.spawn(faulty_command(crash_at))
        d.wait_ready()
        load = Load(d.url, receiver.url).start()
        load.join()
        assert not load.errors, load.errors[:5]
        assert len(load.acked) < load.limit, f"{crash_at} was never reached"
        wait_killed(d, point)
        check_file(d.db)
        before = rows(d.db)
        by_token = {row["token"]: row for row in before.values()}
        for token, job_id in load.acked.items():  # every acknowledged job is in the file
            assert by_token[token]["id"] == job_id, token
        running = {i: row["rescues"] for i, row in before.items() if row["state"] == "running"}

        d.start()
        assert not receiver.wait_for(load.acked, timeout=30), "acknowledged jobs never delivered"
        wait_quiet(d)
        assert d.stop() == 0
        check_file(d.db)
        final = rows(d.db)
        assert set(final) == set(before)
        assert all(row["state"] == "succeeded" for row in final.values()), \
            [row for row in final.values() if row["state"] != "succeeded"][:5]
        for job_id, rescues in running.items():  # running at the kill: rescued, counted apart
            assert final[job_id]["rescues"] == rescues + 1, final[job_id]
        for job_id, row in final.items():
            if job_id not in running:
                assert row["rescues"] == before[job_id]["rescues"], row
        ok, _ids, _n, _failed = receiver.snapshot()
        record(f"{crash_at} under load", d, acknowledged=len(load.acked),
               lost=sum(1 for t in load.acked if t not in ok), duplicates=sum(n - 1 for n in ok.values() if n > 1))
    finally:
        receiver.close()
