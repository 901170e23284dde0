"""Property-based tests of the HTTP API of a real daemon against its own /openapi.json.

schemathesis (4.x) generates requests for every operation from the served document, in positive
mode (valid inputs: every answer must be documented and match its schema) and negative mode
(invalid inputs: must be refused with a 4xx). A hand-written hypothesis strategy then throws
hostile createJob bodies at the daemon (wrong types, huge ints, unicode, nested junk,
SQL-looking strings) and checks that it never answers 5xx and still serves afterwards.

These are plain sync tests (pytest-trio's trio_mode only touches async ones). Generation is
derandomized, so CI sees the same inputs every run. Inputs that hit a known server bug are
filtered out of the generators; each such bug, since fixed, has its own regression test at the bottom.
"""

from __future__ import annotations

import json
import re
from datetime import datetime

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings, strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance, negative_data_rejection, response_headers_conformance,
    response_schema_conformance, status_code_conformance,
)

INT64_MAX = 2**63 - 1
SQL = "'); DROP TABLE jobs;--"
BUILTINS = ["email", "noop", "sleep", "webhook"]
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_headers_conformance, response_schema_conformance]
# A fresh connection per request: a refusal sent before the body is read can wedge a keep-alive
# connection (see test_connection_survives_an_unread_body); the generators must not trip over it.
ONE_SHOT = {"Connection": "close"}
RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")


def settings_for(max_examples: int):
    return settings(max_examples=max_examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck), print_blob=False)


def start(start_jqd):
    # A short grace: generated `sleep` jobs may still run when the fixture stops the daemon.
    return start_jqd(JQD_WEBHOOK_ALLOWED_HOSTS="127.0.0.1", JQD_SHUTDOWN_GRACE="0.2")


def strict_json(text: str) -> object:
    """Parse as RFC 8259 JSON: NaN/Infinity (which Python's json emits and accepts) are refused."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


# --- inputs of bugs found here (now fixed, see the regression tests) stay out of the generators ---

def _ancient_run_at(value: object) -> bool:
    """run_at whose UTC instant is before year 1000: 500 (year < 1) or a non-RFC 3339 echo."""
    if not isinstance(value, str):
        return False
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in "Zz" else value)
    except ValueError:
        return False
    return parsed.year <= 1000


def _beyond_int64(value: object) -> bool:
    try:
        return abs(int(str(value))) > INT64_MAX
    except ValueError:
        return False


def hits_known_bug(case) -> bool:
    body = case.body if isinstance(case.body, dict) else {}
    jobs = body["jobs"] if isinstance(body.get("jobs"), list) else [body]
    if any(isinstance(job, dict) and _ancient_run_at(job.get("run_at")) for job in jobs):
        return True
    params = [*(case.path_parameters or {}).values(), *(case.query or {}).values()]
    return any(_beyond_int64(v) for value in params for v in (value if isinstance(value, list) else [value]))


def run_schemathesis(url: str, mode: GenerationMode, checks: list, max_examples: int) -> tuple[dict, dict]:
    """Run every operation of the served document; returns (failures, statuses seen) by operation."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=schemathesis.Config())
    failures: dict[str, str] = {}
    seen: dict[str, dict[int, int]] = {}
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            if mode is GenerationMode.NEGATIVE and not (
                    len(operation.body) or len(operation.path_parameters) or len(operation.query)):
                continue  # nothing to make invalid
            statuses = seen.setdefault(operation.label, {})

            @settings_for(max_examples)
            @given(case=operation.as_strategy(generation_mode=mode).filter(lambda case: not hits_known_bug(case)))
            def check(case):
                response = case.call(base_url=url, session=session, timeout=10, headers=ONE_SHOT)
                statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                case.validate_response(response, checks=checks)

            try:
                check()
            except Exception as exc:  # schemathesis' FailureGroup: keep going, report them all
                failures[operation.label] = str(exc)
    return failures, seen


# --- schemathesis against the served document --------------------------------------------------

def test_valid_requests_get_documented_answers(start_jqd):
    d = start(start_jqd)
    failures, seen = run_schemathesis(d.url, GenerationMode.POSITIVE, CONFORMANCE, max_examples=40)
    assert not failures, "\n\n".join(f"== {op}\n{text}" for op, text in failures.items())
    assert set(seen) == {"POST /createJob", "POST /createJobs", "GET /jobs", "GET /jobs/{id}",
                         "POST /jobs/{id}/cancel", "POST /jobs/{id}/retry", "GET /healthz", "GET /readyz",
                         "GET /stats", "GET /metrics"}  # /openapi.json itself: schemathesis skips it
    assert seen["POST /createJob"].get(201) and seen["POST /createJobs"].get(201), seen  # not only refusals
    with d.client() as client:
        document = client.get("/openapi.json").json()
    types = [t for v in document["components"]["schemas"]["JobRequest"]["oneOf"]
             for t in document["components"]["schemas"][v["$ref"].rsplit("/", 1)[1]]["properties"]["type"]["enum"]]
    assert sorted(types) == BUILTINS


