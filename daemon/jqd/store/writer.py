"""The store writer: the one task that owns the SQLite write connection.

Callers hand it operations (plain functions of a connection) through a bounded channel and
wait. It takes everything waiting, runs the lot in ONE transaction in ONE worker-thread
call (each operation inside its own savepoint, so one failing operation rolls back alone),
commits (fsync, `synchronous=FULL`), and only then wakes the callers: a caller that got a
result knows it is durable. This is group commit: under load, N submissions share one fsync.

A failed COMMIT (disk full, read-only file, I/O error) fails every operation of the batch
with `StorageFull` / `StorageUnavailable`; nothing of the batch is written, and the next
batch simply tries again, so intake resumes by itself when space returns.

Cancellation: a caller cancelled while waiting does not withdraw its operation (it may
still commit). The writer is cancelled last, after every component that submits to it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TypeVar

import attrs
import trio

from jqd import faults
from jqd.store.errors import StorageFull, StorageUnavailable

log = logging.getLogger("jqd.store")
T = TypeVar("T")

MAX_BATCH = 512  # operations per transaction; bounds the latency one batch adds
QUEUE_SIZE = 4096  # pending operations before submitters wait (backpressure)


@attrs.define
class _Request:
    op: Callable[[sqlite3.Connection], object]
    done: trio.Event = attrs.field(factory=trio.Event)
    result: object = None
    error: BaseException | None = None


@attrs.frozen
class WriterStatistics:
    batches: int
    operations: int
    failed_batches: int
    writable: bool


def storage_error(exc: sqlite3.Error) -> Exception:
    """Map a SQLite failure to the error callers report (full vs unavailable)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code == sqlite3.SQLITE_FULL:
        return StorageFull("the database is full (disk or max_page_count): nothing was written")
    return StorageUnavailable(f"the database cannot be written: {exc}")


class StoreWriter:
    """`run_blocking(fn, *args)` runs SQLite work; by default in a worker thread. Unit tests
    pass an inline runner so that virtual-time tests stay deterministic."""

    def __init__(self, conn: sqlite3.Connection, run_blocking=None):
        self._conn = conn
        self._run_blocking = run_blocking
        self._send, self._receive = trio.open_memory_channel[_Request](QUEUE_SIZE)
        self._thread_limiter = trio.CapacityLimiter(1)
        self._batches = 0
        self._operations = 0
        self._failed_batches = 0
        self.writable = True  # False after a failed commit, until one succeeds

    async def submit(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Run `op` in the next group commit; return its result once durable, or raise."""
        return await self._submit(_Request(op))

    async def _submit(self, request: _Request):
        await self._send.send(request)
        await request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[return-value]

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(self._batches, self._operations, self._failed_batches, self.writable)

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        async for first in self._receive:
            batch = [first]
            while len(batch) < MAX_BATCH:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            if self._run_blocking is None:
                await trio.to_thread.run_sync(self._commit_batch, batch, limiter=self._thread_limiter)
            else:
                await self._run_blocking(self._commit_batch, batch)
            for request in batch:
                request.done.set()

    def _commit_batch(self, batch: list[_Request]) -> None:
        """Runs in the writer thread: one transaction, a savepoint per step.

        A step that finds the database full fails alone (its savepoint is rolled back) while
        SQLite keeps the transaction: claims and completions, which free space by letting
        jobs finish and be pruned, must not be starved by intake that cannot fit. Any other
        SQLite error, or a full database that cost the transaction, fails the whole batch."""
        conn = self._conn
        changes_before = conn.total_changes
        self._batches += 1
        self._operations += len(batch)
        full = False
        try:
            conn.execute("BEGIN IMMEDIATE")
            for request in batch:
                conn.execute("SAVEPOINT op")
                try:
                    request.result = request.op(conn)
                except sqlite3.OperationalError as exc:
                    if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL or not conn.in_transaction:
                        raise  # I/O error, read-only file, or the transaction is gone: all fail
                    conn.execute("ROLLBACK TO op")
                    full = True
                    request.error = storage_error(exc)
                except StorageFull as exc:  # refused by the operation itself (intake headroom)
                    conn.execute("ROLLBACK TO op")
                    full = True
                    request.error = exc
                except Exception as exc:  # an operation's own refusal: its data, not ours
                    conn.execute("ROLLBACK TO op")
                    request.error = exc
                conn.execute("RELEASE op")
            faults.hit("commit.before")
            conn.execute("COMMIT")
            faults.hit("commit.after")
        except sqlite3.Error as exc:
            self._failed_batches += 1
            if self.writable:
                log.error("store write failed, batch of %d rolled back: %s", len(batch), exc)
            self.writable = False
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rollback after a failed commit failed")
            failure = storage_error(exc)
            for request in batch:
                request.result, request.error = None, failure
            return
        if full:
            if self.writable:
                log.error("the database is full: intake answers 503 storage_full until space returns")
            self.writable = False
            return
        if not self.writable and conn.total_changes > changes_before:  # a commit that wrote something
            log.warning("store writes succeed again")
            self.writable = True
