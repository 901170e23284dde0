"""Dispatcher + worker group against a real store, on a virtual clock."""

import threading

import pytest
import trio

from jqd import clock, leases, reaper
from jqd.handlers import JobType, PermanentError, Registry, RetryAfter
from jqd.runstate import GLOBAL, Mode, Pause
from jqd.store.errors import StorageFull, StorageUnavailable
from jqd.store.params import ClaimParams
from jqd.workers import FINAL_WRITE_TIMEOUT, WorkerGroup, WorkerSettings

from .engine_harness import start_engine



async def noop(job):
    return {"id": job.id, "attempt": job.attempt}


async def hang(job):
    await trio.sleep_forever()


async def test_job_runs_and_succeeds_with_its_result(nursery, tmp_path, autojump_clock):
    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"noop": noop})
    job_id = await engine.submit("noop")
    job = await engine.wait_state(job_id, "succeeded")
    assert job.result == {"id": job_id, "attempt": 1}
    assert job.attempts == 1 and job.lease_owner is None


async def test_sync_handler_runs_in_a_thread(nursery, tmp_path):
    # real clock: under autojump, waiting for the handler's thread would jump to its deadline
    def sync_handler(job):
        return {"thread": threading.current_thread() is not threading.main_thread()}

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"sync": sync_handler})
    job = await engine.wait_state(await engine.submit("sync"), "succeeded")
    assert job.result == {"thread": True}


async def test_timeouts_retry_with_backoff_then_dead(nursery, tmp_path, autojump_clock):
    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"hang": hang}, retry_base=10, retry_max=15)
    start = trio.current_time()
    job_id = await engine.submit("hang", max_retries=2, timeout_seconds=5)
    job = await engine.wait_state(job_id, "dead")
    elapsed = trio.current_time() - start
    assert job.attempts == 3
    assert "timed out after 5 s" in job.last_error
    assert 15 <= elapsed <= 15 + 10 + 15 + 5  # three timeouts plus two jittered delays (<= 10, <= 15)


async def test_permanent_error_goes_dead_at_once(nursery, tmp_path, autojump_clock):
    async def bad(job):
        raise PermanentError("no such recipient")

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"bad": bad})
    job = await engine.wait_state(await engine.submit("bad"), "dead")
    assert job.attempts == 1 and "no such recipient" in job.last_error


async def test_retry_after_sets_the_next_run(nursery, tmp_path, autojump_clock):
    seen = []

    async def later(job):
        seen.append(clock.now())
        if job.attempt == 1:
            raise RetryAfter(120)
        return "ok"

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"later": later})
    job = await engine.wait_state(await engine.submit("later"), "succeeded", step=10)
    assert job.attempts == 2
    assert seen[1] - seen[0] >= 120


async def test_generic_error_is_recorded_and_retried(nursery, tmp_path, autojump_clock):
    async def flaky(job):
        if job.attempt < 3:
            raise ConnectionError("refused")
        return job.attempt

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"flaky": flaky}, retry_base=1)
    job = await engine.wait_state(await engine.submit("flaky"), "succeeded")
    assert job.result == 3 and job.attempts == 3


async def test_scheduled_job_waits_for_its_run_at_without_spinning(nursery, tmp_path, autojump_clock):
    started = []

    async def record(job):
        started.append(clock.now())

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"record": record})
    run_at = clock.now() + 3600
    loops_before = engine.dispatcher.loops
    job_id = await engine.submit("record", run_at=run_at)
    await engine.wait_state(job_id, "succeeded", step=60)
    assert started[0] >= run_at
    assert engine.dispatcher.loops - loops_before <= 6  # woken by events and the due time, not polling


async def test_claims_only_as_many_jobs_as_free_slots(nursery, tmp_path, autojump_clock):
    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"hang": hang}, workers=2)
    ids = [await engine.submit("hang") for _ in range(5)]
    await trio.sleep(1)
    states = [(await engine.job(i)).state.value for i in ids]
    assert states.count("running") == 2 and states.count("queued") == 3
    assert engine.workers.free_slots() == 0


