"""The store writer: group commit, per-operation savepoints, and storage faults."""

import sqlite3

import pytest
import trio

from jqd.store import sqlite_ops as ops
from jqd.store.errors import IdempotencyConflict, StorageFull
from jqd.store.params import NewJob
from jqd.store.sqlite import open_database
from jqd.store.writer import StoreWriter


@pytest.fixture
def conn(tmp_path):
    c = open_database(str(tmp_path / "w.db"))
    yield c
    c.close()


def insert(new, now=1.0):
    return lambda c: ops.job_insert_many(c, [new], now, 10**9)


async def test_concurrent_submissions_share_commits(nursery, conn):
    writer = StoreWriter(conn)
    await nursery.start(writer.run)
    async with trio.open_nursery() as clients:
        for i in range(200):
            clients.start_soon(writer.submit, insert(NewJob("noop", "{}")))
    stats = writer.statistics()
    assert stats.operations == 200
    assert stats.batches < 200 / 4  # group commit: many submissions per transaction
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 200


async def test_a_failing_operation_rolls_back_alone(nursery, conn):
    writer = StoreWriter(conn)
    await nursery.start(writer.run)
    await writer.submit(insert(NewJob("noop", "{}", idempotency_key="k", request_hash="a")))
    results = {}

    async def submit(name, new):
        try:
            results[name] = await writer.submit(insert(new))
        except Exception as exc:
            results[name] = exc

    async with trio.open_nursery() as clients:
        clients.start_soon(submit, "conflict", NewJob("noop", "{}", idempotency_key="k", request_hash="b"))
        clients.start_soon(submit, "ok", NewJob("noop", "{}"))
    assert isinstance(results["conflict"], IdempotencyConflict)
    assert results["ok"][0][1] is True
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 2


async def test_disk_full_fails_the_batch_and_recovers_when_space_returns(nursery, conn):
    writer = StoreWriter(conn)
    await nursery.start(writer.run)
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    big = "x" * 20000
    with pytest.raises(StorageFull):
        for _ in range(20):
            await writer.submit(insert(NewJob("noop", f'{{"pad":"{big}"}}')))
    assert not writer.writable
    count = conn.execute("SELECT count(*) FROM jobs").fetchone()[0]
    # reads keep working and nothing half-written is visible
    assert all(row[0] == f'{{"pad":"{big}"}}' for row in conn.execute("SELECT payload FROM jobs"))
    conn.execute("PRAGMA max_page_count = 1000000")
    await writer.submit(insert(NewJob("noop", "{}")))
    assert writer.writable
    assert conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == count + 1


async def test_read_only_database_reports_unavailable(nursery, tmp_path):
    path = str(tmp_path / "ro.db")
    open_database(path).close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    writer = StoreWriter(ro)
    await nursery.start(writer.run)
    from jqd.store.errors import StorageUnavailable
    with pytest.raises(StorageUnavailable):
        await writer.submit(insert(NewJob("noop", "{}")))
