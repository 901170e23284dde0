"""Start-up: exclusive ownership of the database, refusing corrupt files untouched, bad
settings, recovery of jobs left running by a killed daemon, and crash-looping jobs."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import textwrap
import time

import pytest

from tests.integration.conftest import wait_state


def sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_second_daemon_on_the_same_db_fails_fast(start_jqd, tmp_path):
    first = start_jqd()
    started = time.monotonic()
    second = start_jqd(wait=False, JQD_CONTROL_SOCKET=str(tmp_path / "second.sock"))
    code = second.wait(15)
    assert code != 0
    assert time.monotonic() - started < 10
    assert str(first.proc.pid) in second.log, second.log  # names the holder
    assert first.db in second.log
    # The first one is unharmed.
    with first.client() as c:
        r = c.post("/createJob", json={"type": "noop", "payload": {}})
        assert r.status_code == 201
        wait_state(c, r.json()["id"], "succeeded")
    assert first.stop() == 0
    # Once the first has stopped, the database is free again.
    third = start_jqd(JQD_CONTROL_SOCKET=str(tmp_path / "third.sock"))
    with third.client() as c:
        assert c.get("/stats").json()["counts"] == {"succeeded": 1}


def make_valid_db(start_jqd, db: str, jobs: int = 400) -> None:
    d = start_jqd(db=db)
    with d.client() as c:
        r = c.post("/createJobs", json={"jobs": [
            {"type": "sleep", "payload": {"seconds": 0}, "delay_seconds": 3600} for _ in range(jobs)]})
        assert r.status_code == 201
    assert d.stop() == 0


@pytest.mark.parametrize("damage", ["random", "truncated", "zeroed_middle"])
def test_corrupt_db_is_refused_and_left_untouched(start_jqd, tmp_path, damage):
    db = str(tmp_path / "data" / "jobs.db")
    os.makedirs(os.path.dirname(db))
    if damage == "random":
        with open(db, "wb") as f:
            f.write(os.urandom(8192))
    else:
        make_valid_db(start_jqd, db)
        for leftover in (db + "-wal", db + "-shm"):
            if os.path.exists(leftover):
                os.remove(leftover)
        size = os.path.getsize(db)
        assert size > 8 * 4096, size
        if damage == "truncated":
            with open(db, "r+b") as f:
                f.truncate(size // 2)
        else:
            with open(db, "r+b") as f:
                f.seek(size // 2)
                f.write(os.urandom(3 * 4096))
    before = sha256(db)
    started = time.monotonic()
    d = start_jqd(wait=False, db=db)
    assert d.wait(15) == 1, d.log
    assert time.monotonic() - started < 10
    assert db in d.log, d.log
    assert "untouched" in d.log or "corrupt" in d.log.lower() or "integrity" in d.log, d.log
    assert "Traceback" not in d.log
    assert sha256(db) == before
    assert not os.path.exists(db + "-wal") or os.path.getsize(db + "-wal") == 0


def foreign_sqlite_db(path: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.commit()
    conn.close()


def test_a_sqlite_file_that_is_not_jqd_is_refused(start_jqd, tmp_path):
    db = str(tmp_path / "other.db")
    foreign_sqlite_db(db)
    d = start_jqd(wait=False, db=db)
    assert d.wait(15) == 1
    assert "not a jqd" in d.log, d.log
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT name FROM customers").fetchall() == [("ada",)]
        assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'jobs'").fetchone() == (0,)
    finally:
        conn.close()


def test_a_sqlite_file_that_is_not_jqd_is_left_byte_for_byte_untouched(start_jqd, tmp_path):
    db = str(tmp_path / "other.db")
    foreign_sqlite_db(db)
    before = sha256(db)
    d = start_jqd(wait=False, db=db)
    assert d.wait(15) == 1
    assert sha256(db) == before
    assert db in d.log


def test_a_db_from_a_newer_jqd_is_refused_untouched(start_jqd, tmp_path):
    db = str(tmp_path / "jobs.db")
    make_valid_db(start_jqd, db, jobs=3)
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version = 999")
    conn.close()
    before = sha256(db)
    d = start_jqd(wait=False, db=db)
    assert d.wait(15) == 1
    assert "newer" in d.log, d.log
    assert sha256(db) == before


BAD_SETTINGS = [
    ("JQD_VISIBILITY_TIMEOUT", "abc"),
    ("JQD_VISIBILITY_TIMEOUT", "0"),
    ("JQD_RETENTION", "nan"),
    ("WORKER_COUNT", "0"),
    ("JQD_BIND", "nohostport"),
]


def test_bad_setting_exits_2_naming_it(start_jqd, tmp_path):
    # All started at once: each one must fail on its own setting, before touching anything.
    daemons = [(setting, value, start_jqd(wait=False, JQD_CONTROL_SOCKET=str(tmp_path / f"s{i}.sock"),
                                          **{setting: value}))
               for i, (setting, value) in enumerate(BAD_SETTINGS)]
    for setting, value, d in daemons:
        assert d.wait(15) == 2, (setting, value, d.log)
        assert setting in d.log, (setting, value, d.log)
        assert "Traceback" not in d.log, d.log
    assert not os.path.exists(tmp_path / "jobs.db")


def test_bad_flag_exits_2(start_jqd):
    d = start_jqd("--workers", "-3", wait=False)
    assert d.wait(15) == 2
    assert "WORKER_COUNT" in d.log or "--workers" in d.log


def test_db_in_a_missing_directory(start_jqd, tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    d = start_jqd(wait=False, db=str(missing / "jobs.db"))
    assert d.wait(15) == 1
    assert str(missing) in d.log, d.log
    assert "Traceback" not in d.log
    assert not missing.exists()  # not silently created


def test_jobs_left_running_by_a_killed_daemon_are_rescued(start_jqd, tmp_path):
    d = start_jqd()
    with d.client() as c:
        job_id = c.post("/createJob", json={"type": "sleep", "payload": {"seconds": 1.5},
                                            "max_retries": 1}).json()["id"]
        running = wait_state(c, job_id, "running")
        assert running["attempts"] == 1
    d.kill()
    d2 = start_jqd(db=d.db)
    assert "re-queued 1 job(s)" in d2.log and f"[{job_id}]" in d2.log, d2.log
    with d2.client() as c:
        job = wait_state(c, job_id, {"succeeded", "dead"}, timeout=15)
        assert job["state"] == "succeeded", job
        assert job["rescues"] == 1
        assert job["attempts"] == 2
        assert job["result"] == {"slept": 1.5}
        metrics = c.get("/metrics").text
        assert "jqd_jobs_rescued_total 1.0" in metrics


def test_job_with_no_attempts_left_is_dead_after_a_crash(start_jqd):
    """A rescue counts the attempt that was running: with max_retries 0 the job is dead."""
    d = start_jqd()
    with d.client() as c:
        job_id = c.post("/createJob", json={"type": "sleep", "payload": {"seconds": 30},
                                            "max_retries": 0}).json()["id"]
        wait_state(c, job_id, "running")
    d.kill()
    d2 = start_jqd(db=d.db)
    with d2.client() as c:
        job = c.get(f"/jobs/{job_id}").json()
        assert job["state"] == "dead" and job["rescues"] == 1 and job["attempts"] == 1, job
        assert job["last_error"] and "rescued" in job["last_error"]


CRASHER = textwrap.dedent('''
    import os
    import signal

    from jqd import job_type

    @job_type("crash")
    async def crash(job):
        os.kill(os.getpid(), signal.SIGKILL)  # takes the whole daemon down, every time
''')


def test_a_job_that_kills_the_daemon_ends_dead_instead_of_crash_looping(start_jqd, tmp_path):
    (tmp_path / "crasher.py").write_text(CRASHER)
    d = start_jqd("--handlers", "crasher")
    with d.client() as c:
        # Delayed, so the 201 reaches us before the job takes the daemon down.
        r = c.post("/createJob", json={"type": "crash", "payload": {}, "max_retries": 1, "delay_seconds": 0.3})
        assert r.status_code == 201
        job_id = r.json()["id"]
    assert d.wait(15) == -9  # attempt 1
    # Restart 1: the job is rescued and claimed again (attempt 2): down again. It may die
    # before or after logging "ready", so this start is not awaited.
    d = start_jqd("--handlers", "crasher", wait=False)
    assert d.wait(20) == -9
    # Restart 2: attempts are used up: the job is dead and the daemon stays up.
    d = start_jqd("--handlers", "crasher")
    with d.client() as c:
        job = c.get(f"/jobs/{job_id}").json()
        assert job["state"] == "dead", job
        assert job["attempts"] == 2 and job["rescues"] == 2, job
        r = c.post("/createJob", json={"type": "noop", "payload": {}})
        wait_state(c, r.json()["id"], "succeeded")
    assert d.proc.poll() is None
    assert d.stop() == 0


def test_graceful_stop_requeues_without_using_an_attempt(start_jqd):
    d = start_jqd(JQD_SHUTDOWN_GRACE="0.2")
    with d.client() as c:
        job_id = c.post("/createJob", json={"type": "sleep", "payload": {"seconds": 30},
                                            "max_retries": 0}).json()["id"]
        wait_state(c, job_id, "running")
    assert d.stop() == 0
    assert str(job_id) in d.log
    conn = sqlite3.connect(d.db)
    try:
        state, attempts, rescues = conn.execute(
            "SELECT state, attempts, rescues FROM jobs WHERE id = ?", (job_id,)).fetchone()
    finally:
        conn.close()
    assert (state, attempts, rescues) == ("queued", 0, 0)


def test_db_in_a_missing_directory_says_so(start_jqd, tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    d = start_jqd(wait=False, db=str(missing / "jobs.db"))
    assert d.wait(15) == 1
    assert "does not exist" in d.log, d.log
