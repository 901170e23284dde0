"""The OpenAPI document: valid OpenAPI 3.0.3, in step with the app's routes, and with request
schemas that accept and refuse exactly what `jqd.validation` and the payload validators do."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate as validate_spec

from jqd.config import Config
from jqd.http import HttpDeps, create_app
from jqd.handlers import Registry
from jqd.jobtypes import builtin_types
from jqd.model import Job, JobState
from jqd.openapi import openapi_document
from jqd.validation import MAX_DELAY, MAX_TIMEOUT, RequestError, parse_new_job

BUILTINS = ["email", "noop", "sleep", "webhook"]
HTTP_METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
IMPLICIT = {"HEAD", "OPTIONS"}  # added by Quart to every route, not documented


@pytest.fixture(scope="module")
def doc() -> dict:
    return openapi_document(BUILTINS + ["resize"])


@pytest.fixture(scope="module")
def registry() -> Registry:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: None))
    config = Config(webhook_allowed_hosts=frozenset({"127.0.0.1"}))
    return Registry(builtin_types(config, client))


def schema_validator(doc: dict, name: str) -> OAS30Validator:
    """A validator for components/schemas/<name>, resolving $refs inside `doc`."""
    return OAS30Validator({"$ref": f"#/components/schemas/{name}", "components": doc["components"]},
                          format_checker=oas30_format_checker)


def deref(doc: dict, node: dict) -> dict:
    while isinstance(node, dict) and "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def app_routes() -> set[tuple[str, str]]:
    deps = HttpDeps(store=None, registry=None, state=None, workers=None, wakeup=None, metrics=None,
                    api_token=None, max_body=1 << 20, max_batch=1000, started_at=0.0)
    app = create_app(deps)
    routes = set()
    for rule in app.app.url_map.iter_rules():  # create_app wraps the Quart app (InFlight)
        path = re.sub(r"<(?:[a-z]+:)?[a-z_]+>", "{}", rule.rule)
        routes |= {(path, method.lower()) for method in rule.methods - IMPLICIT}
    return routes


def documented_routes(doc: dict) -> set[tuple[str, str]]:
    return {(re.sub(r"\{[a-z_]+\}", "{}", path), method)
            for path, item in doc["paths"].items() for method in item if method in HTTP_METHODS}


# --- the document as a whole ------------------------------------------------------------------

@pytest.mark.parametrize("job_types", [BUILTINS, BUILTINS + ["resize", "a.b:c-d"], ["noop"], ["custom"], []])
def test_document_is_valid_openapi_3_0(job_types):
    document = openapi_document(job_types)
    assert document["openapi"] == "3.0.3"
    validate_spec(document)


def test_every_app_route_is_documented_and_vice_versa(doc):
    app = {route for route in app_routes() if not route[0].startswith("/static/")}
    assert app == documented_routes(doc)


def test_app_has_no_undocumented_route(doc):
    assert app_routes() == documented_routes(doc)


def test_path_ids_are_int64(doc):
    param = doc["components"]["parameters"]["JobId"]
    assert param["schema"] == {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}
    for path, item in doc["paths"].items():
        if "{id}" in path:
            for op in item.values():
                assert op["parameters"] == [{"$ref": "#/components/parameters/JobId"}]


def test_type_enum_is_the_registered_job_types(doc):
    variants = [deref(doc, v) for v in doc["components"]["schemas"]["JobRequest"]["oneOf"]]
    names = [name for v in variants for name in v["properties"]["type"]["enum"]]
    assert sorted(names) == sorted(BUILTINS + ["resize"])
    mapping = doc["components"]["schemas"]["JobRequest"]["discriminator"]["mapping"]
    assert set(mapping) == set(names)


def test_request_bodies_refuse_unknown_fields(doc):
    schemas = doc["components"]["schemas"]
    strict = ["JobBatchRequest", "NoopPayload", "SleepPayload", "EmailPayload", "WebhookPayload"]
    strict += [name for name in schemas if name.endswith("JobRequest") and name != "JobRequest"]
    for name in strict:
        assert schemas[name]["additionalProperties"] is False, name
    for path, item in doc["paths"].items():
        for op in item.values():
            if "requestBody" in op:
                assert op["requestBody"]["required"] is True
                assert set(op["requestBody"]["content"]) == {"application/json"}


def test_security_is_optional_bearer_but_health_checks_are_open(doc):
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer") and "JQD_API_TOKEN" in scheme["description"]
    assert doc["security"] == [{"bearerAuth": []}, {}]
    for path in ("/healthz", "/readyz"):
        assert doc["paths"][path]["get"]["security"] == []
    for path, item in doc["paths"].items():
        for op in item.values():
            if path not in ("/healthz", "/readyz"):
                assert "security" not in op and "401" in op["responses"], path


def test_response_headers(doc):
    responses = doc["components"]["responses"]
    for name in ("QueueFull", "Unavailable"):
        assert "Retry-After" in responses[name]["headers"]
    assert "WWW-Authenticate" in responses["Unauthorized"]["headers"]
    create = doc["paths"]["/createJob"]["post"]["responses"]
    assert "Location" in create["201"]["headers"] and "Location" in create["200"]["headers"]
    assert create["429"] == {"$ref": "#/components/responses/QueueFull"}
    assert create["503"] == {"$ref": "#/components/responses/Unavailable"}
    assert doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"].keys() == {"text/plain"}


# --- the Job and Error schemas against the code that produces them ------------------------------

def make_job(**changes) -> Job:
    fields = dict(id=7, type="noop", payload={"a": [1, None]}, state=JobState.QUEUED, queue="default",
                  priority=0, run_at=time.time(), max_retries=3, attempts=0, rescues=0, timeout_seconds=None,
                  idempotency_key=None, last_error=None, result=None, progress=None, created_at=time.time(),
                  started_at=None, finished_at=None)
    return Job(**{**fields, **changes})


@pytest.mark.parametrize("job", [
    make_job(),
    make_job(state=JobState.SUCCEEDED, attempts=1, timeout_seconds=2.5, idempotency_key="k", result={"ok": True},
             progress=0.5, started_at=time.time(), finished_at=time.time()),
    make_job(state=JobState.DEAD, attempts=4, last_error="boom", result=[1, "x"], progress="half"),
])
def test_job_schema_matches_to_json(doc, job):
    body = job.to_json()
    schema_validator(doc, "Job").validate(body)
    assert set(doc["components"]["schemas"]["Job"]["required"]) == set(body)


def test_error_schema():
    doc = openapi_document(BUILTINS)
    schema_validator(doc, "Error").validate({"error": "nope", "code": "invalid_field"})
    assert not schema_validator(doc, "Error").is_valid({"error": "nope"})


# --- request schemas agree with the server's validation ---------------------------------------

NOW = time.time()
NOOP = {"type": "noop", "payload": {}}
MAIL = {"email": "a@example.com", "subject": "hi"}
HOOK = {"url": "http://127.0.0.1:9/x"}


def job(**fields) -> dict:
    return {**NOOP, **fields}


AGREEMENT = [  # (body, accepted by both the schema and parse_new_job)
    (NOOP, True), ({"type": "noop"}, False), ({"payload": {}}, False), (job(payload=[]), False),
    (job(extra=1), False), (job(type="nope"), False), (job(type=7), False),
    (job(priority=0), True), (job(priority=9), True), (job(priority=10), False), (job(priority=-1), False),
    (job(priority=True), False), (job(priority=1.5), False), (job(priority="1"), False),
    (job(max_retries=0), True), (job(max_retries=100), True), (job(max_retries=101), False),
    (job(max_retries=None), False),
    (job(queue="a.b:c_d-9"), True), (job(queue="q" * 64), True), (job(queue="q" * 65), False),
    (job(queue=""), False), (job(queue="a b"), False), (job(queue="'); DROP TABLE jobs;--"), False),
    (job(queue="é"), False), (job(queue=None), False),
    (job(idempotency_key="k"), True), (job(idempotency_key="k" * 255), True), (job(idempotency_key=None), True),
    (job(idempotency_key=""), False), (job(idempotency_key="k" * 256), False), (job(idempotency_key=5), False),
    (job(idempotency_key="'); DROP TABLE jobs;-- ✓"), True),
    (job(run_at="2026-01-31T12:00:00Z"), True), (job(run_at="2026-01-31T12:00:00.5+02:00"), True),
    (job(run_at="2026-01-31"), False), (job(run_at="2026-01-31T12:00:00"), False), (job(run_at=5), False),
    (job(run_at="tomorrow"), False), (job(run_at=None), False),
    (job(delay_seconds=0), True), (job(delay_seconds=MAX_DELAY), True), (job(delay_seconds=-0.5), False),
    (job(delay_seconds=MAX_DELAY + 1), False), (job(delay_seconds="1"), False),
    (job(delay_seconds=1, run_at="2026-01-31T12:00:00Z"), False),
    (job(timeout_seconds=0.001), True), (job(timeout_seconds=MAX_TIMEOUT), True), (job(timeout_seconds=0), False),
    (job(timeout_seconds=MAX_TIMEOUT + 1), False), (job(timeout_seconds=False), False),
    (job(payload={"x": 1}), False),
    ({"type": "sleep", "payload": {"seconds": 0}}, True), ({"type": "sleep", "payload": {"seconds": 86400}}, True),
    ({"type": "sleep", "payload": {"seconds": 86401}}, False), ({"type": "sleep", "payload": {}}, False),
    ({"type": "sleep", "payload": {"seconds": "1"}}, False),
    ({"type": "email", "payload": {**MAIL, "message": "m"}}, True),
    ({"type": "email", "payload": {**MAIL, "body": "'); DROP TABLE jobs;--"}}, True),
    ({"type": "email", "payload": {**MAIL, "body": "m", "message": "m"}}, False),
    ({"type": "email", "payload": MAIL}, False),
    ({"type": "email", "payload": {**MAIL, "email": "a@b@c", "message": "m"}}, False),
    ({"type": "email", "payload": {**MAIL, "email": "a b@c", "message": "m"}}, False),
    ({"type": "email", "payload": {**MAIL, "email": "a@b,c", "message": "m"}}, False),
    ({"type": "email", "payload": {**MAIL, "email": "@c", "message": "m"}}, False),
    ({"type": "email", "payload": {**MAIL, "subject": "a\nb", "message": "m"}}, False),
    ({"type": "email", "payload": {**MAIL, "subject": "s" * 999, "message": "m"}}, False),
    ({"type": "email", "payload": {**MAIL, "message": "m", "cc": "x"}}, False),
    ({"type": "webhook", "payload": HOOK}, True),
    ({"type": "webhook", "payload": {**HOOK, "method": "put", "headers": {"X-A": "b c"}, "json": [1]}}, True),
    ({"type": "webhook", "payload": {**HOOK, "body": "x", "timeout_seconds": 300}}, True),
    ({"type": "webhook", "payload": {**HOOK, "body": "x", "json": 1}}, False),
    ({"type": "webhook", "payload": {**HOOK, "method": "TRACE"}}, False),
    ({"type": "webhook", "payload": {**HOOK, "headers": {"X-A": " lead"}}}, False),
    ({"type": "webhook", "payload": {**HOOK, "headers": {"X-A": 1}}}, False),
    ({"type": "webhook", "payload": {**HOOK, "timeout_seconds": 0}}, False),
    ({"type": "webhook", "payload": {"url": "ftp://127.0.0.1/"}}, False),
    ({"type": "webhook", "payload": {"url": "http://u:p@127.0.0.1/"}}, False),
    ({"type": "webhook", "payload": {"url": "http://127.0.0.1/a b"}}, False),
    ({"type": "webhook", "payload": {}}, False),
]


def server_accepts(body: dict, registry: Registry) -> bool:
    try:
        parse_new_job(body, registry, NOW)
    except RequestError:
        return False
    return True


@pytest.mark.parametrize("body, accepted", AGREEMENT)
def test_job_request_schema_agrees_with_validation(doc, registry, body, accepted):
    assert schema_validator(doc, "JobRequest").is_valid(body) is accepted
    assert server_accepts(body, registry) is accepted


def test_batch_schema_bounds(doc):
    batch = schema_validator(doc, "JobBatchRequest")
    assert batch.is_valid({"jobs": [NOOP]}) and batch.is_valid({"jobs": [NOOP] * 1000})
    assert not batch.is_valid({"jobs": []}) and not batch.is_valid({"jobs": [NOOP] * 1001})
    assert not batch.is_valid({"jobs": [NOOP], "more": 1}) and not batch.is_valid([NOOP])


def test_names_with_a_trailing_newline_are_refused(registry):
    # The document's patterns have ECMA-262 semantics (`$` only at the very end); Python's `$` also
    # matches before a final newline, so the server must fullmatch (jsonschema here would accept).
    assert not server_accepts(job(queue="abc\n"), registry)
    assert not server_accepts(job(type="noop\n"), registry)