async def test_per_queue_limit(nursery, tmp_path, autojump_clock):
    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"hang": hang}, workers=5,
                                queue_limits={"slow": 1})
    slow = [await engine.submit("hang", queue="slow") for _ in range(3)]
    fast = [await engine.submit("hang") for _ in range(2)]
    await trio.sleep(1)
    assert [(await engine.job(i)).state.value for i in slow].count("running") == 1
    assert [(await engine.job(i)).state.value for i in fast] == ["running", "running"]


async def test_priority_order_when_slots_free_up(nursery, tmp_path, autojump_clock):
    order = []
    gate = trio.Event()

    async def record(job):
        await gate.wait()
        order.append(job.payload["n"])

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"record": record}, workers=1)
    engine.state.set_pause(None, Pause("test", clock.now()))
    for n, priority in [(1, 5), (2, 0), (3, 9), (4, 0)]:
        await engine.submit("record", {"n": n}, priority=priority)
    engine.state.clear_pause(None)
    gate.set()
    await trio.sleep(5)
    assert order == [2, 4, 1, 3]


async def test_global_and_queue_pause(nursery, tmp_path, autojump_clock):
    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"noop": noop})
    engine.state.set_pause(None, Pause(None, clock.now()))
    job_id = await engine.submit("noop")
    await trio.sleep(10)
    assert (await engine.job(job_id)).state.value == "queued"
    engine.state.set_pause("mail", Pause(None, clock.now()))
    engine.state.clear_pause(GLOBAL)
    mail_id = await engine.submit("noop", queue="mail")
    await engine.wait_state(job_id, "succeeded")
    assert (await engine.job(mail_id)).state.value == "queued"
    engine.state.clear_pause("mail")
    await engine.wait_state(mail_id, "succeeded")


async def test_finish_running_interrupts_and_refunds_the_attempt(nursery, tmp_path, autojump_clock):
    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"hang": hang})
    job_id = await engine.submit("hang")
    await engine.wait_state(job_id, "running")
    engine.state.set_mode(Mode.STOPPING)
    returned = await engine.workers.finish_running(grace=5)
    job = await engine.job(job_id)
    assert returned == [job_id]
    assert job.state.value == "queued" and job.attempts == 0 and job.rescues == 0


async def test_cancelled_worker_group_writes_every_outcome(nursery, tmp_path, autojump_clock):
    """The group's nursery is cancelled (a crashing sibling) while one attempt runs and another
    was handed over but not yet picked up by a runner: both go back to queued, refunded."""
    engine = await start_engine(nursery, str(tmp_path / "j.db"), {}, dispatch=False)
    ids = [await engine.submit("hang") for _ in range(2)]
    group = WorkerGroup(engine.store, Registry([JobType("hang", hang)]), WorkerSettings(4, {}, 300.0, 2.0, 60.0),
                        run_id=engine.run_id, wakeup=engine.wakeup, metrics=engine.metrics)
    async with trio.open_nursery() as inner:
        await inner.start(group.run)
        now = clock.now()
        claimed = await engine.store.job_claim(ClaimParams(limit=2, now=now, owner=engine.run_id, token=1,
                                                           lease_expires_at=now + 60))
        group.start(claimed.jobs[0])
        await trio.sleep(1)
        group.start(claimed.jobs[1])
        assert [a.job.id for a in group._ready] == [ids[1]]  # no runner has taken it yet
        inner.cancel_scope.cancel()
    assert not group.attempts and engine.metrics.interrupted.value() == 2
    for job_id in ids:
        job = await engine.job(job_id)
        assert job.state.value == "queued" and job.attempts == 0, job


