"""Idempotency keys: concurrent duplicates create one job; a different request under the same
key is a conflict; a replay returns the job as it is now."""

from __future__ import annotations

import subprocess
import sys
import threading

import httpx

from tests.integration.conftest import wait_for, wait_state

N = 50


def ctl(d, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "jqd_ctl", "--socket", d.socket, *args], env=d.env,
                          capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0, proc.stderr


def concurrent_posts(url: str, path: str, body: dict, n: int) -> list[httpx.Response]:
    """n POSTs released at once by a barrier, each on its own connection."""
    barrier = threading.Barrier(n)
    responses: list = [None] * n
    errors: list = []

    def post(i: int) -> None:
        try:
            with httpx.Client(base_url=url, timeout=15.0) as c:
                c.get("/healthz")  # connect before the barrier, so the POSTs really race
                barrier.wait(10)
                responses[i] = c.post(path, json=body)
        except Exception as exc:  # reported below, with the thread's index
            errors.append((i, repr(exc)))

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    return responses


def test_concurrent_duplicates_create_one_job(start_jqd):
    d = start_jqd()
    body = {"type": "sleep", "payload": {"seconds": 0.05}, "idempotency_key": "order-42"}
    responses = concurrent_posts(d.url, "/createJob", body, N)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1, statuses
    assert statuses.count(200) == N - 1, statuses
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1, ids
    (job_id,) = ids
    for r in responses:
        assert r.headers["Location"] == f"/jobs/{job_id}"
        assert r.json()["idempotency_key"] == "order-42"
    with d.client() as c:
        wait_state(c, job_id, "succeeded")
        counts = c.get("/stats").json()["counts"]
        assert counts == {"succeeded": 1}, counts
        assert c.get("/jobs").json()["jobs"][0]["id"] == job_id
        # Replayed after it finished: 200, the job as it is now, not a new one.
        r = c.post("/createJob", json=body)
        assert r.status_code == 200
        assert r.json()["id"] == job_id and r.json()["state"] == "succeeded"
        assert r.json()["result"] == {"slept": 0.05}
        # Same key, different payload or different type: 409, nothing written.
        for other in ({**body, "payload": {"seconds": 0.06}},
                      {"type": "noop", "payload": {}, "idempotency_key": "order-42"}):
            r = c.post("/createJob", json=other)
            assert r.status_code == 409, r.text
            assert r.json()["code"] == "idempotency_conflict"
            assert set(r.json()) == {"error", "code"}
            assert "order-42" in r.json()["error"]
        # The key covers type and payload; options such as priority do not make a new request.
        r = c.post("/createJob", json={**body, "priority": 3})
        assert r.status_code in (200, 409), r.text
        assert c.get("/stats").json()["counts"] == {"succeeded": 1}
        metrics = c.get("/metrics").text
        assert "jqd_jobs_replayed_total" in metrics
        replayed = [line for line in metrics.splitlines() if line.startswith("jqd_jobs_replayed_total")]
        assert float(replayed[0].split()[-1]) >= N


def test_concurrent_duplicate_batches(start_jqd):
    """The same batch (each job with its key) sent 20 times at once: 3 jobs in all."""
    d = start_jqd()
    ctl(d, "pause")
    batch = {"jobs": [{"type": "noop", "payload": {}, "idempotency_key": f"b-{i}"} for i in range(3)]}
    responses = concurrent_posts(d.url, "/createJobs", batch, 20)
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 1 and statuses.count(200) == 19, statuses  # all replays: 200
    id_lists = {tuple(j["id"] for j in r.json()["jobs"]) for r in responses}
    assert len(id_lists) == 1, id_lists
    with d.client() as c:
        assert c.get("/stats").json()["counts"] == {"queued": 3}
        # A key that is replayed while the job is still queued gives the queued job.
        r = c.post("/createJob", json=batch["jobs"][1])
        assert r.status_code == 200 and r.json()["state"] == "queued"
        assert r.json()["id"] == next(iter(id_lists))[1]
        # Cancelled, the key still belongs to the job: a replay returns it cancelled.
        c.post(f"/jobs/{r.json()['id']}/cancel").raise_for_status()
        r = c.post("/createJob", json=batch["jobs"][1])
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert c.get("/stats").json()["counts"] == {"queued": 2, "cancelled": 1}
        # The same key twice in one batch: the second is a replay of the first.
        twice = {"type": "noop", "payload": {}, "idempotency_key": "twice"}
        r = c.post("/createJobs", json={"jobs": [twice, twice]})
        assert r.status_code == 201, r.text
        assert r.json()["jobs"][0]["id"] == r.json()["jobs"][1]["id"]
        # ...unless the requests differ: a conflict, and the whole batch is refused.
        r = c.post("/createJobs", json={"jobs": [
            {"type": "noop", "payload": {}, "idempotency_key": "thrice"},
            {"type": "sleep", "payload": {"seconds": 0}, "idempotency_key": "thrice"}]})
        assert r.status_code == 409 and r.json()["code"] == "idempotency_conflict", r.text
        assert c.get("/stats").json()["counts"] == {"queued": 3, "cancelled": 1}


def test_key_is_freed_by_retention(start_jqd):
    """After the retention prunes the finished job, the key makes a new job."""
    d = start_jqd(JQD_RETENTION="0", JQD_VISIBILITY_TIMEOUT="0.4")
    body = {"type": "noop", "payload": {}, "idempotency_key": "short-lived"}
    with d.client() as c:
        first = c.post("/createJob", json=body)
        assert first.status_code == 201
        first_id = first.json()["id"]

        def pruned():
            return c.get(f"/jobs/{first_id}").status_code == 404

        wait_for(pruned, timeout=10, message="the finished job to be pruned")
        again = c.post("/createJob", json=body)
        assert again.status_code == 201
        assert again.json()["id"] > first_id  # ids are never reused