def test_invalid_requests_are_refused(start_jqd):
    d = start(start_jqd)
    failures, seen = run_schemathesis(d.url, GenerationMode.NEGATIVE, CONFORMANCE + [negative_data_rejection],
                                      max_examples=30)
    assert not failures, "\n\n".join(f"== {op}\n{text}" for op, text in failures.items())
    assert seen["POST /createJob"].get(400), seen


# --- hostile createJob bodies with httpx --------------------------------------------------------

ALLOWED = {200, 201, 400, 409, 413, 415, 422, 429}
junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40) | st.just(SQL),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=8)
words = st.sampled_from([SQL, "", "default", "q.1:x-y_z", "x" * 300, "é✓😀", "\x00", "a\nb", "𝔘𝔫𝔦"]) \
    | st.text(max_size=60)
sql_text = st.builds("{}{}{}".format, st.text(max_size=8), st.just(SQL), st.text(max_size=8))
payloads = st.one_of(
    st.just({}),
    st.builds(lambda s: {"seconds": s}, st.floats(0, 0.01) | junk),
    st.builds(lambda subject, body: {"email": "ops@example.com", "subject": subject, "body": body},
              sql_text | words, sql_text | words),
    st.builds(lambda body, js: {"url": "http://127.0.0.1:9/hook", "body": body} if js is None
              else {"url": "http://127.0.0.1:9/hook", "json": js}, sql_text, st.none() | junk),
    st.dictionaries(st.text(max_size=10) | st.just(SQL), junk, max_size=4),
    junk,
)
dates = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2035, 1, 1)).map(
    lambda dt: dt.isoformat() + "Z")
job_fields = {
    "type": st.sampled_from(BUILTINS + [SQL, "unknown", "Noop"]) | junk,
    "payload": payloads,
    "queue": words | junk,
    "priority": st.integers(-3, 12) | st.integers(min_value=2**63) | junk,
    "max_retries": st.integers(-3, 120) | junk,
    "idempotency_key": words | sql_text | junk,
    "run_at": dates | words | junk,
    "delay_seconds": st.floats(-10, 1e10, allow_nan=False) | junk,
    "timeout_seconds": st.floats(-10, 1e7, allow_nan=False) | junk,
    SQL: junk,
}
bodies = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(BUILTINS), "payload": payloads},
                          optional={k: v for k, v in job_fields.items() if k not in ("type", "payload")}),
    st.fixed_dictionaries({}, optional=job_fields),
    junk,
)
RAW = [  # bodies no Python object serializes to, each sent once
    b"", b"{", b"null", b"\xff\xfe{}", b"\xef\xbb\xbf{}", b'{"type":"noop","payload":{},"priority":NaN}',
    b'{"type":"noop","payload":{},"delay_seconds":1e400}', b'{"type":"sleep","payload":{"seconds":Infinity}}',
    b'{"type":"noop","payload":{},"type":"noop"}', b"[" * 100_000 + b"]" * 100_000,
    b'{"type":"noop","payload":{},"priority":' + b"9" * 5000 + b"}",
    b'{"type":"noop","payload":{}}' + b" " * (1 << 20),
]
content_types = st.sampled_from(["application/json"] * 6 + ["application/json; charset=utf-8", "APPLICATION/JSON",
                                                          "text/plain", "application/x-www-form-urlencoded"])


