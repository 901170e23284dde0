"""The worker group: runs claimed jobs, at most `workers` at once, each attempt in its own
cancel scope with its deadline, on `workers` long-lived runner tasks.

Ownership: the dispatcher takes a slot for every job it claims (claim only for free
slots); the runner gives it back when the attempt ends. `attempts` maps job id -> live `Attempt` and
is only read by the lease keeper, the cancel endpoint and drain; the database stays the
source of truth.

Outcomes are written by one recorder task, in batches: a runner hands the attempt's outcome
over and takes the next attempt; the recorder writes everything handed over since its last write as one store
call (one statement per kind of outcome), shielded from cancellation so that shutdown cannot
lose it, and only then forgets the attempts. A job therefore stays in `attempts` (lease
renewed, drain and shutdown waiting for it) until its outcome is durable.

How an attempt ends, and what is written (fenced by the lease token):
- handler returns             -> succeeded, with its result
- handler raises PermanentError -> dead
- handler raises / times out  -> queued after backoff, or dead when no retries are left
- cancel endpoint             -> nothing (the endpoint already wrote `cancelled`)
- drain timeout / shutdown    -> queued again, attempt refunded
- lease lost (reaper rescued) -> nothing (the job was already re-queued)
"""

from __future__ import annotations

import collections
import json
import logging
import traceback

import attrs
import trio

from jqd import clock
from jqd.backoff import retry_delay
from jqd.handlers import JobContext, PermanentError, Registry, RetryAfter
from jqd.metrics import Metrics
from jqd.model import Job
from jqd.store.api import Store
from jqd.store.errors import StoreError
from jqd.store.params import CompleteParams, Outcome
from jqd.wakeup import Wakeup

log = logging.getLogger("jqd.workers")

FINAL_WRITE_TIMEOUT = 10.0  # seconds a shielded outcome write may take at most
MAX_ERROR_CHARS = 4000


@attrs.frozen
class WorkerSettings:
    workers: int  # slots in total
    queue_limits: dict  # queue -> slots
    job_timeout: float  # default seconds per attempt
    retry_base: float
    retry_max: float


@attrs.define(eq=False)
class Attempt:
    job: Job
    scope: trio.CancelScope
    stop_reason: str | None = None  # "cancelled", "interrupted", "lease_lost"; None: timeout

    def stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
        self.scope.cancel()


@attrs.frozen
class WorkerStatistics:
    workers: int
    in_flight: int
    per_queue: dict


