"""Custom job types from `--handlers`: async and thread handlers, results, progress, permanent
and retryable failures, RetryAfter, payload validators, timeouts, and a module that is missing."""

from __future__ import annotations

import textwrap
import time

import pytest

from tests.integration.conftest import wait_for, wait_state

MODULE = textwrap.dedent('''
    """Handlers for the integration tests."""
    import os
    import threading
    import time

    import trio

    from jqd import PermanentError, RetryAfter, job_type
    from jqd.handlers import PayloadError

    RETRY_TIMES = {}

    @job_type("async_ok")
    async def async_ok(job):
        job.progress({"stage": "halfway", "done": 0.5})
        # Wait for the test's go-ahead (a file), so it can watch the progress while running.
        while not os.path.exists(job.payload["go"]):
            await trio.sleep(0.01)
        return {"id": job.id, "attempt": job.attempt, "echo": job.payload["echo"], "type": job.type}

    @job_type("sync_ok")
    def sync_ok(job):
        job.progress({"in_thread": True})
        return {"sum": job.payload["a"] + job.payload["b"],
                "main_thread": threading.current_thread() is threading.main_thread()}

    @job_type("perm")
    async def perm(job):
        raise PermanentError("the widget is gone for good")

    @job_type("flaky")
    def flaky(job):
        raise ValueError(f"boom on attempt {job.attempt}")

    @job_type("later")
    async def later(job):
        RETRY_TIMES.setdefault(job.id, []).append(time.monotonic())
        if job.attempt < 3:
            raise RetryAfter(0.3)
        times = RETRY_TIMES[job.id]
        return {"attempt": job.attempt, "gaps": [b - a for a, b in zip(times, times[1:])]}

    @job_type("slow")
    async def slow(job):
        await trio.sleep(30)

    @job_type("slow_sync")
    def slow_sync(job):
        time.sleep(1.0)  # a thread cannot be interrupted; the attempt is abandoned at its deadline

    @job_type("unjson")
    async def unjson(job):
        return {"a set": {1, 2}}

    def check_widget(payload):
        if not isinstance(payload.get("n"), int) or payload["n"] < 0:
            raise PayloadError("'n' must be a non-negative integer")

    @job_type("validated", validate=check_widget)
    async def validated(job):
        return {"n": job.payload["n"] * 2}
''')


@pytest.fixture
def daemon(start_jqd, tmp_path):
    (tmp_path / "mymod.py").write_text(MODULE)
    return start_jqd("--handlers", "mymod", JQD_RETRY_BASE="0.01", JQD_RETRY_MAX="0.05")


def submit(c, type_: str, payload: dict | None = None, **options) -> int:
    r = c.post("/createJob", json={"type": type_, "payload": payload or {}, **options})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_async_handler_result_and_progress(daemon, tmp_path):
    go = tmp_path / "go"
    with daemon.client() as c:
        job_id = submit(c, "async_ok", {"go": str(go), "echo": [1, "two"]})
        running = wait_for(lambda: (j := c.get(f"/jobs/{job_id}").json())["progress"] and j,
                           message="progress to be stored")
        assert running["state"] == "running"
        assert running["progress"] == {"stage": "halfway", "done": 0.5}
        go.touch()
        job = wait_state(c, job_id, {"succeeded", "dead"})
        assert job["state"] == "succeeded", job
        assert job["result"] == {"id": job_id, "attempt": 1, "echo": [1, "two"], "type": "async_ok"}
        assert job["attempts"] == 1 and job["last_error"] is None
        assert job["started_at"] and job["finished_at"]


def test_thread_handler_result(daemon):
    with daemon.client() as c:
        job = wait_state(c, submit(c, "sync_ok", {"a": 2, "b": 40}), {"succeeded", "dead"})
        assert job["state"] == "succeeded", job
        assert job["result"] == {"sum": 42, "main_thread": False}


