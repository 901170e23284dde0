"""Signals end to end: SIGTERM/SIGINT shut the real daemon down gracefully, SIGHUP is ignored.

The graceful sequence: intake closes (503 `draining`, `/readyz` 503) while HTTP keeps serving,
running jobs get JQD_SHUTDOWN_GRACE, what still runs goes back to `queued` with its attempt
refunded and its id logged, exit status 0. A second signal skips the rest of the grace.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import SLOW_CLAIM, control_status, post_once, wait_for, wait_state


def submit(c, type_: str = "noop", payload: dict | None = None, **fields) -> dict:
    r = c.post("/createJob", json={"type": type_, "payload": payload or {}, **fields})
    assert r.status_code == 201, r.text
    return r.json()


def ctl(d, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jqd_ctl", "--socket", d.socket, *args], env=d.env,
                          capture_output=True, text=True, timeout=30)


def db_job(path: str, job_id: int) -> tuple:
    """(state, attempts, rescues, lease_owner, finished_at), read from the database file itself."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT state, attempts, rescues, lease_owner, finished_at FROM jobs WHERE id = ?",
                          (job_id,)).fetchone()


def in_flight(d) -> int:
    """Jobs held by workers, from the control socket."""
    return control_status(d)["in_flight"]


def start_long_job(d, seconds: float = 60) -> dict:
    """A sleep job, once a worker runs it (attempts is then 1).

    The API shows `running` from the claim's commit, a moment before the dispatcher hands the
    job to a worker (see test_sigterm_during_a_claim_leaves_nothing_running), hence the in-flight
    check. The HTTP client is closed again: no idle keep-alive connection for the shutdown to
    wait on (see test_sigterm_is_not_held_by_an_idle_keep_alive_connection).
    """
    with d.client() as c:
        job = submit(c, "sleep", {"seconds": seconds})
        running = wait_state(c, job["id"], "running")
    wait_for(lambda: in_flight(d) == 1, 5, message="a worker to hold the job")
    assert running["attempts"] == 1, running
    return running


def wait_log(d, text: str, timeout: float = 10.0) -> None:
    try:
        wait_for(lambda: text in d.log, timeout, message=f"{text!r} in the log")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; exit status {d.proc.poll()}; log:\n{d.log}") from None


def returned_ids(log: str) -> list[int]:
    match = re.search(r"returned (\d+) interrupted job\(s\) to queued: \[([\d, ]*)\]", log)
    assert match, log
    ids = [int(x) for x in match.group(2).split(",") if x.strip()]
    assert len(ids) == int(match.group(1))
    return ids


def test_sigterm_returns_a_running_job_to_queued_with_its_attempt_refunded(start_jqd):
    d = start_jqd(JQD_SHUTDOWN_GRACE="0.5")
    job = start_long_job(d)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(15) == 0, d.log
    assert time.monotonic() - started < 5, d.log
    assert "SIGTERM: shutting down gracefully" in d.log
    assert "shutting down: 1 job(s) running, grace 0.5 s" in d.log
    assert returned_ids(d.log) == [job["id"]]
    assert "jqd stopped" in d.log
    # after exit, straight from the database: queued, the attempt refunded, no lease, no rescue
    assert db_job(d.db, job["id"]) == ("queued", 0, 0, None, None)

    d2 = start_jqd(JQD_SHUTDOWN_GRACE="0.5")
    assert "recovered after a previous run stopped" not in d2.log  # nothing was left running
    with d2.client() as c:
        again = wait_state(c, job["id"], "running")
    assert again["attempts"] == 1 and again["rescues"] == 0, again


def test_sigterm_lets_a_short_job_finish_within_the_grace(start_jqd):
    d = start_jqd(JQD_SHUTDOWN_GRACE="10")
    job = start_long_job(d, seconds=1)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.log
    elapsed = time.monotonic() - started
    assert elapsed < 8, d.log  # the job's second, not the 10 s grace
    assert "shutting down: 1 job(s) running, grace 10 s" in d.log
    assert "interrupted job(s)" not in d.log
    state, attempts, rescues, lease_owner, finished_at = db_job(d.db, job["id"])
    assert (state, attempts, rescues, lease_owner) == ("succeeded", 1, 0, None)
    assert finished_at is not None