def test_hostile_create_job_bodies_never_break_the_daemon(start_jqd):
    d = start(start_jqd)
    created: dict[int, dict] = {}
    seen: dict[int, int] = {}
    with d.client() as client:

        def post(content: bytes, content_type: str = "application/json") -> None:
            response = client.post("/createJob", content=content, headers={"Content-Type": content_type, **ONE_SHOT})
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code in ALLOWED, (content[:300], response.status_code, response.text[:300])
            answer = strict_json(response.text)
            if response.status_code in (200, 201):
                sent = json.loads(content)["payload"]
                assert answer["payload"] == sent, (sent, answer)
                created[answer["id"]] = sent
            else:
                assert set(answer) == {"error", "code"}, answer

        @settings_for(200)
        @given(body=bodies, ascii_only=st.booleans(), content_type=content_types)
        def post_generated(body, ascii_only, content_type):
            post(json.dumps(body, ensure_ascii=ascii_only).encode(), content_type)

        post_generated()
        for content in RAW:
            post(content)
        # One SQL-looking job for certain, whatever hypothesis drew.
        payload = {"email": "ops@example.com", "subject": SQL, "body": f"{SQL} ✓ \"quoted\" \\ \x00 end"}
        response = client.post("/createJob", json={"type": "email", "payload": payload, "queue": "q.sql",
                                                   "idempotency_key": SQL + "✓"})
        assert response.status_code == 201, response.text
        created[response.json()["id"]] = payload

        assert seen.get(201) and seen.get(400) and seen.get(422) and seen.get(415) and seen.get(413), seen
        listing = client.get("/jobs", params={"limit": 1000})
        assert listing.status_code == 200
        assert {job["id"] for job in strict_json(listing.text)["jobs"]} >= set(created)
        assert client.get("/stats").status_code == 200
        with_sql = {id_: p for id_, p in created.items() if SQL in json.dumps(p, ensure_ascii=False)}
        assert with_sql
        for id_, sent in with_sql.items():
            response = client.get(f"/jobs/{id_}")
            assert response.status_code == 200
            assert strict_json(response.text)["payload"] == sent
            # Byte for byte: the payload is echoed as compact JSON of exactly what was sent
            # (non-ASCII either escaped or as UTF-8, depending on the server's encoder).
            assert any(f'"payload":{json.dumps(sent, separators=(",", ":"), ensure_ascii=ascii_)},' in response.text
                       for ascii_ in (True, False)), response.text


# --- server bugs found by these tests, fixed: regression tests ------------------------------------

def test_ids_beyond_int64_are_refused_not_500(start_jqd):
    d = start(start_jqd)
    huge = 2**63
    with d.client() as client:
        answers = {url: (client.post(url) if url.endswith(("cancel", "retry")) else client.get(url)).status_code
                   for url in (f"/jobs/{huge}", f"/jobs/{huge}/cancel", f"/jobs/{huge}/retry", f"/jobs?after={huge}")}
    assert all(status < 500 for status in answers.values()), answers


def test_run_at_in_year_one_does_not_break_the_api(start_jqd):
    d = start(start_jqd)
    with d.client() as client:
        response = client.post("/createJob", json={"type": "noop", "payload": {},
                                                     "run_at": "0001-01-01T00:00:00+14:00"})
        assert response.status_code < 500, response.text
        assert client.get("/jobs").status_code == 200


def test_run_at_before_1970_is_refused(start_jqd):
    """Found here: run_at in year 1 made listing fail, and years before 1000 came back without
    zero padding. jqd now refuses run_at before the Unix epoch with 400."""
    d = start(start_jqd)
    with d.client() as client:
        for run_at in ("0333-08-31T13:54:54Z", "1969-12-31T23:59:59Z"):
            response = client.post("/createJob", json={"type": "noop", "payload": {}, "run_at": run_at})
            assert response.status_code == 400, response.text
            assert response.json()["code"] == "invalid_field"
        ok = client.post("/createJob", json={"type": "noop", "payload": {}, "run_at": "1970-01-01T00:00:00Z"})
        assert ok.status_code == 201 and RFC3339_UTC.match(ok.json()["run_at"]), ok.text


def test_lone_surrogates_are_refused_not_500(start_jqd):
    d = start(start_jqd)
    hook = '{"url":"http://127.0.0.1:9/","json":"\\ud800"}'
    with d.client() as client:
        answers = [client.post("/createJob", content=body, headers={"Content-Type": "application/json"}).status_code
                   for body in ('{"type":"noop","payload":{},"idempotency_key":"\\ud800"}',
                                '{"type":"webhook","payload":' + hook + "}")]
    assert all(status < 500 for status in answers), answers


def test_numbers_beyond_double_are_refused(start_jqd):
    d = start(start_jqd)
    body = '{"type":"webhook","payload":{"url":"http://127.0.0.1:9/","json":1e400}}'
    with d.client() as client:
        response = client.post("/createJob", content=body, headers={"Content-Type": "application/json"})
        assert response.status_code < 500
        strict_json(response.text)
        strict_json(client.get("/jobs").text)
    assert response.status_code == 400, response.text


def test_405_lists_allowed_methods(start_jqd):
    d = start(start_jqd)
    with d.client() as client:
        response = client.delete("/createJob")
    assert response.status_code == 405
    assert response.headers.get("Allow", "").replace(" ", "").split(",").count("POST") == 1, response.headers


def test_connection_survives_an_unread_body(start_jqd):
    d = start(start_jqd)
    too_large = b'{"type":"noop","payload":{}}' + b" " * (1 << 20)
    answers = []
    for _ in range(3):
        with httpx.Client(base_url=d.url, timeout=3) as client:
            first = client.post("/createJob", content=too_large, headers={"Content-Type": "application/json"})
            try:
                answers.append((first.status_code, client.get("/healthz").status_code))
            except httpx.ReadTimeout:
                answers.append((first.status_code, "no answer within 3 s"))
    assert answers == [(413, 200)] * 3, answers
