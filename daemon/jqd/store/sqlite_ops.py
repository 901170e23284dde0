"""The SQLite store's named operations: plain functions of a connection, run in a thread.

Write operations run inside the writer's open transaction (one savepoint each), so they
never BEGIN or COMMIT themselves. Every transition is one statement guarded by the expected
state and, for a running job, by the lease (owner, token): a stale attempt changes nothing.
"""

from __future__ import annotations

import collections
import json
import sqlite3

import orjson

from jqd import faults
from jqd.model import Job, JobState
from jqd.store.errors import IdempotencyConflict, InvalidTransition, JobNotFound, QueueFull, StorageFull
from jqd.store.params import (
    ClaimParams, ClaimResult, CompleteParams, CompleteResult, LeaseRenewParams, ListParams,
    NewJob, Outcome, RescueResult,
)

_PRIORITIES = range(10)
_SELECT_JOB = f"SELECT {Job.COLUMNS} FROM jobs"
_RETURNING_JOB = f"RETURNING {Job.COLUMNS}"
_INSERT_JSON = (  # ?1: created_at, ?2: a JSON array of rows, inserted in array order
    "INSERT INTO jobs (type, payload, state, queue, priority, run_at, max_retries, "
    "timeout_seconds, idempotency_key, request_hash, created_at) SELECT "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(2))
    + ", 'queued', "
    + ", ".join(f"json_extract(value, '$[{i}]')" for i in range(2, 9))
    + ", ?1 FROM json_each(?2) ORDER BY key"
)


