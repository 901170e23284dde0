"""The timeout reaper: rescues running jobs whose lease lapsed, and prunes old finished jobs.

A lapsed lease means no live attempt renews it (its outcome write failed, or the loop was
stalled past the visibility timeout). The job goes back to `queued` (or `dead` when it has
used all its attempts) and its `rescues` count grows. If an attempt of this process still
runs it, that attempt is stopped: its completion would be refused by the lease fence anyway.

This is maintenance, not the hot path, so it runs on a fixed tick (`reap_interval`).
"""

from __future__ import annotations

import logging

import attrs
import trio

from jqd import clock
from jqd.metrics import Metrics
from jqd.store.api import Store
from jqd.store.errors import StorageFull, StoreError
from jqd.store.params import RescueResult
from jqd.wakeup import Wakeup
from jqd.workers import WorkerGroup

log = logging.getLogger("jqd.reaper")

PRUNE_BATCH = 1000  # finished jobs deleted per statement, so a big prune never stalls intake


@attrs.frozen
class ReapResult:
    rescued: RescueResult
    pruned: int


def log_rescue(result: RescueResult, why: str) -> None:
    if result.requeued:
        log.warning("%s: re-queued %d job(s): %s", why, len(result.requeued), result.requeued[:50])
    if result.dead:
        log.warning("%s: %d job(s) dead, no attempts left: %s", why, len(result.dead), result.dead[:50])


async def reap_once(store: Store, workers: WorkerGroup, metrics: Metrics, wakeup: Wakeup,
                    retention: float) -> ReapResult:
    """Prune first: on a full store, pruning is what frees space, so nothing may stop it."""
    now = clock.now()
    pruned = 0
    while True:
        n = await store.jobs_prune(now - retention, PRUNE_BATCH)
        pruned += n
        if n < PRUNE_BATCH:
            break
    if pruned:
        log.info("pruned %d finished job(s) older than the retention", pruned)
    rescued = await store.leases_reap(now)
    for job_id in (*rescued.requeued, *rescued.dead):
        workers.stop(job_id, "lease_lost")
    metrics.rescued.inc(len(rescued.requeued) + len(rescued.dead))
    log_rescue(rescued, "lease lapsed")
    if rescued.requeued:
        wakeup.notify()  # due again now: an idle dispatcher would not look before the next event
    if not store.writable:
        try:
            await store.write_probe()  # so /readyz turns 200 again by itself once space returns
        except StorageFull:
            pass  # still full: the writer logged it once; intake and /readyz keep saying so
    return ReapResult(rescued, pruned)


def reap_interval(visibility_timeout: float) -> float:
    return max(0.05, min(visibility_timeout / 4, 15.0))


async def run(store: Store, workers: WorkerGroup, metrics: Metrics, wakeup: Wakeup, *, visibility_timeout: float,
              retention: float, task_status=trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    while True:
        await trio.sleep(reap_interval(visibility_timeout))
        try:
            await reap_once(store, workers, metrics, wakeup, retention)
        except StoreError as exc:
            log.warning("reaper pass failed: %s", exc)
