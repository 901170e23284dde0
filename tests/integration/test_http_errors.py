"""The HTTP contract: every documented status, its `{"error", "code"}` body, and that a refused
request writes nothing; plus listing, cancel, retry, batches and a full store."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.integration.conftest import read_response, wait_for, wait_state

BLOB_MODULE = textwrap.dedent('''
    """Test handlers: `blob` accepts any payload and notes its id in ./ran.txt; `perm` always
    fails for good."""
    from jqd import PermanentError, job_type

    @job_type("blob")
    async def blob(job):
        with open("ran.txt", "a") as f:
            f.write(f"{job.id}\\n")
        return None

    @job_type("perm")
    async def perm(job):
        raise PermanentError("this job can never succeed")
''')


def ctl(d, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "jqd_ctl", "--socket", d.socket, *args], env=d.env,
                          capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0, proc.stderr


def snapshot(c) -> tuple:
    """What a refused request must not change: counts by state and the list of job ids."""
    stats = c.get("/stats")
    assert stats.status_code == 200
    jobs = c.get("/jobs", params={"limit": 1000})
    assert jobs.status_code == 200
    return stats.json()["counts"], [j["id"] for j in jobs.json()["jobs"]]


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error", "code"}, body
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["code"], str) and body["code"]
    if code is not None:
        assert body["code"] == code, body
    return body


def write_module(tmp_path, name: str, source: str) -> None:
    (tmp_path / f"{name}.py").write_text(source)


NOOP = {"type": "noop", "payload": {}}
CLOSE = {"Connection": "close"}


def test_400_invalid_requests_write_nothing(start_jqd):
    d = start_jqd()
    with d.client() as c:
        r = c.post("/createJob", json=NOOP)
        assert r.status_code == 201
        wait_state(c, r.json()["id"], "succeeded")
        before = snapshot(c)
        raw = {"content-type": "application/json"}
        cases = [
            (b'{"type": "noop", "payload": {}', "malformed_json"),  # truncated
            (b'{"type": "noop", "payload": {"x": NaN}}', "malformed_json"),
            (b'{"type": "noop", "payload": {}, "priority": Infinity}', "malformed_json"),
            (b"\xff\xfe not utf-8", "malformed_json"),
            (b"", "malformed_json"),
        ]
        for body, code in cases:
            assert_error(c.post("/createJob", content=body, headers=raw), 400, code)
        bad_jobs = [
            ([1, 2, 3], None),  # not an object
            ("noop", None),
            (None, None),
            ({**NOOP, "colour": "red"}, "unknown_field"),
            ({**NOOP, "priority": "1"}, None),
            ({**NOOP, "priority": 10}, None),
            ({**NOOP, "priority": -1}, None),
            ({**NOOP, "priority": 1.5}, None),
            ({**NOOP, "max_retries": True}, None),
            ({**NOOP, "max_retries": -1}, None),
            ({"type": "noop", "payload": []}, None),
            ({"type": "noop", "payload": "{}"}, None),
            ({"type": "noop"}, None),
            ({"payload": {}}, None),
            ({"type": 7, "payload": {}}, None),
            ({**NOOP, "queue": ""}, None),
            ({**NOOP, "queue": 5}, None),
            ({**NOOP, "idempotency_key": 5}, None),
            ({**NOOP, "idempotency_key": ""}, None),
            ({**NOOP, "timeout_seconds": 0}, None),
            ({**NOOP, "timeout_seconds": "1"}, None),
            ({**NOOP, "delay_seconds": -1}, None),
            ({**NOOP, "run_at": "2030-01-01T00:00:00"}, None),  # no offset
            ({**NOOP, "run_at": "garbage"}, None),
            ({**NOOP, "run_at": "2030-13-45T99:00:00Z"}, None),
            ({**NOOP, "run_at": 1893456000}, None),
            ({**NOOP, "run_at": "2030-01-01T00:00:00Z", "delay_seconds": 5}, None),
        ]
        for body, code in bad_jobs:
            err = assert_error(c.post("/createJob", content=json.dumps(body), headers=raw), 400, code)
            assert err["code"] in ("invalid_field", "unknown_field"), (body, err)
        # The message names the offending field.
        assert "priority" in assert_error(c.post("/createJob", json={**NOOP, "priority": "1"}), 400)["error"]
        assert "colour" in assert_error(c.post("/createJob", json={**NOOP, "colour": 1}), 400)["error"]
        assert "run_at" in assert_error(c.post("/createJob", json={**NOOP, "run_at": "x"}), 400)["error"]
        # Bad list queries are 400 too.
        for params in ({"state": "bogus"}, {"limit": 0}, {"limit": 1001}, {"limit": "x"},
                       {"after": "x"}, {"colour": "red"}):
            assert_error(c.get("/jobs", params=params), 400)
        assert snapshot(c) == before


def test_413_415_and_405_write_nothing(start_jqd):
    d = start_jqd(JQD_MAX_BODY="2048")
    with d.client() as c:
        before = snapshot(c)
        big = {"type": "noop", "payload": {}, "idempotency_key": "k" * 3000}
        # `Connection: close` on requests answered before their body is read: see
        # test_keepalive_connection_survives_an_error_answer.
        assert_error(c.post("/createJob", json=big, headers=CLOSE), 413, "body_too_large")
        assert_error(c.post("/createJobs", json={"jobs": [big]}, headers=CLOSE), 413, "body_too_large")
        # Just under the limit is accepted (and refused only on its merits).
        ok = c.post("/createJob", json={**NOOP, "idempotency_key": "k" * 200})
        assert ok.status_code == 201
        wait_state(c, ok.json()["id"], "succeeded")
        before = snapshot(c)
        body = json.dumps(NOOP).encode()
        for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"content-type": ctype, **CLOSE} if ctype else CLOSE
            assert_error(c.post("/createJob", content=body, headers=headers), 415, "unsupported_media_type")
        assert_error(c.post("/createJobs", content=json.dumps({"jobs": [NOOP]}),
                            headers={"content-type": "text/plain", **CLOSE}), 415)
        # 405: a known route with the wrong method.
        assert_error(c.get("/createJob"), 405)
        assert_error(c.put("/createJob", json=NOOP, headers=CLOSE), 405)
        assert_error(c.delete(f"/jobs/{ok.json()['id']}"), 405)
        assert_error(c.get(f"/jobs/{ok.json()['id']}/cancel"), 405)
        assert snapshot(c) == before


@pytest.mark.parametrize("case", [
    "401", "413", "415", "404", "405"])
def test_keepalive_connection_survives_an_error_answer(start_jqd, case):
    d = start_jqd(JQD_MAX_BODY="2048", JQD_API_TOKEN="tok")
    body = json.dumps(NOOP).encode()
    auth = b"Authorization: Bearer tok\r\n"
    line = {"404": b"POST /no/such/route", "405": b"PUT /createJob"}.get(case, b"POST /createJob")
    headers = {"401": b"Content-Type: application/json\r\n",
               "415": auth + b"Content-Type: text/plain\r\n"}.get(case, auth + b"Content-Type: application/json\r\n")
    if case == "413":
        body = json.dumps({**NOOP, "idempotency_key": "k" * 3000}).encode()
    with socket.create_connection(("127.0.0.1", d.port)) as sock:
        # A client that sends the headers, then the body a moment later (as any client may).
        sock.sendall(line + b" HTTP/1.1\r\nHost: jqd\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body))
        try:
            status, resp_headers, _ = read_response(sock, timeout=0.5)  # answered early?
            early = True
        except socket.timeout:
            early = False  # the server waits for the body before answering: fine
        if early:
            # The stimulus, not a wait for a condition: the body arrives after the answer.
            time.sleep(0.1)
            if "close" in resp_headers.get("connection", "").lower():
                assert status == int(case)
                return  # the server said it closes the connection: the client will not reuse it
            sock.sendall(body)
        else:
            sock.sendall(body)
            status, resp_headers, _ = read_response(sock, timeout=3.0)
        assert status == int(case)
        if "close" in resp_headers.get("connection", "").lower():
            return
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: jqd\r\n\r\n")
        try:
            status, _, _ = read_response(sock, timeout=1.0)
        except (socket.timeout, EOFError) as exc:
            # The wedged connection would also hold a graceful stop for hypercorn's 5 s
            # graceful_timeout (it does not notice the client closing it): kill instead.
            d.kill()
            pytest.fail(f"the next request on the keep-alive connection got no answer ({exc!r})")
        assert status == 200


def test_422_unknown_type_and_webhook_host(start_jqd):
    d = start_jqd(JQD_WEBHOOK_ALLOWED_HOSTS="allowed.example")
    with d.client() as c:
        before = snapshot(c)
        err = assert_error(c.post("/createJob", json={"type": "nosuchtype", "payload": {}}), 422, "unknown_type")
        assert "nosuchtype" in err["error"]
        err = assert_error(c.post("/createJob", json={
            "type": "webhook", "payload": {"url": "http://evil.example/hook"}}), 422)
        assert "evil.example" in err["error"]
        assert_error(c.post("/createJob", json={"type": "noop", "payload": {"x": 1}}), 422)
        assert_error(c.post("/createJob", json={"type": "sleep", "payload": {"seconds": "1"}}), 422)
        assert snapshot(c) == before
        ok = c.post("/createJob", json={"type": "webhook", "payload": {"url": "http://allowed.example/h"},
                                        "delay_seconds": 3600})
        assert ok.status_code == 201, ok.text


def test_429_backpressure(start_jqd):
    d = start_jqd(JQD_MAX_QUEUED="3")
    ctl(d, "pause")
    with d.client() as c:
        ids = [c.post("/createJob", json=NOOP).json()["id"] for _ in range(3)]
        before = snapshot(c)
        r = c.post("/createJob", json=NOOP)
        assert_error(r, 429, "queue_full")
        assert float(r.headers["Retry-After"]) > 0
        r = c.post("/createJobs", json={"jobs": [NOOP]})
        assert_error(r, 429)
        assert "Retry-After" in r.headers
        assert snapshot(c) == before
        # Once the queue empties, intake takes jobs again.
        ctl(d, "resume")
        for job_id in ids:
            wait_state(c, job_id, "succeeded")
        assert c.post("/createJob", json=NOOP).status_code == 201


def test_401_bearer_token(start_jqd):
    d = start_jqd(JQD_API_TOKEN="s3cret-token")
    good = {"Authorization": "Bearer s3cret-token"}
    with d.client() as c, d.client(headers=good) as authed:
        before = snapshot(authed)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret-token"},
                        {"Authorization": "Basic czNjcmV0LXRva2Vu"}, {"Authorization": "Bearer"}):
            assert_error(c.post("/createJob", json=NOOP, headers={**headers, **CLOSE}), 401, "unauthorized")
            assert_error(c.get("/jobs/1", headers=headers), 401)
            assert_error(c.get("/stats", headers=headers), 401)
            assert_error(c.get("/jobs", headers=headers), 401)
            assert_error(c.get("/metrics", headers=headers), 401)
        assert snapshot(authed) == before
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        r = c.post("/createJob", json=NOOP, headers=good)
        assert r.status_code == 201
        assert c.get(f"/jobs/{r.json()['id']}", headers=good).status_code == 200
    assert "s3cret-token" not in d.log


def test_404_and_409(start_jqd):
    d = start_jqd()
    with d.client() as c:
        assert_error(c.get("/jobs/999999"), 404, "not_found")
        assert_error(c.get("/no/such/route"), 404, "not_found")
        assert_error(c.post("/jobs/999999/cancel"), 404, "not_found")
        assert_error(c.post("/jobs/999999/retry"), 404, "not_found")
        done = c.post("/createJob", json=NOOP).json()["id"]
        wait_state(c, done, "succeeded")
        before = snapshot(c)
        err = assert_error(c.post(f"/jobs/{done}/cancel"), 409)
        assert "succeeded" in err["error"]
        assert_error(c.post(f"/jobs/{done}/retry"), 409)
        assert snapshot(c) == before
        assert c.get(f"/jobs/{done}").json()["state"] == "succeeded"
        # A queued job (paused) cannot be retried; it can be cancelled, once.
        ctl(d, "pause")
        queued = c.post("/createJob", json=NOOP).json()["id"]
        assert_error(c.post(f"/jobs/{queued}/retry"), 409, "invalid_state")
        assert c.get(f"/jobs/{queued}").json()["state"] == "queued"
        r = c.post(f"/jobs/{queued}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert r.json()["finished_at"] is not None
        assert_error(c.post(f"/jobs/{queued}/cancel"), 409, "invalid_state")
        # A cancelled job is retried back to queued, and runs once resumed.
        r = c.post(f"/jobs/{queued}/retry")
        assert r.status_code == 200 and r.json()["state"] == "queued" and r.json()["attempts"] == 0
        ctl(d, "resume")
        assert wait_state(c, queued, "succeeded")["attempts"] == 1


def test_cancelled_queued_job_never_runs(start_jqd):
    d = start_jqd()
    ctl(d, "pause")
    with d.client() as c:
        a = c.post("/createJob", json=NOOP).json()["id"]
        b = c.post("/createJob", json=NOOP).json()["id"]
        assert c.post(f"/jobs/{a}/cancel").json()["state"] == "cancelled"
        ctl(d, "resume")
        wait_state(c, b, "succeeded")
        job = c.get(f"/jobs/{a}").json()
        assert job["state"] == "cancelled" and job["attempts"] == 0 and job["started_at"] is None


def test_cancel_of_a_running_job_stops_its_handler(start_jqd):
    d = start_jqd()
    with d.client() as c:
        job_id = c.post("/createJob", json={"type": "sleep", "payload": {"seconds": 30}}).json()["id"]
        wait_state(c, job_id, "running")
        r = c.post(f"/jobs/{job_id}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        wait_for(lambda: c.get("/stats").json()["in_flight"] == 0, message="the handler to be cancelled")
        job = c.get(f"/jobs/{job_id}").json()
        assert job["state"] == "cancelled" and job["attempts"] == 1 and job["result"] is None, job
        assert_error(c.post(f"/jobs/{job_id}/cancel"), 409, "invalid_state")
        # The slot is free again.
        other = c.post("/createJob", json=NOOP).json()["id"]
        wait_state(c, other, "succeeded")
        assert c.get(f"/jobs/{job_id}").json()["state"] == "cancelled"


def test_retry_of_a_dead_job(start_jqd, tmp_path):
    write_module(tmp_path, "blobmod", BLOB_MODULE)
    d = start_jqd("--handlers", "blobmod")
    with d.client() as c:
        job_id = c.post("/createJob", json={"type": "perm", "payload": {}}).json()["id"]
        dead = wait_state(c, job_id, "dead")
        assert dead["attempts"] == 1 and "can never succeed" in dead["last_error"]
        assert_error(c.post(f"/jobs/{job_id}/cancel"), 409)
        r = c.post(f"/jobs/{job_id}/retry")
        assert r.status_code == 200
        assert r.json()["state"] in ("queued", "running", "dead") and r.json()["attempts"] == 0
        # It runs again (attempt 1 of a fresh series) and dies again.
        again = wait_for(lambda: (j := c.get(f"/jobs/{job_id}").json())["state"] == "dead"
                         and j["finished_at"] != dead["finished_at"] and j, message="second death")
        assert again["attempts"] == 1


def test_list_filters_and_cursor(start_jqd):
    d = start_jqd()
    ctl(d, "pause")
    with d.client() as c:
        ids = []
        for i in range(7):
            body = {"type": "noop" if i % 2 == 0 else "sleep",
                    "payload": {} if i % 2 == 0 else {"seconds": 0},
                    "queue": "alpha" if i < 4 else "beta"}
            r = c.post("/createJob", json=body)
            assert r.status_code == 201
            assert r.headers["Location"] == f"/jobs/{r.json()['id']}"
            ids.append(r.json()["id"])
        assert ids == sorted(ids)
        c.post(f"/jobs/{ids[0]}/cancel").raise_for_status()
        page = c.get("/jobs").json()
        assert [j["id"] for j in page["jobs"]] == ids[::-1]  # newest first
        assert page["next_after"] is None
        # Filters.
        assert {j["id"] for j in c.get("/jobs", params={"type": "sleep"}).json()["jobs"]} == set(ids[1::2])
        assert {j["id"] for j in c.get("/jobs", params={"queue": "beta"}).json()["jobs"]} == set(ids[4:])
        assert [j["id"] for j in c.get("/jobs", params={"state": "cancelled"}).json()["jobs"]] == [ids[0]]
        both = c.get("/jobs", params={"state": "queued", "type": "noop", "queue": "alpha"}).json()["jobs"]
        assert [j["id"] for j in both] == [ids[2]]
        assert c.get("/jobs", params={"state": "dead"}).json() == {"jobs": [], "next_after": None}
        # Cursor paging with limit 3: every job exactly once, newest first.
        seen, after = [], None
        for _ in range(10):
            params = {"limit": 3, **({"after": after} if after else {})}
            page = c.get("/jobs", params=params).json()
            assert len(page["jobs"]) <= 3
            seen += [j["id"] for j in page["jobs"]]
            after = page["next_after"]
            if after is None:
                break
        assert seen == ids[::-1]
        # Cursor with a filter.
        page = c.get("/jobs", params={"type": "noop", "limit": 2}).json()
        assert [j["id"] for j in page["jobs"]] == [ids[6], ids[4]]
        page = c.get("/jobs", params={"type": "noop", "limit": 2, "after": page["next_after"]}).json()
        assert [j["id"] for j in page["jobs"]] == [ids[2], ids[0]]


def test_create_jobs_batch(start_jqd):
    d = start_jqd()
    ctl(d, "pause")
    with d.client() as c:
        batch = [{"type": "sleep", "payload": {"seconds": 0}, "queue": "q1"},
                 {"type": "noop", "payload": {}, "priority": 5},
                 {"type": "sleep", "payload": {"seconds": 0.01}, "idempotency_key": "batch-k"}]
        r = c.post("/createJobs", json={"jobs": batch})
        assert r.status_code == 201, r.text
        jobs = r.json()["jobs"]
        assert [j["type"] for j in jobs] == ["sleep", "noop", "sleep"]
        assert [j["payload"] for j in jobs] == [{"seconds": 0}, {}, {"seconds": 0.01}]
        assert jobs[0]["queue"] == "q1" and jobs[1]["priority"] == 5 and jobs[2]["idempotency_key"] == "batch-k"
        assert [j["id"] for j in jobs] == sorted(j["id"] for j in jobs)
        assert all(j["state"] == "queued" for j in jobs)
        before = snapshot(c)
        # One invalid job: nothing written, the message names it.
        bad = [NOOP, {**NOOP, "priority": "1"}, NOOP]
        err = assert_error(c.post("/createJobs", json={"jobs": bad}), 400)
        assert "jobs[1]" in err["error"], err
        err = assert_error(c.post("/createJobs", json={"jobs": [NOOP, NOOP, {"type": "nope", "payload": {}}]}), 422)
        assert "jobs[2]" in err["error"], err
        assert_error(c.post("/createJobs", json={"jobs": [NOOP] * 1001}), 400)
        assert_error(c.post("/createJobs", json={"jobs": []}), 400)
        assert_error(c.post("/createJobs", json={"jobs": NOOP}), 400)
        assert_error(c.post("/createJobs", json=[NOOP]), 400)
        assert_error(c.post("/createJobs", json={"jobs": [NOOP], "extra": 1}), 400)
        # An idempotency conflict inside a batch rolls back the whole batch.
        conflict = [NOOP, {"type": "sleep", "payload": {"seconds": 1}, "idempotency_key": "batch-k"}]
        assert_error(c.post("/createJobs", json={"jobs": conflict}), 409, "idempotency_conflict")
        assert snapshot(c) == before
        # A batch of exactly 1000 is accepted.
        r = c.post("/createJobs", json={"jobs": [NOOP] * 1000})
        assert r.status_code == 201 and len(r.json()["jobs"]) == 1000
        assert c.get("/stats").json()["counts"]["queued"] == 1003


def fill_store(c, pad: str) -> tuple[list[int], object]:
    """Submit batches, then single jobs, until the store is full; returns the acknowledged ids
    and the last (503) response."""
    acknowledged: list[int] = []
    full = None
    for n in range(200):
        r = c.post("/createJobs", json={"jobs": [
            {"type": "blob", "payload": {"n": n, "i": i, "pad": pad}} for i in range(10)]})
        if r.status_code == 503:
            full = r
            break
        assert r.status_code == 201, r.text
        acknowledged += [j["id"] for j in r.json()["jobs"]]
    assert full is not None, "the store never filled up"
    assert len(acknowledged) >= 20, "the cap is too small to be a meaningful test"
    assert_error(full, 503, "storage_full")
    assert float(full.headers["Retry-After"]) > 0
    # Single jobs fill what the refused batch left; then they are refused too.
    for n in range(100):
        r = c.post("/createJob", json={"type": "blob", "payload": {"single": n, "pad": pad}})
        if r.status_code != 201:
            break
        acknowledged.append(r.json()["id"])
    assert_error(r, 503, "storage_full")
    assert float(r.headers["Retry-After"]) > 0
    return acknowledged, r


FULL_ENV = dict(JQD_MAX_DB_BYTES="300000", JQD_RETENTION="0", JQD_VISIBILITY_TIMEOUT="0.4",
                WORKER_COUNT="20")


def test_storage_full_refuses_then_recovers(start_jqd, tmp_path):
    write_module(tmp_path, "blobmod", BLOB_MODULE)
    d = start_jqd("--handlers", "blobmod", **FULL_ENV)
    ctl(d, "pause")
    pad = "x" * 1500
    with d.client() as c:
        acknowledged, _ = fill_store(c, pad)
        # Nothing half-written: exactly the acknowledged jobs exist.
        counts = c.get("/stats").json()["counts"]
        assert counts == {"queued": len(acknowledged)}
        listed = c.get("/jobs", params={"limit": 1000}).json()["jobs"]
        assert sorted(j["id"] for j in listed) == sorted(acknowledged)
        # Reads still work.
        assert c.get(f"/jobs/{acknowledged[0]}").status_code == 200
        assert c.get(f"/jobs/{acknowledged[-1]}").status_code == 200
        assert c.get("/healthz").status_code == 200
        assert c.get("/metrics").status_code == 200
        # (/readyz while full: see test_readyz_stays_503_while_storage_full.)
        # Let the jobs run; succeeded jobs are pruned at once (retention 0), freeing pages,
        # and intake resumes by itself.
        ctl(d, "resume")

        def accepted():
            r = c.post("/createJob", json={"type": "blob", "payload": {"pad": pad}})
            if r.status_code == 201:
                return r
            assert_error(r, 503, "storage_full")
            return None

        new = wait_for(accepted, timeout=20, interval=0.1, message="intake to resume after space returns")
        acknowledged.append(new.json()["id"])
        wait_for(lambda: c.get("/readyz").status_code == 200, timeout=10, message="/readyz to recover")
        # No acknowledged job was lost: every one of them ran (the handler notes its id).
        ran_file = tmp_path / "ran.txt"

        def missing():
            ran = {int(x) for x in ran_file.read_text().split()} if ran_file.exists() else set()
            return set(acknowledged) - ran

        wait_for(lambda: not missing(), timeout=20, message="every acknowledged job to run")
        counts = c.get("/stats").json()["counts"]
        assert not counts.get("dead") and not counts.get("cancelled"), counts
        assert d.proc.poll() is None


def test_readyz_stays_503_while_storage_full(start_jqd, tmp_path):
    write_module(tmp_path, "blobmod", BLOB_MODULE)
    d = start_jqd("--handlers", "blobmod", **FULL_ENV)
    ctl(d, "pause")
    with d.client() as c:
        fill_store(c, "x" * 1500)
        # The store cannot take a job: readiness must say so, for as long as that lasts
        # (watch it over ten reaper ticks).
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            r = c.get("/readyz")
            assert r.status_code == 503, f"/readyz answered {r.status_code} while the store is full"
            time.sleep(0.02)
        assert_error(c.post("/createJob", json={"type": "blob", "payload": {"pad": "x" * 1500}}),
                     503, "storage_full")