class WorkerGroup:
    def __init__(self, store: Store, registry: Registry, settings: WorkerSettings, *, run_id: str,
                 wakeup: Wakeup, metrics: Metrics):
        self._store = store
        self._registry = registry
        self._settings = settings
        self._run_id = run_id
        self._wakeup = wakeup
        self._metrics = metrics
        self._thread_limiter = trio.CapacityLimiter(settings.workers)  # for plain-def handlers
        self._per_queue: dict[str, int] = {}  # queue -> slots taken; their sum is the slots taken
        self.attempts: dict[int, Attempt] = {}
        self._idle = trio.Event()
        self._idle.set()
        self._ready: collections.deque[Attempt] = collections.deque()  # started, not yet picked up
        self._idle_runners = trio.lowlevel.ParkingLot()
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._progress: dict[int, tuple[int, object]] = {}  # job id -> (lease token, latest value)
        self._progress_wakeup = Wakeup()
        self._outcomes: list[tuple[Attempt, CompleteParams]] = []  # handed over, not yet written
        self._outcome_wakeup = Wakeup()

    # --- what the dispatcher asks ---------------------------------------------------------
    def free_slots(self) -> int:
        return self._settings.workers - sum(self._per_queue.values())

    def queue_free_slots(self) -> dict[str, int]:
        return {q: limit - self._per_queue.get(q, 0) for q, limit in self._settings.queue_limits.items()}

    def start(self, job: Job) -> None:
        """Run a claimed job. The caller checked free_slots(); raises if there is none."""
        assert self._trio_token is not None, "WorkerGroup.run has not started"
        if self.free_slots() <= 0:
            raise RuntimeError("WorkerGroup.start without a free slot")
        deadline = trio.current_time() + (job.timeout_seconds or self._settings.job_timeout)
        attempt = Attempt(job, trio.CancelScope(deadline=deadline))
        self._per_queue[job.queue] = self._per_queue.get(job.queue, 0) + 1
        self.attempts[job.id] = attempt
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        self._ready.append(attempt)
        self._idle_runners.unpark()

    # --- what leases, cancel and drain ask ------------------------------------------------
    def leases(self) -> list[tuple[int, int]]:
        return [(a.job.id, a.job.lease_token) for a in self.attempts.values()]

    def stop(self, job_id: int, reason: str) -> bool:
        attempt = self.attempts.get(job_id)
        if attempt is None:
            return False
        attempt.stop(reason)
        return True

    def interrupt_all(self) -> list[int]:
        """Cancel every running attempt; each goes back to queued with its attempt refunded."""
        ids = sorted(self.attempts)
        for attempt in list(self.attempts.values()):
            attempt.stop("interrupted")
        return ids

    async def wait_idle(self) -> None:
        await self._idle.wait()

    async def finish_running(self, grace: float, hurry: trio.Event | None = None) -> list[int]:
        """Let running attempts finish for up to `grace` seconds (less if `hurry` is set),
        then interrupt the rest: they go back to queued with their attempt refunded.
        Returns the ids of the interrupted jobs, once their state is written."""
        with trio.move_on_after(grace):
            async with trio.open_nursery() as nursery:
                if hurry is not None:
                    nursery.start_soon(_cancel_when_set, hurry, nursery.cancel_scope)
                await self.wait_idle()
                nursery.cancel_scope.cancel()
        interrupted = self.interrupt_all()
        await self.wait_idle()
        return interrupted

    def statistics(self) -> WorkerStatistics:
        return WorkerStatistics(self._settings.workers, len(self.attempts), dict(self._per_queue))

    # --- the group --------------------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._trio_token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            for n in range(self._settings.workers):
                nursery.start_soon(self._runner, name=f"jqd worker {n}")
            nursery.start_soon(self._record_outcomes)
            task_status.started()
            await self._flush_progress()

    async def _runner(self) -> None:
        """One of `workers` long-lived tasks running attempts one after another, so that no
        task is spawned per job (a spawn was ~15 % of the event loop's time per noop job).
        A slot is taken before an attempt is queued here, so an idle runner exists for it,
        and `start` has already rescheduled that runner: even when the group is cancelled
        next, a queued attempt is picked up, its handler sees the cancellation and the
        attempt is handed over as interrupted."""
        while True:
            if not self._ready:
                await self._idle_runners.park()
                continue
            await self._run_attempt(self._ready.popleft())

    def _report_progress(self, job_id: int, value: object) -> None:
        attempt = self.attempts.get(job_id)
        if attempt is not None:
            self._progress[job_id] = (attempt.job.lease_token, value)
            self._progress_wakeup.notify()

    async def _flush_progress(self) -> None:
        """One task writes every attempt's latest progress; reports arriving meanwhile coalesce."""
        while True:
            await self._progress_wakeup.wait_until(lambda: self._progress)
            pending, self._progress = self._progress, {}
            for job_id, (token, value) in pending.items():
                try:
                    await self._store.job_progress(job_id, self._run_id, token, json.dumps(value))
                except StoreError as exc:
                    log.warning("job %d: progress not stored: %s", job_id, exc)

    async def _run_attempt(self, attempt: Attempt) -> None:
        job = attempt.job
        started = clock.now()
        self._metrics.pickup.observe(max(0.0, started - job.run_at))
        params = None
        try:
            with attempt.scope:
                params = await self._execute(job)
            if params is None and attempt.stop_reason is None:  # the deadline fired
                timeout = job.timeout_seconds or self._settings.job_timeout
                params = self._failure(job, f"timed out after {timeout:g} s", permanent=False)
        finally:
            if params is None and attempt.stop_reason in (None, "interrupted"):
                params = self._params(job, Outcome.INTERRUPTED, error="interrupted by shutdown or drain")
                self._metrics.interrupted.inc()
            self._metrics.run_time.observe(clock.now() - started, job.type)
            # Free the slot before the outcome is durable, so that the dispatcher's next claim
            # shares the outcome's commit.
            self._release_slot(attempt)
            if params is None:  # cancelled by the API or rescued: someone else wrote the state
                self._forget(attempt)
            else:
                self._outcomes.append((attempt, params))
                self._outcome_wakeup.notify()

    async def _execute(self, job: Job) -> CompleteParams:
        """Run the handler and turn its result or exception into the outcome to write.
        Cancellation (timeout, cancel, interrupt) propagates to the attempt's scope."""
        job_type = self._registry.get(job.type)
        if job_type is None:
            return self._failure(job, f"no handler for job type {job.type!r}", permanent=True)
        ctx = JobContext(id=job.id, type=job.type, payload=job.payload, attempt=job.attempts, queue=job.queue,
                         trio_token=self._trio_token, on_progress=self._report_progress)
        try:
            if job_type.is_async:
                result = await job_type.run(ctx)
            else:
                result = await trio.to_thread.run_sync(job_type.run, ctx, abandon_on_cancel=True,
                                                       limiter=self._thread_limiter)
        except PermanentError as exc:
            return self._failure(job, _describe(exc), permanent=True)
        except RetryAfter as exc:
            return self._failure(job, _describe(exc), permanent=False, delay=exc.seconds)
        except Exception as exc:
            return self._failure(job, _describe(exc), permanent=False)
        try:
            result_json = "null" if result is None else json.dumps(result)
        except (TypeError, ValueError) as exc:  # would fail the same way every time
            return self._failure(job, f"handler result is not JSON: {exc}", permanent=True)
        return self._params(job, Outcome.SUCCEEDED, result_json=result_json)

    def _params(self, job: Job, outcome: Outcome, **fields) -> CompleteParams:
        return CompleteParams(job_id=job.id, owner=self._run_id, token=job.lease_token, outcome=outcome,
                              now=clock.now(), **fields)

    def _failure(self, job: Job, error: str, *, permanent: bool, delay: float | None = None) -> CompleteParams:
        if permanent:
            return self._params(job, Outcome.PERMANENT, error=error)
        if delay is None:
            delay = retry_delay(job.attempts, self._settings.retry_base, self._settings.retry_max)
        return self._params(job, Outcome.FAILED, error=error, retry_at=clock.now() + delay)

    async def _record_outcomes(self) -> None:
        """The recorder: writes the outcomes handed over by attempts, a batch per store call.
        When cancelled (shutdown), it goes on, shielded, until every attempt's outcome is
        written: cancelled attempts hand over an `interrupted` outcome on their way out."""
        try:
            while True:
                await self._outcome_wakeup.wait_until(lambda: self._outcomes)
                await self._write_outcomes()
        finally:
            with trio.move_on_after(FINAL_WRITE_TIMEOUT, shield=True):
                while self.attempts:
                    # An attempt cancelled through the API leaves without an outcome: wake up
                    # for the group going idle too, not only for outcomes.
                    await self._outcome_wakeup.wait_until(lambda: self._outcomes or not self.attempts)
                    await self._write_outcomes()

    async def _write_outcomes(self) -> None:
        batch, self._outcomes = self._outcomes, []
        if not batch:
            return
        results, why = None, f"no answer from the store within {FINAL_WRITE_TIMEOUT:g} s"
        with trio.move_on_after(FINAL_WRITE_TIMEOUT, shield=True):
            try:
                results = await self._store.jobs_complete([params for _, params in batch])
            except StoreError as exc:
                why = str(exc)
        if results is None:
            # Leases are no longer renewed, so the reaper re-queues the jobs: at-least-once.
            log.error("outcomes of %d job(s) not stored (%s); they will be rescued when their leases lapse",
                      len(batch), why)
            results = [None] * len(batch)
        requeued = False
        for (attempt, params), result in zip(batch, results, strict=True):
            if result is not None:
                self._count_outcome(attempt.job, params, result)
                requeued = requeued or result.state == "queued"
            self._forget(attempt)
        if requeued:  # a retry's run_at, or an interrupted job, the dispatcher has not seen yet
            self._wakeup.notify()

    def _count_outcome(self, job: Job, params: CompleteParams, result) -> None:
        if not result.accepted:
            log.warning("job %d: outcome %s refused: the attempt's lease no longer holds",
                        job.id, params.outcome.value)
            return
        if params.outcome is Outcome.SUCCEEDED:
            self._metrics.succeeded.inc(1, job.type)
        elif params.outcome in (Outcome.FAILED, Outcome.PERMANENT):
            self._metrics.failed_attempts.inc(1, job.type)
            if result.state == "dead":
                self._metrics.dead.inc(1, job.type)
                log.warning("job %d (%s) is dead after %d attempt(s): %s", job.id, job.type,
                            job.attempts, params.error)

    def _release_slot(self, attempt: Attempt) -> None:
        queue = attempt.job.queue
        self._per_queue[queue] -= 1
        if not self._per_queue[queue]:
            del self._per_queue[queue]
        self._wakeup.notify()

    def _forget(self, attempt: Attempt) -> None:
        # A rescued job may already run again under a newer attempt: leave that one alone.
        if self.attempts.get(attempt.job.id) is attempt:
            del self.attempts[attempt.job.id]
            self._progress.pop(attempt.job.id, None)
        if not self.attempts:
            self._idle.set()
            self._outcome_wakeup.notify()  # a cancelled recorder may be waiting for the group to be idle


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if not isinstance(exc, (PermanentError, RetryAfter)):
        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            last = frames[-1]
            text += f" (at {last.filename}:{last.lineno})"
    return text[:MAX_ERROR_CHARS]

