"""`Store`: the narrow, named interface the daemon's components use.

Writes go through the `StoreWriter` (group commit, durable before they return); reads use a
small pool of read connections in worker threads. Nothing here touches SQLite on the Trio
thread. A PostgreSQL backend would implement the same methods with the same params objects.
"""

from __future__ import annotations

import functools
import sqlite3

import trio

from jqd.model import Job
from jqd.store import sqlite_ops as ops
from jqd.store.params import (
    ClaimParams, ClaimResult, CompleteParams, CompleteResult, LeaseRenewParams, ListParams,
    NewJob, RescueResult,
)
from jqd.store.sqlite import connect
from jqd.store.writer import StoreWriter

READERS = 4  # read connections: WAL lets them run beside the writer


class ReadPool:
    """A few read-only connections, lent one per thread call."""

    def __init__(self, path: str, size: int = READERS, run_blocking=None):
        self._path = path
        self._run_blocking = run_blocking  # see StoreWriter
        self._idle: list[sqlite3.Connection] = []
        self._limiter = trio.CapacityLimiter(size)

    async def run(self, fn, *args):
        async with self._limiter:
            conn = self._idle.pop() if self._idle else None
            if self._run_blocking is not None:
                return await self._run_blocking(self._call, conn, fn, args)
            return await trio.to_thread.run_sync(self._call, conn, fn, args)

    def _call(self, conn, fn, args):
        if conn is None:
            conn = connect(self._path)
            conn.execute("PRAGMA query_only = ON")
        try:
            return fn(conn, *args)
        finally:
            self._idle.append(conn)  # list.append is atomic; the limiter bounds the pool

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()


class Store:
    def __init__(self, writer: StoreWriter, reads: ReadPool, max_queued: int, reserve_pages: int | None = None):
        self.writer = writer
        self._reads = reads
        self._max_queued = max_queued
        self._reserve_pages = reserve_pages  # with a size cap: pages kept for processing

    @property
    def writable(self) -> bool:
        return self.writer.writable

    # --- writes: durable when they return -------------------------------------------------
    async def jobs_insert(self, jobs: list[NewJob], now: float) -> list[tuple[Job, bool]]:
        return await self.writer.submit(functools.partial(ops.job_insert_many, jobs=jobs, now=now,
                                                          max_queued=self._max_queued,
                                                          reserve_pages=self._reserve_pages))

    async def job_claim(self, params: ClaimParams) -> ClaimResult:
        return await self.writer.submit(functools.partial(ops.job_claim, params=params))

    async def jobs_complete(self, batch: list[CompleteParams]) -> list[CompleteResult]:
        """Record attempts' outcomes, each only while its lease holds; one result per params."""
        return await self.writer.submit(functools.partial(ops.jobs_complete_many, batch=batch))

    async def job_progress(self, job_id: int, owner: str, token: int, progress_json: str) -> bool:
        return await self.writer.submit(functools.partial(
            ops.job_progress, job_id=job_id, owner=owner, token=token, progress_json=progress_json))

    async def job_cancel(self, job_id: int, now: float) -> Job:
        return await self.writer.submit(functools.partial(ops.job_cancel, job_id=job_id, now=now))

    async def job_retry(self, job_id: int, now: float) -> Job:
        return await self.writer.submit(functools.partial(ops.job_retry, job_id=job_id, now=now))

    async def lease_renew(self, params: LeaseRenewParams) -> int:
        return await self.writer.submit(functools.partial(ops.lease_renew, params=params))

    async def leases_reap(self, now: float) -> RescueResult:
        return await self.writer.submit(functools.partial(ops.leases_reap, now=now))

    async def jobs_recover(self, owner: str, now: float) -> RescueResult:
        return await self.writer.submit(functools.partial(ops.jobs_recover, owner=owner, now=now))

    async def jobs_prune(self, finished_before: float, limit: int) -> int:
        return await self.writer.submit(functools.partial(ops.jobs_prune, finished_before=finished_before,
                                                          limit=limit))

    async def write_probe(self) -> None:
        """After a failed write: check whether writes succeed again (flips `writable`)."""
        await self.writer.submit(functools.partial(ops.write_probe, reserve_pages=self._reserve_pages))

    async def pause_set(self, queue: str, reason: str | None, now: float) -> None:
        await self.writer.submit(functools.partial(ops.pause_set, queue=queue, reason=reason, now=now))

    async def pause_clear(self, queue: str | None) -> None:
        await self.writer.submit(functools.partial(ops.pause_clear, queue=queue))

    # --- reads -----------------------------------------------------------------------------
    async def job_get(self, job_id: int) -> Job | None:
        return await self._reads.run(ops.job_get, job_id)

    async def job_list(self, params: ListParams) -> list[Job]:
        return await self._reads.run(ops.job_list, params)

    async def counts(self) -> list[tuple[str, str, int]]:
        return await self._reads.run(ops.counts)

    async def oldest_due(self, now: float) -> float | None:
        return await self._reads.run(ops.oldest_due, now)

    async def pause_list(self) -> list[tuple[str, str | None, float]]:
        return await self._reads.run(ops.pause_list)