async def test_cancelled_group_does_not_wait_for_an_attempt_that_writes_nothing(nursery, tmp_path, autojump_clock):
    """An attempt cancelled through the API hands over no outcome (the endpoint wrote
    `cancelled`); when it ends during the group's cancellation, the recorder must notice the
    group is idle instead of waiting for an outcome until FINAL_WRITE_TIMEOUT."""
    async def slow_to_stop(job):
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1)

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {}, dispatch=False)
    job_id = await engine.submit("slow")
    group = WorkerGroup(engine.store, Registry([JobType("slow", slow_to_stop)]), WorkerSettings(4, {}, 300.0, 2.0, 60.0),
                        run_id=engine.run_id, wakeup=engine.wakeup, metrics=engine.metrics)
    async with trio.open_nursery() as inner:
        await inner.start(group.run)
        now = clock.now()
        claimed = await engine.store.job_claim(ClaimParams(limit=1, now=now, owner=engine.run_id, token=1,
                                                           lease_expires_at=now + 60))
        group.start(claimed.jobs[0])
        await trio.sleep(1)
        await engine.store.job_cancel(job_id, clock.now())
        assert group.stop(job_id, "cancelled")
        inner.cancel_scope.cancel()
        cancelled_at = trio.current_time()
    assert trio.current_time() - cancelled_at < FINAL_WRITE_TIMEOUT / 2
    assert not group.attempts and (await engine.job(job_id)).state.value == "cancelled"


async def test_outcome_that_cannot_be_written_is_rescued_and_run_again(nursery, tmp_path, autojump_clock):
    """The store refuses a batch of outcomes (disk full, I/O error): the attempts are let go,
    their leases are no longer renewed, and the reaper re-queues the job, which runs again:
    at-least-once, nothing lost."""
    runs = []

    async def counted(job):
        runs.append(job.attempt)
        return "ok"

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"counted": counted}, visibility_timeout=5)
    real = engine.store.jobs_complete
    failures = []

    async def refuse_once(batch):
        if not failures:
            failures.append(len(batch))
            raise StorageUnavailable("the database cannot be written: disk I/O error")
        return await real(batch)

    engine.store.jobs_complete = refuse_once
    nursery.start_soon(leases.run, engine.store, engine.workers, engine.run_id, 5.0)
    job_id = await engine.submit("counted")
    await trio.sleep(1)
    assert failures == [1] and not engine.workers.attempts  # let go, still `running` in the store
    assert (await engine.job(job_id)).state.value == "running"
    await trio.sleep(10)  # past the lease
    await reaper.reap_once(engine.store, engine.workers, engine.metrics, engine.wakeup, retention=1e9)
    with trio.fail_after(60):  # the rescued job must be picked up without another event
        job = await engine.wait_state(job_id, "succeeded")
    assert runs == [1, 2] and job.rescues == 1 and job.result == "ok"


async def test_finish_running_lets_short_jobs_finish(nursery, tmp_path, autojump_clock):
    async def short(job):
        await trio.sleep(2)
        return "done"

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"short": short})
    job_id = await engine.submit("short")
    await engine.wait_state(job_id, "running", step=0.1)
    assert await engine.workers.finish_running(grace=30) == []
    assert (await engine.job(job_id)).state.value == "succeeded"


async def test_cancelling_a_running_job_cancels_its_handler(nursery, tmp_path, autojump_clock):
    cancelled = trio.Event()

    async def watched(job):
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"watched": watched})
    job_id = await engine.submit("watched")
    await engine.wait_state(job_id, "running", step=0.1)
    await engine.store.job_cancel(job_id, clock.now())
    assert engine.workers.stop(job_id, "cancelled")
    await cancelled.wait()
    await engine.workers.wait_idle()
    job = await engine.job(job_id)
    assert job.state.value == "cancelled" and job.finished_at is not None


async def test_stale_attempt_completion_is_refused(nursery, tmp_path, autojump_clock):
    """Run 1's attempt is still going when run 2 takes the job back and runs it again:
    run 1's late success must not overwrite run 2's outcome."""
    release = trio.Event()

    async def slow(job):
        await release.wait()
        return "from run 1"

    db = str(tmp_path / "j.db")
    engine = await start_engine(nursery, db, {"slow": slow})
    job_id = await engine.submit("slow")
    await engine.wait_state(job_id, "running", step=0.1)
    # run 2 recovers the job (as at its start-up) and claims it under its own lease
    await engine.store.jobs_recover("run-2", clock.now())
    now = clock.now()
    claim = await engine.store.job_claim(ClaimParams(limit=1, now=now, owner="run-2", token=1,
                                                     lease_expires_at=now + 60))
    assert [j.id for j in claim.jobs] == [job_id]
    release.set()
    await engine.workers.wait_idle()
    job = await engine.job(job_id)
    assert job.state.value == "running" and job.lease_owner == "run-2"
    assert job.result is None and job.rescues == 1