def test_failures(daemon):
    with daemon.client() as c:
        perm = submit(c, "perm", max_retries=5)
        flaky = submit(c, "flaky", max_retries=2)
        unjson = submit(c, "unjson", max_retries=5)
        job = wait_state(c, perm, {"dead", "succeeded"})
        assert job["state"] == "dead" and job["attempts"] == 1, job
        assert "the widget is gone for good" in job["last_error"]
        job = wait_state(c, flaky, {"dead", "succeeded"})
        assert job["state"] == "dead" and job["attempts"] == 3, job  # max_retries + 1
        assert "ValueError" in job["last_error"] and "boom on attempt 3" in job["last_error"]
        job = wait_state(c, unjson, {"dead", "succeeded"})
        assert job["state"] == "dead" and job["attempts"] == 1, job
        assert "JSON" in job["last_error"]
        # A dead job can be retried by hand: attempts start again from zero.
        r = c.post(f"/jobs/{flaky}/retry")
        assert r.status_code == 200 and r.json()["attempts"] == 0
        job = wait_for(lambda: (j := c.get(f"/jobs/{flaky}").json())["state"] == "dead"
                       and j["attempts"] == 3 and j, message="the retried job to die again")
        metrics = c.get("/metrics").text
        assert 'jqd_jobs_dead_total{type="flaky"} 2.0' in metrics
        assert 'jqd_attempts_failed_total{type="flaky"} 6.0' in metrics


def test_retry_after(daemon):
    with daemon.client() as c:
        started = time.monotonic()
        job = wait_state(c, submit(c, "later", max_retries=5), {"succeeded", "dead"})
        assert job["state"] == "succeeded", job
        assert job["attempts"] == 3
        assert job["result"]["attempt"] == 3
        # The handler's delay is used instead of the (tiny) backoff.
        assert all(gap >= 0.28 for gap in job["result"]["gaps"]), job["result"]
        assert time.monotonic() - started >= 0.56


def test_payload_validator(daemon):
    with daemon.client() as c:
        for payload in ({}, {"n": -1}, {"n": "3"}):
            r = c.post("/createJob", json={"type": "validated", "payload": payload})
            assert r.status_code == 422, r.text
            assert r.json()["code"] == "invalid_payload"
            assert "'n' must be a non-negative integer" in r.json()["error"]
        r = c.post("/createJobs", json={"jobs": [{"type": "validated", "payload": {"n": 1}},
                                                 {"type": "validated", "payload": {"n": -1}}]})
        assert r.status_code == 422 and "jobs[1]" in r.json()["error"]
        assert c.get("/stats").json()["counts"] == {}
        job = wait_state(c, submit(c, "validated", {"n": 21}), "succeeded")
        assert job["result"] == {"n": 42}


def test_timeout(daemon):
    with daemon.client() as c:
        slow = submit(c, "slow", max_retries=1, timeout_seconds=0.2)
        slow_sync = submit(c, "slow_sync", max_retries=0, timeout_seconds=0.2)
        started = time.monotonic()
        job = wait_state(c, slow, {"dead", "succeeded"})
        assert job["state"] == "dead" and job["attempts"] == 2, job
        assert "timed out" in job["last_error"] and "0.2" in job["last_error"]
        job = wait_state(c, slow_sync, {"dead", "succeeded"})
        assert job["state"] == "dead" and job["attempts"] == 1, job
        assert "timed out" in job["last_error"]
        assert time.monotonic() - started < 5


def test_bad_handler_modules_stop_start_up(start_jqd, tmp_path):
    (tmp_path / "broken.py").write_text("import trio\nraise RuntimeError('config missing')\n")
    (tmp_path / "clash.py").write_text(
        "from jqd import job_type\n\n@job_type('noop')\nasync def mine(job):\n    return 1\n")
    started = time.monotonic()
    # All at once; each fails before it opens the database.
    missing = start_jqd("--handlers", "nosuchmodule", wait=False, JQD_CONTROL_SOCKET=str(tmp_path / "a.sock"))
    broken = start_jqd(wait=False, JQD_HANDLERS="broken", JQD_CONTROL_SOCKET=str(tmp_path / "b.sock"))
    clash = start_jqd("--handlers", "clash", wait=False, JQD_CONTROL_SOCKET=str(tmp_path / "c.sock"))
    assert missing.wait(15) == 1
    assert "nosuchmodule" in missing.log, missing.log
    assert "Traceback" not in missing.log
    assert broken.wait(15) == 1
    assert "broken" in broken.log and "config missing" in broken.log, broken.log
    assert clash.wait(15) == 1
    assert "'noop'" in clash.log and "built-in" in clash.log, clash.log
    assert time.monotonic() - started < 10
