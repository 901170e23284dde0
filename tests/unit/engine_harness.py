"""A real engine (SQLite store, writer, worker group, dispatcher) in a test's nursery.

Time: tests run on `autojump_clock`. An autojump clock jumps whenever every task waits,
including a task waiting for a worker thread, which would model an infinitely slow disk.
So here the store runs its SQLite calls inline (`run_inline`): the same code and SQL as in
production, minus the thread hop, and virtual time is deterministic.
"""

from __future__ import annotations

import attrs
import trio

from jqd import clock
from jqd.dispatcher import Dispatcher
from jqd.handlers import JobType, Registry
from jqd.metrics import Metrics
from jqd.runstate import RunState
from jqd.store.api import ReadPool, Store
from jqd.store.params import NewJob
from jqd.store.sqlite import open_database
from jqd.store.writer import StoreWriter
from jqd.validation import canonical_json
from jqd.wakeup import Wakeup
from jqd.workers import WorkerGroup, WorkerSettings


@attrs.define
class Engine:
    store: Store
    workers: WorkerGroup
    dispatcher: Dispatcher
    state: RunState
    wakeup: Wakeup
    metrics: Metrics
    run_id: str

    async def submit(self, type_: str, payload: dict | None = None, **fields) -> int:
        new = NewJob(type=type_, payload_json=canonical_json(payload or {}), **fields)
        [(job, _)] = await self.store.jobs_insert([new], clock.now())
        self.wakeup.notify()
        return job.id

    async def job(self, job_id: int):
        return await self.store.job_get(job_id)

    async def wait_state(self, job_id: int, *states: str, step: float = 0.5):
        """Wait (in virtual time) until the job reaches one of `states`."""
        while True:
            job = await self.store.job_get(job_id)
            if job.state.value in states:
                return job
            await trio.sleep(step)


async def run_inline(fn, *args):
    """Runs SQLite work on the Trio thread (tests only), with a checkpoint like a thread hop."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


async def open_store(path: str, nursery: trio.Nursery, max_queued: int = 100_000) -> Store:
    conn = open_database(path)
    writer = StoreWriter(conn, run_blocking=run_inline)
    await nursery.start(writer.run)
    return Store(writer, ReadPool(path, run_blocking=run_inline), max_queued)


async def start_engine(nursery: trio.Nursery, db_path: str, handlers: dict, *, workers: int = 4,
                       job_timeout: float = 300.0, retry_base: float = 2.0, retry_max: float = 3600.0,
                       visibility_timeout: float = 60.0, queue_limits: dict | None = None,
                       run_id: str = "run-1", dispatch: bool = True) -> Engine:
    store = await open_store(db_path, nursery)
    registry = Registry([JobType(name, fn) for name, fn in handlers.items()])
    wakeup = Wakeup()
    metrics = Metrics()
    state = RunState(wakeup)
    group = WorkerGroup(store, registry, WorkerSettings(workers, queue_limits or {}, job_timeout, retry_base,
                                                        retry_max), run_id=run_id, wakeup=wakeup, metrics=metrics)
    dispatcher = Dispatcher(store, group, state, wakeup, run_id=run_id, visibility_timeout=visibility_timeout)
    await nursery.start(group.run)
    if dispatch:
        await nursery.start(dispatcher.run)
    return Engine(store, group, dispatcher, state, wakeup, metrics, run_id)