def queued_count(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT coalesce(sum(n), 0) FROM job_counts WHERE state = 'queued'").fetchone()[0]


def check_headroom(conn: sqlite3.Connection, reserve_pages: int) -> None:
    """Refuse intake while fewer than `reserve_pages` pages are left under max_page_count:
    the reserve is for claims, completions and pruning, which are what frees space."""
    cap = conn.execute("PRAGMA max_page_count").fetchone()[0]
    used = conn.execute("PRAGMA page_count").fetchone()[0] - conn.execute("PRAGMA freelist_count").fetchone()[0]
    if cap - used < reserve_pages:
        raise StorageFull("the database is full (JQD_MAX_DB_BYTES): nothing was written")


def job_insert_many(conn: sqlite3.Connection, jobs: list[NewJob], now: float,
                    max_queued: int, reserve_pages: int | None = None) -> list[tuple[Job, bool]]:
    """Insert jobs, all or none. Returns (job, created) per request, in request order;
    created is False for a replay of an idempotency key. Raises IdempotencyConflict or
    QueueFull (nothing written: the writer rolls the savepoint back).

    Runs of jobs without a key go in with one `executemany`; AUTOINCREMENT under the single
    writer gives them consecutive ids, so the rows are not read back."""
    if queued_count(conn) + len(jobs) > max_queued:
        raise QueueFull()
    if reserve_pages is not None:
        check_headroom(conn, reserve_pages)
    out: list[tuple[Job, bool]] = []
    run: list[NewJob] = []
    for new in jobs:
        if new.idempotency_key is None:
            run.append(new)
            continue
        _insert_run(conn, run, now, out)
        run = []
        row = conn.execute(f"SELECT request_hash, {Job.COLUMNS} FROM jobs WHERE idempotency_key = ?",
                           (new.idempotency_key,)).fetchone()
        if row is None:
            _insert_run(conn, [new], now, out)
        elif row[0] != new.request_hash:
            raise IdempotencyConflict(new.idempotency_key, row[1])
        else:
            out.append((Job.from_row(row[1:]), False))
    _insert_run(conn, run, now, out)
    _count_created(conn, out)
    return out


def _insert_run(conn: sqlite3.Connection, run: list[NewJob], now: float, out: list) -> None:
    """Insert a run of jobs with ONE statement over a JSON array: one SQLite step (one GIL
    hand-off) for the whole run, instead of one per row with executemany."""
    if not run:
        return
    rows = orjson.dumps([
        (new.type, new.payload_json, new.queue, new.priority, now if new.run_at is None else new.run_at,
         new.max_retries, new.timeout_seconds, new.idempotency_key, new.request_hash) for new in run])
    cursor = conn.execute(_INSERT_JSON, (now, rows))
    if cursor.rowcount != len(run):
        raise AssertionError("insert count mismatch")  # cannot happen: no ON CONFLICT clause
    first = conn.execute("SELECT last_insert_rowid()").fetchone()[0] - len(run) + 1
    for offset, new in enumerate(run):
        out.append((_created_job(first + offset, new, now), True))


def _created_job(job_id: int, new: NewJob, now: float) -> Job:
    return Job(id=job_id, type=new.type, payload=new.payload if new.payload is not None else json.loads(new.payload_json),
               state=JobState.QUEUED, queue=new.queue, priority=new.priority,
               run_at=now if new.run_at is None else new.run_at, max_retries=new.max_retries, attempts=0,
               rescues=0, timeout_seconds=new.timeout_seconds, idempotency_key=new.idempotency_key,
               last_error=None, result=None, progress=None, created_at=now, started_at=None, finished_at=None)


def _count_created(conn: sqlite3.Connection, out: list[tuple[Job, bool]]) -> None:
    per_queue = collections.Counter(job.queue for job, created in out if created)
    conn.executemany("INSERT INTO job_counts (state, queue, n) VALUES ('queued', ?, ?) "
                     "ON CONFLICT (state, queue) DO UPDATE SET n = n + excluded.n", per_queue.items())


def _claim_candidates(excluded: bool, queue_filter: bool) -> str:
    """Per priority level, an index range seek on jobs_claim: O(levels × log n)."""
    where = "state = 'queued' AND priority = {p} AND run_at <= :now"
    if excluded:
        where += " AND queue NOT IN (SELECT value FROM json_each(:excluded))"
    if queue_filter:
        where += " AND queue = :queue"
    parts = [
        f"SELECT * FROM (SELECT id, priority, run_at FROM jobs WHERE {where.format(p=p)} "
        "ORDER BY run_at, id LIMIT :limit)" for p in _PRIORITIES
    ]
    return " UNION ALL ".join(parts)


def _claim_sql(excluded: bool, queue_filter: bool) -> str:
    return (
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, started_at = :now, "
        "lease_owner = :owner, lease_token = :token, lease_expires_at = :expires, progress = NULL "
        f"WHERE id IN (SELECT id FROM ({_claim_candidates(excluded, queue_filter)}) "
        "ORDER BY priority, run_at, id LIMIT :limit) " + _RETURNING_JOB
    )


_CLAIM_SQL = {(e, q): _claim_sql(e, q) for e in (False, True) for q in (False, True)}


def job_claim(conn: sqlite3.Connection, params: ClaimParams) -> ClaimResult:
    """Claim up to `limit` due jobs in priority, run_at, id order; report the next due time."""
    limited = set(params.queue_limits)
    excluded = sorted(set(params.excluded_queues) | limited)
    base = {"now": params.now, "owner": params.owner, "token": params.token,
            "expires": params.lease_expires_at, "excluded": json.dumps(excluded)}
    rows = conn.execute(_CLAIM_SQL[(bool(excluded), False)], {**base, "limit": params.limit}).fetchall()
    if rows:
        faults.hit("claim")
    room = params.limit - len(rows)
    for queue, free in sorted(params.queue_limits.items()):
        if room <= 0:
            break
        if free <= 0 or queue in params.excluded_queues:
            continue
        more = conn.execute(_CLAIM_SQL[(False, True)],
                            {**base, "limit": min(free, room), "queue": queue}).fetchall()
        rows.extend(more)
        room -= len(more)
    jobs = sorted((Job.from_row(r) for r in rows), key=lambda j: (j.priority, j.run_at, j.id))
    next_run_at = None
    if len(jobs) < params.limit:
        blocked = sorted(set(params.excluded_queues) | {q for q, f in params.queue_limits.items() if f <= 0})
        next_run_at = conn.execute(
            "SELECT run_at FROM jobs INDEXED BY jobs_due WHERE state = 'queued' "
            "AND queue NOT IN (SELECT value FROM json_each(?)) ORDER BY run_at LIMIT 1",
            (json.dumps(blocked),)).fetchone()
        next_run_at = next_run_at[0] if next_run_at else None
    return ClaimResult(jobs=jobs, next_run_at=next_run_at)


_FENCE = "WHERE id = :id AND state = 'running' AND lease_owner = :owner AND lease_token = :token"
_CLEAR_LEASE = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"
_DEAD_IF_SPENT = "CASE WHEN attempts > max_retries THEN 'dead' ELSE 'queued' END"
_OUTCOME_SET = {
    Outcome.SUCCEEDED: "state = 'succeeded', result = o.r, finished_at = o.t, last_error = NULL",
    Outcome.FAILED: (f"state = {_DEAD_IF_SPENT}, finished_at = CASE WHEN attempts > max_retries THEN o.t END, "
                     "run_at = CASE WHEN attempts > max_retries THEN run_at ELSE o.retry END, last_error = o.e"),
    Outcome.PERMANENT: "state = 'dead', finished_at = o.t, last_error = o.e",
    Outcome.INTERRUPTED: "state = 'queued', attempts = max(attempts - 1, 0), started_at = NULL, last_error = o.e",
}
# `+jobs.state` keeps the planner off jobs_state_id: without it SQLite scanned every running
# job and, for each, the whole JSON batch (quadratic: 680 us per job at batches of 500).
# The batch drives the join instead, one rowid lookup per completion.
_COMPLETE_MANY_SQL = {
    outcome: (
        f"UPDATE jobs SET {assignments}, {_CLEAR_LEASE} FROM (SELECT "
        "json_extract(value, '$[0]') AS id, json_extract(value, '$[1]') AS owner, "
        "json_extract(value, '$[2]') AS token, json_extract(value, '$[3]') AS t, "
        "json_extract(value, '$[4]') AS r, json_extract(value, '$[5]') AS e, "
        "json_extract(value, '$[6]') AS retry FROM json_each(?)) AS o "
        "WHERE jobs.id = o.id AND +jobs.state = 'running' AND jobs.lease_owner = o.owner "
        "AND jobs.lease_token = o.token RETURNING jobs.id, jobs.state")
    for outcome, assignments in _OUTCOME_SET.items()
}


def jobs_complete_many(conn: sqlite3.Connection, batch: list[CompleteParams]) -> list[CompleteResult]:
    """Record attempts' outcomes, each only while its lease still holds: one statement per
    kind of outcome for the whole batch (the writer merges concurrent completions)."""
    if len({p.job_id for p in batch}) != len(batch):  # a stale and a fresh attempt of one job
        return [result for p in batch for result in jobs_complete_many(conn, [p])]
    written: dict[int, str] = {}
    for outcome in Outcome:
        rows = [(p.job_id, p.owner, p.token, p.now, p.result_json, p.error, p.retry_at)
                for p in batch if p.outcome is outcome]
        if rows:
            written.update(conn.execute(_COMPLETE_MANY_SQL[outcome], (orjson.dumps(rows),)).fetchall())
            faults.hit("complete.retry" if outcome is Outcome.FAILED else "complete")
    return [CompleteResult(accepted=p.job_id in written, state=written.get(p.job_id)) for p in batch]


def job_progress(conn: sqlite3.Connection, job_id: int, owner: str, token: int, progress_json: str) -> bool:
    cur = conn.execute(f"UPDATE jobs SET progress = :progress {_FENCE}",
                       {"id": job_id, "owner": owner, "token": token, "progress": progress_json})
    return cur.rowcount == 1


def _transition(conn, job_id: int, sql: str, params: tuple, action: str) -> Job:
    row = conn.execute(sql, params).fetchone()
    if row is not None:
        return Job.from_row(row)
    current = conn.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
    if current is None:
        raise JobNotFound(job_id)
    raise InvalidTransition(job_id, current[0], action)


def job_cancel(conn: sqlite3.Connection, job_id: int, now: float) -> Job:
    """queued | running -> cancelled. A running handler is then cancelled by the caller."""
    return _transition(conn, job_id, (
        f"UPDATE jobs SET state = 'cancelled', finished_at = ?, {_CLEAR_LEASE} "
        f"WHERE id = ? AND state IN ('queued', 'running') {_RETURNING_JOB}"), (now, job_id), "cancel")


def job_retry(conn: sqlite3.Connection, job_id: int, now: float) -> Job:
    """dead | cancelled -> queued, attempts reset."""
    return _transition(conn, job_id, (
        "UPDATE jobs SET state = 'queued', attempts = 0, run_at = ?, finished_at = NULL, "
        "started_at = NULL, result = NULL "
        f"WHERE id = ? AND state IN ('dead', 'cancelled') {_RETURNING_JOB}"), (now, job_id), "retry")


def lease_renew(conn: sqlite3.Connection, params: LeaseRenewParams) -> int:
    """Extend the leases of the given live attempts, in one statement."""
    if not params.jobs:
        return 0
    cur = conn.execute(
        "UPDATE jobs SET lease_expires_at = ? WHERE state = 'running' AND lease_owner = ? "
        "AND (id, lease_token) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') "
        "FROM json_each(?))",
        (params.expires_at, params.owner, json.dumps(params.jobs)))
    return cur.rowcount


def _rescue(conn, where: str, params: tuple, now: float, why: str) -> RescueResult:
    rows = conn.execute(
        "UPDATE jobs SET state = CASE WHEN attempts > max_retries THEN 'dead' ELSE 'queued' END, "
        "finished_at = CASE WHEN attempts > max_retries THEN ? END, run_at = ?, "
        f"rescues = rescues + 1, last_error = ?, {_CLEAR_LEASE} WHERE state = 'running' AND {where} "
        "RETURNING id, state", (now, now, why, *params)).fetchall()
    return RescueResult(requeued=[r[0] for r in rows if r[1] == "queued"],
                        dead=[r[0] for r in rows if r[1] == "dead"])


def jobs_recover(conn: sqlite3.Connection, owner: str, now: float) -> RescueResult:
    """At start-up: take back every job a previous daemon run left running."""
    return _rescue(conn, "lease_owner IS NOT ?", (owner,), now,
                   "rescued: the daemon that ran this attempt stopped without finishing it")


def leases_reap(conn: sqlite3.Connection, now: float) -> RescueResult:
    """Re-queue (or dead-letter) running jobs whose lease lapsed."""
    return _rescue(conn, "lease_expires_at < ?", (now,), now,
                   "rescued: the attempt's lease lapsed (visibility timeout)")


def jobs_prune(conn: sqlite3.Connection, finished_before: float, limit: int) -> int:
    """Delete finished jobs older than the retention, at most `limit` per call."""
    cur = conn.execute(
        "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs INDEXED BY jobs_finished WHERE state IN ('succeeded','dead','cancelled') "
        "AND finished_at < ? LIMIT ?)", (finished_before, limit))
    return cur.rowcount


def write_probe(conn: sqlite3.Connection, reserve_pages: int | None = None) -> None:
    """Try to write a typical job row, then roll it back: raises SQLITE_FULL (or StorageFull
    within the intake headroom) while intake could not fit, succeeds once space is back."""
    if reserve_pages is not None:
        check_headroom(conn, reserve_pages)
    conn.execute("SAVEPOINT probe")
    try:
        conn.execute("INSERT INTO jobs (type, payload, state, queue, run_at, created_at) "
                     "VALUES ('probe', ?, 'cancelled', 'probe', 0, 0)", ("0" * 2048,))
    finally:
        conn.execute("ROLLBACK TO probe")
        conn.execute("RELEASE probe")


def pause_set(conn: sqlite3.Connection, queue: str, reason: str | None, now: float) -> None:
    conn.execute("INSERT INTO pauses (queue, reason, paused_at) VALUES (?, ?, ?) "
                 "ON CONFLICT (queue) DO UPDATE SET reason = excluded.reason, paused_at = excluded.paused_at",
                 (queue, reason, now))


def pause_clear(conn: sqlite3.Connection, queue: str | None) -> None:
    """Clear one queue's pause, or every pause (queue None)."""
    if queue is None:
        conn.execute("DELETE FROM pauses")
    else:
        conn.execute("DELETE FROM pauses WHERE queue = ?", (queue,))


# --- reads (any connection) -------------------------------------------------------------

def pause_list(conn: sqlite3.Connection) -> list[tuple[str, str | None, float]]:
    return conn.execute("SELECT queue, reason, paused_at FROM pauses ORDER BY queue").fetchall()


def job_get(conn: sqlite3.Connection, job_id: int) -> Job | None:
    row = conn.execute(_SELECT_JOB + " WHERE id = ?", (job_id,)).fetchone()
    return Job.from_row(row) if row else None


def job_list(conn: sqlite3.Connection, params: ListParams) -> list[Job]:
    clauses, args = [], []
    for column in ("state", "type", "queue"):
        value = getattr(params, column)
        if value is not None:
            clauses.append(f"{column} = ?")
            args.append(value)
    if params.after is not None:
        clauses.append("id < ?")
        args.append(params.after)
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    rows = conn.execute(f"{_SELECT_JOB}{where} ORDER BY id DESC LIMIT ?", (*args, params.limit)).fetchall()
    return [Job.from_row(r) for r in rows]


def counts(conn: sqlite3.Connection) -> list[tuple[str, str, int]]:
    """(state, queue, n) for every non-empty pair."""
    return conn.execute("SELECT state, queue, n FROM job_counts WHERE n > 0 ORDER BY state, queue").fetchall()


def oldest_due(conn: sqlite3.Connection, now: float) -> float | None:
    """run_at of the oldest queued job already due (None when nothing is waiting)."""
    return conn.execute("SELECT min(run_at) FROM jobs INDEXED BY jobs_due WHERE state = 'queued' AND run_at <= ?",
                        (now,)).fetchone()[0]