async def test_lease_keeper_renews_live_attempts_and_reaper_rescues_lapsed(nursery, tmp_path, autojump_clock):
    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"hang": hang}, visibility_timeout=30)
    live = await engine.submit("hang")
    await engine.wait_state(live, "running", step=0.1)
    # an orphan: claimed under this run but with no live attempt (e.g. its outcome write failed)
    engine.state.set_pause(None, Pause(None, clock.now()))
    orphan = await engine.submit("hang")
    now = clock.now()
    await engine.store.job_claim(ClaimParams(limit=1, now=now, owner="run-1", token=99,
                                             lease_expires_at=now + 30))
    nursery.start_soon(leases.run, engine.store, engine.workers, "run-1", 30.0)
    await trio.sleep(100)  # many renewal ticks, past the orphan's lease
    result = await reaper.reap_once(engine.store, engine.workers, engine.metrics, engine.wakeup, retention=1e9)
    assert result.rescued.requeued == [orphan]
    assert (await engine.job(live)).state.value == "running"
    orphan_job = await engine.job(orphan)
    assert orphan_job.state.value == "queued" and orphan_job.rescues == 1 and orphan_job.attempts == 1


async def test_reaper_prunes_finished_jobs_past_retention(nursery, tmp_path, autojump_clock):
    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"noop": noop})
    job_id = await engine.submit("noop")
    await engine.wait_state(job_id, "succeeded")
    await trio.sleep(50)
    result = await reaper.reap_once(engine.store, engine.workers, engine.metrics, engine.wakeup, retention=40)
    assert result.pruned == 1 and await engine.job(job_id) is None


async def test_reaper_prunes_while_the_store_is_full(nursery, tmp_path, autojump_clock):
    """Pruning is what frees space on a full store: a failing write probe must not stop it
    (it did, and a full store whose jobs had all finished stayed full for good)."""
    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"noop": noop})
    job_id = await engine.submit("noop")
    await engine.wait_state(job_id, "succeeded")
    await trio.sleep(50)
    probes = []

    async def still_full():
        probes.append(clock.now())
        raise StorageFull("the database is full (JQD_MAX_DB_BYTES): nothing was written")

    engine.store.writer.writable = False
    engine.store.write_probe = still_full
    result = await reaper.reap_once(engine.store, engine.workers, engine.metrics, engine.wakeup, retention=40)
    assert result.pruned == 1 and await engine.job(job_id) is None
    assert engine.store.writable and not probes  # the prune's own commit proved writes work
    # Still full and nothing to prune: the pass probes (so /readyz learns when space returns)
    # and a failing probe is not an error of the pass.
    engine.store.writer.writable = False
    result = await reaper.reap_once(engine.store, engine.workers, engine.metrics, engine.wakeup, retention=40)
    assert result.pruned == 0 and len(probes) == 1 and not engine.store.writable


@pytest.mark.parametrize("yields", [0, 3], ids=["back_to_back", "during_the_write"])
async def test_progress_is_stored(nursery, tmp_path, autojump_clock, yields):
    """Reports back to back coalesce; a report that arrives while the flusher writes the
    previous one is stored too (the flusher once re-armed its wake-up after the write and
    missed it until a third report)."""
    gate = trio.Event()

    async def progressing(job):
        job.progress({"done": 1})
        for _ in range(yields):
            await trio.sleep(0)  # the flusher takes {"done": 1} and starts writing it
        job.progress({"done": 2})
        await gate.wait()

    engine = await start_engine(nursery, str(tmp_path / "j.db"), {"p": progressing})
    job_id = await engine.submit("p")
    await trio.sleep(5)
    assert (await engine.job(job_id)).progress == {"done": 2}
    gate.set()
    await engine.wait_state(job_id, "succeeded")
