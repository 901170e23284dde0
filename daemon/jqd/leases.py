"""The lease keeper: renews the leases of the attempts that are alive in this process.

Only live attempts are renewed, in one statement per tick, so a job whose outcome could not
be written (e.g. the disk was full) lets its lease lapse and the reaper rescues it. Renewing
every third of the visibility timeout tolerates two missed ticks.
"""

from __future__ import annotations

import logging

import trio

from jqd import clock
from jqd.store.api import Store
from jqd.store.errors import StoreError
from jqd.store.params import LeaseRenewParams
from jqd.workers import WorkerGroup

log = logging.getLogger("jqd.leases")


async def renew_once(store: Store, workers: WorkerGroup, run_id: str, visibility_timeout: float) -> int:
    leases = workers.leases()
    if not leases:
        return 0
    return await store.lease_renew(LeaseRenewParams(owner=run_id, jobs=leases,
                                                    expires_at=clock.now() + visibility_timeout))


async def run(store: Store, workers: WorkerGroup, run_id: str, visibility_timeout: float, *,
              task_status=trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    while True:
        await trio.sleep(visibility_timeout / 3)
        try:
            await renew_once(store, workers, run_id, visibility_timeout)
        except StoreError as exc:
            log.warning("lease renewal failed: %s", exc)
