"""Storage faults against the real jqd: a file that cannot be written, a WAL deleted by an
operator, a real full file system.

- (a) The database and its WAL made unwritable at runtime. `chmod 0444` changes nothing
  for a process that already holds the files open (and root ignores modes anyway), so the
  files are made immutable with `chattr +i` (needs root / CAP_LINUX_IMMUTABLE and a file
  system with the flag; skipped otherwise): writes fail with EPERM, which SQLite reports as a
  disk I/O error. POST /createJob must answer 503 `storage_unavailable` with `Retry-After`,
  reads keep working, /readyz says 503, and intake resumes by itself once the flag is removed.
  The `-shm` file is left alone: it is memory-mapped, and a write fault on an immutable
  mapped page is SIGBUS, which kills any SQLite process (see docs/RELIABILITY.md).
- (b) The WAL deleted while the daemon is down: after a SIGKILL (the acknowledged jobs are
  only in the WAL: deleting it deletes them, SQLite's documented behaviour; jqd must start
  cleanly or refuse clearly, never crash), and after a graceful stop (the WAL was checkpointed
  and removed on close: nothing may be lost).
- (c) A missing data directory: tests/integration/test_startup.py (test_db_in_a_missing_directory*).
- (d) Disk full: tests/integration/test_http_errors.py covers JQD_MAX_DB_BYTES; here a real
  2 MiB tmpfs (needs root and mount; skipped otherwise) is filled by the database and a
  ballast file: 503 `storage_full`, reads work, and intake resumes after the ballast is deleted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import httpx
import pytest

from tests.chaos.chaoslib import DaemonExited, JqdProcess, poll, query

NOOP = {"type": "noop", "payload": {}}


def _chattr(flag: str, *paths: str) -> subprocess.CompletedProcess:
    return subprocess.run(["chattr", flag, *paths], capture_output=True, text=True)


def _try_create(c: httpx.Client, body=NOOP):
    r = c.post("/createJob", json=body)
    return r if r.status_code == 201 else None


# --- (a) read-only at runtime ---------------------------------------------------------------

def test_unwritable_database_answers_503_then_recovers(tmp_path):
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) not installed: cannot make the files unwritable for root")
    if os.geteuid() != 0:
        pytest.skip("not root: chattr +i needs CAP_LINUX_IMMUTABLE; chmod does not affect open files")
    d = JqdProcess(str(tmp_path), env=dict(WORKER_COUNT="2", JQD_VISIBILITY_TIMEOUT="2"))
    d.start()
    files = [d.db, d.db + "-wal"]
    try:
        with d.client() as c:
            first = c.post("/createJob", json=NOOP)
            assert first.status_code == 201
            done = _chattr("+i", *files)
            if done.returncode != 0:
                pytest.skip(f"chattr +i failed on this file system: {done.stderr.strip()}")
            answers = [c.post("/createJob", json=NOOP) for _ in range(3)]
            for r in answers:
                assert r.status_code == 503, r.text
                assert r.json()["code"] == "storage_unavailable", r.text
                assert float(r.headers["Retry-After"]) > 0
            batch = c.post("/createJobs", json={"jobs": [NOOP, NOOP]})
            assert batch.status_code == 503 and batch.json()["code"] == "storage_unavailable", batch.text
            # Reads keep working; readiness says the store cannot take writes.
            assert c.get(f"/jobs/{first.json()['id']}").status_code == 200
            stats = c.get("/stats").json()
            assert stats["writable"] is False, stats
            assert c.get("/jobs").status_code == 200
            assert c.get("/metrics").status_code == 200
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 503
            time.sleep(1.0)  # several reaper ticks with the store unwritable: still alive
            assert d.proc.poll() is None, d.log_tail()
            _chattr("-i", *files)
            r = poll(lambda: _try_create(c), timeout=10, interval=0.1, message="intake to resume")
            poll(lambda: c.get("/readyz").status_code == 200, timeout=10, message="/readyz to turn 200")
            poll(lambda: c.get(f"/jobs/{r.json()['id']}").json()["state"] == "succeeded", timeout=10,
                 message="the new job to run")
            assert c.get("/stats").json()["writable"] is True
        assert "storage" in d.log() or "cannot be written" in d.log()
        assert d.stop() == 0, d.log_tail()
    finally:
        _chattr("-i", *files)
    # Nothing half-written: the refused requests left no row.
    assert query(d.db, "SELECT count(*) FROM jobs")[0][0] == 2


# --- (b) the WAL deleted while the daemon is down ----------------------------------------------

def _submit(d: JqdProcess, n: int) -> list[int]:
    with d.client() as c:
        ids = [c.post("/createJob", json={"type": "sleep", "payload": {"seconds": 0}, "delay_seconds": 3600})
               .json()["id"] for _ in range(n)]
        batch = c.post("/createJobs", json={"jobs": [{"type": "noop", "payload": {}, "delay_seconds": 3600}] * 10})
        assert batch.status_code == 201
        return ids + [j["id"] for j in batch.json()["jobs"]]


def _restart_outcome(d: JqdProcess) -> tuple[str, str]:
    """('ready', '') or ('exited N', log tail): how the daemon takes the damaged file."""
    d.spawn()
    try:
        d.wait_ready(20)
        return "ready", ""
    except DaemonExited as exc:
        return f"exited {exc.code}", d.log_tail(1500)


def test_wal_deleted_after_sigkill_starts_cleanly_and_loses_only_what_was_in_it(tmp_path):
    d = JqdProcess(str(tmp_path), env=dict(WORKER_COUNT="2"))
    d.start()
    acked = _submit(d, 20)
    d.kill()
    wal = d.db + "-wal"
    assert os.path.getsize(wal) > 0, "expected the acknowledged jobs to be in the WAL"
    db_size = os.path.getsize(d.db)
    os.remove(wal)
    if os.path.exists(d.db + "-shm"):
        os.remove(d.db + "-shm")
    outcome, tail = _restart_outcome(d)
    assert "Traceback" not in d.log(), d.log_tail()
    if outcome == "ready":
        with d.client() as c:
            present = [i for i in acked if c.get(f"/jobs/{i}").status_code == 200]
            r = c.post("/createJob", json=NOOP)
            assert r.status_code == 201, r.text
            new_id = r.json()["id"]
        print(f"\nWAL deleted after SIGKILL: db file {db_size} bytes before; restarted cleanly; "
              f"{len(present)} of {len(acked)} acknowledged jobs present; next id {new_id} "
              f"(ids acknowledged before: {min(acked)}..{max(acked)})")
        assert d.stop() == 0
    else:
        assert outcome == "exited 1", (outcome, tail)
        print(f"\nWAL deleted after SIGKILL: refused at start ({outcome}):\n{tail}")


def test_wal_deleted_after_graceful_stop_loses_nothing(tmp_path):
    d = JqdProcess(str(tmp_path), env=dict(WORKER_COUNT="2"))
    d.start()
    acked = _submit(d, 20)
    assert d.stop() == 0
    wal = d.db + "-wal"
    if os.path.exists(wal):  # checkpointed and removed on close: normally gone already
        os.remove(wal)
    d.start()
    with d.client() as c:
        missing = [i for i in acked if c.get(f"/jobs/{i}").status_code != 200]
        assert missing == [], f"{len(missing)} acknowledged job(s) lost: {missing[:10]}"
        assert c.post("/createJob", json=NOOP).json()["id"] > max(acked)
    assert d.stop() == 0


# --- (d) a real full file system ------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real small file system needs root and mount(8)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {r.stderr.strip()}")
    yield mnt
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_real_enospc_answers_storage_full_then_recovers(small_fs):
    d = JqdProcess(str(small_fs), env=dict(WORKER_COUNT="2", JQD_VISIBILITY_TIMEOUT="2",
                                           JQD_WEBHOOK_ALLOWED_HOSTS="127.0.0.1"))
    d.log_path = str(small_fs.parent / "jqd.log")  # the log must not compete for the space
    d.start()
    ballast = small_fs / "ballast"
    try:
        with d.client() as c:
            # Leave ~900 KiB for the database to grow into, then fill it with jobs.
            free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
            with open(ballast, "wb") as f:
                f.write(b"\0" * max(0, free - 900 * 1024))
            job = {"type": "webhook", "payload": {"url": "http://127.0.0.1:9/never", "json": {"pad": "x" * 2000}}}
            acked: list[int] = []
            for _ in range(2000):
                r = c.post("/createJob", json={**job, "delay_seconds": 3600})
                if r.status_code != 201:
                    break
                acked.append(r.json()["id"])
            assert r.status_code == 503, r.text
            assert r.json()["code"] == "storage_full", r.text
            assert float(r.headers["Retry-After"]) > 0
            assert len(acked) > 5
            # Reads work; the process is alive; readiness says no.
            assert c.get(f"/jobs/{acked[-1]}").status_code == 200
            assert c.get("/stats").json()["counts"].get("queued") == len(acked)
            assert c.get("/healthz").status_code == 200
            assert c.get("/readyz").status_code == 503
            # Space returns: intake resumes by itself.
            os.remove(ballast)
            new = poll(lambda: _try_create(c, {**job, "delay_seconds": 3600}), timeout=10, interval=0.1,
                       message="intake to resume after the ballast was deleted")
            poll(lambda: c.get("/readyz").status_code == 200, timeout=10, message="/readyz to turn 200")
            missing = [i for i in acked if c.get(f"/jobs/{i}").status_code != 200]
            assert missing == [], missing[:10]
            assert new.json()["id"] > max(acked)
        assert d.proc.poll() is None
        print(f"\ntmpfs 2 MiB: {len(acked)} jobs acknowledged before 503 storage_full; recovered after the "
              f"ballast was deleted")
    finally:
        if ballast.exists():
            ballast.unlink()
        assert d.stop() == 0, d.log_tail()