def test_intake_answers_503_during_the_grace(start_jqd):
    d = start_jqd(JQD_SHUTDOWN_GRACE="30")
    job = start_long_job(d)
    d.signal(signal.SIGTERM)
    wait_log(d, "shutting down: 1 job(s) running")
    try:
        # HTTP still serves during the grace, but intake is closed
        code, headers, body = post_once(d, "/createJob", {"type": "noop", "payload": {}})
        assert code == 503 and body["code"] == "draining", body
        assert int(headers["retry-after"]) > 0
        code, headers, body = post_once(d, "/createJobs", {"jobs": [{"type": "noop", "payload": {}}]})
        assert code == 503 and body["code"] == "draining", body
        with d.client(headers={"Connection": "close"}) as c:
            ready = c.get("/readyz")
            assert ready.status_code == 503 and ready.json()["code"] == "draining", ready.text
            assert int(ready.headers["Retry-After"]) > 0
            assert c.get("/healthz").status_code == 200
            assert c.get(f"/jobs/{job['id']}").json()["state"] == "running"  # reads still work
            assert c.get("/stats").status_code == 200
        # the control socket answers too: the state is stopping, and a drain is refused
        r = ctl(d, "--json", "status")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["state"] == "stopping"
        r = ctl(d, "drain")
        assert r.returncode == 1 and "stopping" in r.stderr, (r.stdout, r.stderr)
        assert d.proc.poll() is None
    finally:
        d.signal(signal.SIGTERM)  # skip the rest of the 30 s grace
    assert d.wait(15) == 0, d.log
    assert returned_ids(d.log) == [job["id"]]
    with contextlib.closing(sqlite3.connect(d.db)) as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (1,)  # nothing was written


def test_second_sigterm_skips_the_grace(start_jqd):
    d = start_jqd(JQD_SHUTDOWN_GRACE="30")
    job = start_long_job(d)
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    wait_log(d, "shutting down: 1 job(s) running, grace 30 s")
    assert d.proc.poll() is None  # waiting in the grace
    d.signal(signal.SIGTERM)
    assert d.wait(10) == 0, d.log
    assert time.monotonic() - started < 5, d.log
    assert "SIGTERM again: skipping the rest of the shutdown grace" in d.log
    assert returned_ids(d.log) == [job["id"]]
    assert db_job(d.db, job["id"]) == ("queued", 0, 0, None, None)


def test_sigterm_is_not_held_by_an_idle_keep_alive_connection(start_jqd):
    d = start_jqd(JQD_SHUTDOWN_GRACE="0.5")
    with d.client() as c:  # a pooled client (a load balancer, a producer) keeps its connection open
        assert c.get("/healthz").status_code == 200
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        try:
            assert d.wait(3) == 0, d.log  # nothing runs: about 0.2 s without the connection
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {time.monotonic() - started:.1f} s after SIGTERM with nothing to wait for")
        finally:
            if d.proc.poll() is None:
                d.kill()




def test_sigterm_during_a_claim_leaves_nothing_running(start_jqd, tmp_path):
    (tmp_path / "slowclaim.py").write_text(SLOW_CLAIM)
    d = start_jqd("--handlers", "slowclaim", JQD_SHUTDOWN_GRACE="10")
    with d.client() as c:
        job = submit(c, "sleep", {"seconds": 0.3})
        wait_state(c, job["id"], "running")  # committed; the dispatcher is still waiting for it
    d.signal(signal.SIGTERM)
    assert d.wait(20) == 0, d.log
    state, attempts, _rescues, lease_owner, _ = db_job(d.db, job["id"])
    # finished in the grace, or put back (attempt refunded, id logged): never left running
    assert state in ("succeeded", "queued"), (state, attempts, lease_owner, d.log)
    assert lease_owner is None
    if state == "queued":
        assert attempts == 0 and returned_ids(d.log) == [job["id"]]


def test_sigint_shuts_down_like_sigterm(start_jqd):
    d = start_jqd(JQD_SHUTDOWN_GRACE="0.5")
    with d.client() as c:
        done = submit(c)
        wait_state(c, done["id"], "succeeded")
    job = start_long_job(d)
    d.signal(signal.SIGINT)
    assert d.wait(15) == 0, d.log
    assert "SIGINT: shutting down gracefully" in d.log
    assert "Traceback" not in d.log and "KeyboardInterrupt" not in d.log
    assert returned_ids(d.log) == [job["id"]]
    assert db_job(d.db, job["id"])[:2] == ("queued", 0)
    assert db_job(d.db, done["id"])[:2] == ("succeeded", 1)
    assert "jqd stopped" in d.log


def test_sighup_is_ignored(start_jqd):
    d = start_jqd()
    d.signal(signal.SIGHUP)
    wait_log(d, "SIGHUP ignored")
    assert d.proc.poll() is None
    with d.client() as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200  # not draining either
        job = submit(c)
        wait_state(c, job["id"], "succeeded")
    assert "shutting down" not in d.log
    assert d.stop() == 0
