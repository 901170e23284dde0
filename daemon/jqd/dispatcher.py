"""The dispatcher: claims due jobs for free worker slots and hands them to the worker group.

Event-driven: it sleeps until one of (a) a job was committed, (b) a worker slot freed,
(c) the operator resumed, (d) the earliest scheduled `run_at` comes due. There is no
polling interval on the hot path. Each claim is one store call that takes at most as many
jobs as there are free slots, in priority, run_at, id order, skipping paused queues and
queues at their own limit.

Cancelling the dispatcher ("stop fetching") never touches running jobs ("cancel work" is
the worker group's business).
"""

from __future__ import annotations

import itertools
import logging
import math

import trio

from jqd import clock
from jqd.runstate import RunState
from jqd.store.api import Store
from jqd.store.errors import StoreError
from jqd.store.params import ClaimParams
from jqd.wakeup import Wakeup
from jqd.workers import WorkerGroup

log = logging.getLogger("jqd.dispatcher")

STORE_RETRY = 1.0  # seconds to wait after a failed claim (e.g. disk full) before trying again


class Dispatcher:
    def __init__(self, store: Store, workers: WorkerGroup, state: RunState, wakeup: Wakeup, *,
                 run_id: str, visibility_timeout: float):
        self._store = store
        self._workers = workers
        self._state = state
        self._wakeup = wakeup
        self._run_id = run_id
        self._visibility_timeout = visibility_timeout
        self._tokens = itertools.count(1)
        self.loops = 0  # completed wake-ups; the watchdog checks it advances
        self.waiting = False  # True while idle, waiting for an event
        self._claim_done = trio.Event()  # set while no claim is in flight
        self._claim_done.set()

    async def wait_no_claim(self) -> None:
        """Wait until no claim is in flight. Drain and shutdown call it after they stopped
        claiming, so that a job claimed just before is counted as running, not missed."""
        await self._claim_done.wait()

    async def dispatch_once(self) -> tuple[int, float | None]:
        """Claim for the free slots and start the jobs. Returns (started, next_run_at).

        next_run_at is the wall-clock time at which more work comes due (None: unknown,
        wait for an event). A full claim returns next_run_at = now: look again at once.
        """
        free = self._workers.free_slots()
        if not self._state.dispatching or free <= 0:
            return 0, None
        queue_free = self._workers.queue_free_slots()
        now = clock.now()
        params = ClaimParams(
            limit=free, now=now, owner=self._run_id, token=next(self._tokens),
            lease_expires_at=now + self._visibility_timeout,
            excluded_queues=self._state.paused_queues | {q for q, n in queue_free.items() if n <= 0},
            queue_limits={q: n for q, n in queue_free.items() if n > 0},
        )
        self._claim_done = trio.Event()
        try:
            result = await self._store.job_claim(params)
            for job in result.jobs:
                self._workers.start(job)
        finally:
            self._claim_done.set()
        if len(result.jobs) == free:
            return len(result.jobs), now
        return len(result.jobs), result.next_run_at

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            woken = self._wakeup.arm()
            try:
                _, next_run_at = await self.dispatch_once()
            except StoreError as exc:
                log.warning("claim failed, retrying in %g s: %s", STORE_RETRY, exc)
                next_run_at = clock.now() + STORE_RETRY
            self.loops += 1
            if next_run_at is not None and next_run_at <= clock.now():
                await trio.lowlevel.checkpoint()
                continue
            deadline = math.inf if next_run_at is None else clock.to_deadline(next_run_at)
            self.waiting = True
            with trio.move_on_at(deadline):
                await woken.wait()
            self.waiting = False
