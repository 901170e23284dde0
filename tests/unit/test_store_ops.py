"""The store's named operations against a real SQLite file (no fakes)."""


import pytest

from jqd.store import sqlite_ops as ops
from jqd.store.errors import IdempotencyConflict, InvalidTransition, JobNotFound, QueueFull
from jqd.store.params import ClaimParams, CompleteParams, LeaseRenewParams, ListParams, NewJob, Outcome
from jqd.store.sqlite import open_database

NOW = 1_800_000_000.0


@pytest.fixture
def conn(tmp_path):
    c = open_database(str(tmp_path / "jobs.db"))
    yield c
    c.close()


def insert(conn, *jobs, now=NOW, max_queued=1000):
    conn.execute("BEGIN")
    try:
        out = ops.job_insert_many(conn, list(jobs), now, max_queued)
    except Exception:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return out


def complete(conn, params):
    """One attempt's outcome through the daemon's batched operation."""
    return ops.jobs_complete_many(conn, [params])[0]


def claim(conn, limit, now=NOW, token=1, **kw):
    return ops.job_claim(conn, ClaimParams(limit=limit, now=now, owner="run1", token=token,
                                           lease_expires_at=now + 60, **kw))


def test_insert_assigns_increasing_ids_and_counts(conn):
    out = insert(conn, NewJob("noop", "{}"), NewJob("noop", "{}", queue="q2"))
    assert [job.id for job, _ in out] == [1, 2]
    assert all(created for _, created in out)
    assert ops.counts(conn) == [("queued", "default", 1), ("queued", "q2", 1)]


def test_ids_are_never_reused_after_prune(conn):
    [(job, _)] = insert(conn, NewJob("noop", "{}"))
    claimed = claim(conn, 1).jobs[0]
    complete(conn, CompleteParams(job.id, "run1", claimed.lease_token, Outcome.SUCCEEDED, NOW, "null"))
    assert ops.jobs_prune(conn, NOW + 1, 10) == 1
    [(again, _)] = insert(conn, NewJob("noop", "{}"))
    assert again.id == job.id + 1


def test_claim_order_priority_then_run_at_then_id(conn):
    insert(conn, NewJob("noop", "{}", priority=5), NewJob("noop", "{}", priority=0, run_at=NOW - 5),
           NewJob("noop", "{}", priority=0), NewJob("noop", "{}", priority=0, run_at=NOW + 100))
    result = claim(conn, 10)
    assert [j.id for j in result.jobs] == [2, 3, 1]
    assert result.next_run_at == NOW + 100
    assert all(j.state.value == "running" and j.attempts == 1 for j in result.jobs)


def test_claim_takes_only_the_limit_and_skips_excluded_queues(conn):
    insert(conn, *[NewJob("noop", "{}", queue="a") for _ in range(3)], NewJob("noop", "{}", queue="b"))
    result = claim(conn, 2, excluded_queues=frozenset({"a"}))
    assert [j.queue for j in result.jobs] == ["b"]
    assert claim(conn, 2, token=2).jobs.__len__() == 2


def test_claim_respects_queue_limits(conn):
    insert(conn, *[NewJob("noop", "{}", queue="limited") for _ in range(5)], NewJob("noop", "{}"))
    result = claim(conn, 10, queue_limits={"limited": 2})
    assert sorted(j.queue for j in result.jobs) == ["default", "limited", "limited"]


def test_claim_uses_index_seeks(conn):
    plan = conn.execute("EXPLAIN QUERY PLAN " + ops._CLAIM_SQL[(True, False)],
                        {"now": 1, "owner": "o", "token": 1, "expires": 1, "excluded": "[]", "limit": 3}).fetchall()
    details = " ".join(row[3] for row in plan)
    assert "USING INDEX jobs_claim (priority=? AND run_at<?)" in details
    assert "SCAN jobs" not in details


@pytest.mark.parametrize("outcome", list(Outcome))
def test_merged_completion_looks_jobs_up_by_id(conn, outcome):
    """The batch drives the join: one rowid lookup per completion, never a pass over the
    running jobs per completion (that was quadratic in the batch size)."""
    plan = conn.execute("EXPLAIN QUERY PLAN " + ops._COMPLETE_MANY_SQL[outcome], ("[]",)).fetchall()
    details = [row[3] for row in plan]
    assert details[0].startswith("SCAN json_each"), details
    assert "SEARCH jobs USING INTEGER PRIMARY KEY (rowid=?)" in details[1:], details


def test_stale_completion_is_refused(conn):
    insert(conn, NewJob("noop", "{}"))
    first = claim(conn, 1, token=1).jobs[0]
    ops.jobs_recover(conn, "run2", NOW)  # a new daemon run takes the job back
    second = ops.job_claim(conn, ClaimParams(limit=1, now=NOW, owner="run2", token=1,
                                             lease_expires_at=NOW + 60)).jobs[0]
    stale = complete(conn, CompleteParams(first.id, "run1", first.lease_token, Outcome.SUCCEEDED,
                                                  NOW, "1"))
    assert not stale.accepted
    fresh = complete(conn, CompleteParams(second.id, "run2", second.lease_token, Outcome.SUCCEEDED,
                                                  NOW, "2"))
    assert fresh.accepted and fresh.state == "succeeded"
    assert ops.job_get(conn, first.id).result == 2


def test_failure_retries_then_dies(conn):
    insert(conn, NewJob("noop", "{}", max_retries=1))
    job = claim(conn, 1).jobs[0]
    r = complete(conn, CompleteParams(job.id, "run1", job.lease_token, Outcome.FAILED, NOW,
                                              error="boom", retry_at=NOW + 5))
    assert r.state == "queued"
    assert ops.job_get(conn, job.id).run_at == NOW + 5
    job = claim(conn, 1, now=NOW + 6, token=2).jobs[0]
    assert job.attempts == 2
    r = complete(conn, CompleteParams(job.id, "run1", job.lease_token, Outcome.FAILED, NOW,
                                              error="boom", retry_at=NOW + 5))
    assert r.state == "dead"
    assert ops.job_get(conn, job.id).last_error == "boom"


def test_interrupted_refunds_the_attempt(conn):
    insert(conn, NewJob("noop", "{}"))
    job = claim(conn, 1).jobs[0]
    r = complete(conn, CompleteParams(job.id, "run1", job.lease_token, Outcome.INTERRUPTED, NOW))
    assert r.state == "queued"
    assert ops.job_get(conn, job.id).attempts == 0


def test_recover_takes_back_running_jobs_and_dead_letters_exhausted(conn):
    insert(conn, NewJob("noop", "{}", max_retries=0), NewJob("noop", "{}", max_retries=3))
    claim(conn, 2)
    result = ops.jobs_recover(conn, "run2", NOW)
    assert result.requeued == [2] and result.dead == [1]
    assert ops.job_get(conn, 2).rescues == 1


def test_reap_only_lapsed_leases_and_renew_extends(conn):
    insert(conn, NewJob("noop", "{}"), NewJob("noop", "{}"))
    jobs = claim(conn, 2).jobs
    assert ops.lease_renew(conn, LeaseRenewParams("run1", [(jobs[0].id, jobs[0].lease_token)], NOW + 500)) == 1
    result = ops.leases_reap(conn, NOW + 100)
    assert result.requeued == [jobs[1].id]


def test_idempotency_replay_and_conflict(conn):
    new = NewJob("noop", "{}", idempotency_key="k", request_hash="h1")
    [(job, created)] = insert(conn, new)
    [(again, created2)] = insert(conn, new)
    assert created and not created2 and again.id == job.id
    with pytest.raises(IdempotencyConflict):
        insert(conn, NewJob("noop", '{"x":1}', idempotency_key="k", request_hash="h2"))


def test_queue_full(conn):
    insert(conn, NewJob("noop", "{}"), max_queued=1)
    with pytest.raises(QueueFull):
        insert(conn, NewJob("noop", "{}"), max_queued=1)


def test_cancel_and_retry_transitions(conn):
    insert(conn, NewJob("noop", "{}"))
    assert ops.job_cancel(conn, 1, NOW).state.value == "cancelled"
    with pytest.raises(InvalidTransition):
        ops.job_cancel(conn, 1, NOW)
    with pytest.raises(JobNotFound):
        ops.job_cancel(conn, 99, NOW)
    job = ops.job_retry(conn, 1, NOW)
    assert job.state.value == "queued" and job.attempts == 0
    with pytest.raises(InvalidTransition):
        ops.job_retry(conn, 1, NOW)


def test_list_newest_first_with_cursor(conn):
    insert(conn, *[NewJob("noop", "{}") for _ in range(5)])
    page = ops.job_list(conn, ListParams(limit=2))
    assert [j.id for j in page] == [5, 4]
    page = ops.job_list(conn, ListParams(limit=2, after=4))
    assert [j.id for j in page] == [3, 2]


def test_counts_follow_transitions(conn):
    insert(conn, NewJob("noop", "{}"), NewJob("noop", "{}"))
    claim(conn, 1)
    assert dict(((s, q), n) for s, q, n in ops.counts(conn)) == {("queued", "default"): 1,
                                                                  ("running", "default"): 1}


def test_pauses_roundtrip(conn):
    ops.pause_set(conn, "*", "maintenance", NOW)
    ops.pause_set(conn, "email", None, NOW)
    assert ops.pause_list(conn) == [("*", "maintenance", NOW), ("email", None, NOW)]
    ops.pause_clear(conn, "email")
    assert [q for q, _, _ in ops.pause_list(conn)] == ["*"]
    ops.pause_clear(conn, None)
    assert ops.pause_list(conn) == []


def test_merged_completions_of_one_job_are_each_fenced(conn):
    """A stale and a fresh attempt of the same job completing in one group commit."""
    insert(conn, NewJob("noop", "{}"))
    first = claim(conn, 1, token=1).jobs[0]
    ops.jobs_recover(conn, "run2", NOW)
    second = ops.job_claim(conn, ClaimParams(limit=1, now=NOW, owner="run2", token=2,
                                             lease_expires_at=NOW + 60)).jobs[0]
    results = ops.jobs_complete_many(conn, [
        CompleteParams(first.id, "run1", first.lease_token, Outcome.SUCCEEDED, NOW, '"stale"'),
        CompleteParams(second.id, "run2", second.lease_token, Outcome.SUCCEEDED, NOW, '"fresh"'),
    ])
    assert [r.accepted for r in results] == [False, True]
    assert ops.job_get(conn, first.id).result == "fresh"
