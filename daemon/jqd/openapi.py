"""The OpenAPI 3.0.3 document served at /openapi.json.

It describes exactly what `jqd.http` does: every route, every status each one can answer, and
request bodies with the constraints `jqd.validation` and the built-in payload validators
enforce (the bounds are imported from there, so they cannot drift apart). The `type` of a job
is the list of job types this daemon registered; each built-in type documents its payload.
tests/unit/test_openapi.py checks the document against the app's routes, and
tests/integration/test_schemathesis.py checks a running daemon against the document.
"""

from __future__ import annotations

import attrs

from jqd import __version__
from jqd.config import Config
from jqd.jobtypes import basic as basic_type, email as email_type, webhook as webhook_type
from jqd.model import JobState
from jqd.runstate import Mode
from jqd.validation import MAX_DELAY, MAX_RETRIES, MAX_TIMEOUT, QUEUE_NAME, TYPE_NAME

INT64_MAX = 2**63 - 1  # SQLite INTEGER: the largest job id
MAX_BATCH = attrs.fields(Config).max_batch.default
JSON = "application/json"
_BLANK = r"\s\x00-\x1f\x7f\x85"  # regex class body: whitespace and control characters (str.isspace)


# --- small builders ---------------------------------------------------------------------------

def ref(name: str, kind: str = "schemas") -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def string(**kw) -> dict:
    return {"type": "string", **kw}


def integer(lo: int, hi: int | None = None, **kw) -> dict:
    return {"type": "integer", "minimum": lo, **({"maximum": hi} if hi is not None else {}), **kw}


def number(lo: float, hi: float, *, exclusive_lo: bool = False, **kw) -> dict:
    return {"type": "number", "minimum": lo, "maximum": hi, **({"exclusiveMinimum": True} if exclusive_lo else {}),
            **kw}


def nullable(schema: dict) -> dict:
    return {**schema, "nullable": True}


def strict_object(properties: dict, required=(), **kw) -> dict:
    """An object with exactly these properties (unknown keys refused)."""
    return {"type": "object", "properties": properties, **({"required": list(required)} if required else {}),
            "additionalProperties": False, **kw}


def response(description: str, schema: dict | None = None, *, headers: list[str] | None = None,
             media: str = JSON) -> dict:
    out: dict = {"description": description}
    if headers:
        out["headers"] = {name: ref(name, "headers") for name in headers}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    return out


def errors(*names: str) -> dict:
    """Shared error responses by status, e.g. errors("400", "401")."""
    return {status: ref(ERROR_RESPONSES[status][0], "responses") for status in names}


def case_insensitive(word: str) -> str:
    return "".join(f"[{c.upper()}{c.lower()}]" for c in word)


# --- shared responses and headers -------------------------------------------------------------

# status -> (component name, description, Retry-After?)
ERROR_RESPONSES = {
    "400": ("BadRequest", "Malformed JSON (`malformed_json`), an invalid field (`invalid_field`) or an "
                          "unknown field or query parameter (`unknown_field`)", False),
    "401": ("Unauthorized", "Missing or wrong bearer token (`unauthorized`); only when JQD_API_TOKEN is set. "
                            "Carries `WWW-Authenticate: Bearer realm=\"jqd\"`", False),
    "404": ("NotFound", "No such job (`not_found`)", False),
    "409": ("Conflict", "The idempotency key belongs to a job with another type or payload "
                        "(`idempotency_conflict`), or the job is not in a state that allows this (`invalid_state`)",
            False),
    "413": ("TooLarge", "The body is larger than JQD_MAX_BODY (`body_too_large`)", False),
    "415": ("UnsupportedMediaType", "The body is not `Content-Type: application/json` (`unsupported_media_type`)",
            False),
    "422": ("Unprocessable", "Unknown job type (`unknown_type`) or a payload its type rejects, e.g. a webhook "
                             "host not in JQD_WEBHOOK_ALLOWED_HOSTS (`invalid_payload`)", False),
    "429": ("QueueFull", "More than JQD_MAX_QUEUED jobs are queued (`queue_full`); retry after `Retry-After`", True),
    "503": ("Unavailable", "Intake closed while draining or stopping (`draining`), or the store cannot take "
                           "writes (`storage_full`, `storage_unavailable`); nothing was written", True),
}

HEADERS = {
    "Retry-After": {"description": "Seconds to wait before retrying", "required": True, "schema": integer(0)},
    "Location": {"description": "The job's URL, `/jobs/{id}`", "required": True,
                 "schema": string(pattern=r"^/jobs/[0-9]+$")},
    "WWW-Authenticate": {"description": "The authentication scheme", "required": True, "schema": string()},
}


def error_response(name: str, description: str, retry_after: bool) -> dict:
    headers = ["Retry-After"] if retry_after else ["WWW-Authenticate"] if name == "Unauthorized" else None
    return response(description, ref("Error"), headers=headers)


# --- schemas ----------------------------------------------------------------------------------

def payload_schemas() -> dict:
    """The payloads of the built-in job types, as their validators check them."""
    text = string(maxLength=email_type.MAX_MESSAGE, description="at most 1 MiB as UTF-8")
    methods = "^(" + "|".join(case_insensitive(m) for m in sorted(webhook_type.METHODS)) + ")$"
    return {
        "NoopPayload": strict_object({}, maxProperties=0, description="`noop` takes an empty object"),
        "SleepPayload": strict_object({"seconds": number(0, basic_type.MAX_SLEEP)}, ["seconds"]),
        "EmailPayload": strict_object(
            {"email": string(maxLength=email_type.MAX_ADDRESS, pattern=f"^[^@,;<>{_BLANK}]+@[^@,;<>{_BLANK}]+$",
                             description="one address, like user@example.com"),
             "subject": string(maxLength=email_type.MAX_SUBJECT, pattern=r"^[^\r\n]*$"),
             "message": text, "body": {**text, "description": "alias of `message`"}},
            ["email", "subject"], oneOf=[{"required": ["message"]}, {"required": ["body"]}],
            description="exactly one of `message` or `body`"),
        "WebhookPayload": strict_object(
            {"url": string(maxLength=webhook_type.MAX_URL,
                           pattern=f"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#@{_BLANK}]+([/?#][^{_BLANK}]*)?$",
                           description="an http(s) URL without credentials, whose host is in "
                                       "JQD_WEBHOOK_ALLOWED_HOSTS (else 422)"),
             "method": string(pattern=methods, default="POST", description="case-insensitive"),
             "headers": {"type": "object",
                         "additionalProperties": string(pattern=f"^{webhook_type._FIELD_VALUE.pattern}$"),
                         "description": "names are HTTP tokens; Host, Content-Length, Transfer-Encoding, "
                                        "Jqd-Job-Id and Jqd-Attempt are set by jqd and refused"},
             "json": {"description": "any JSON value, sent as the JSON body"},
             "body": string(description="sent as the raw body"),
             "timeout_seconds": number(0, webhook_type.MAX_TIMEOUT, exclusive_lo=True,
                                       default=webhook_type.DEFAULT_TIMEOUT)},
            ["url"], **{"not": {"required": ["json", "body"]}}, description="at most one of `json` or `body`"),
    }


def job_request(type_schema: dict, payload: dict) -> dict:
    """One job of a submission: the fields `validation.parse_new_job` accepts."""
    return strict_object({
        "type": type_schema,
        "payload": payload,
        "max_retries": integer(0, MAX_RETRIES, default=3, description="retries after the first attempt"),
        "idempotency_key": nullable(string(minLength=1, maxLength=255)),
        "run_at": string(format="date-time", description="RFC 3339 with an offset, at most 10 years ahead"),
        "delay_seconds": number(0, MAX_DELAY),
        "priority": integer(0, 9, default=0, description="0 runs first"),
        "queue": string(pattern=QUEUE_NAME.pattern, default="default"),
        "timeout_seconds": number(0, MAX_TIMEOUT, exclusive_lo=True, description="limit of one attempt"),
    }, ["type", "payload"], **{"not": {"required": ["run_at", "delay_seconds"]}},
        description="`run_at` or `delay_seconds`, not both; unknown fields are refused")


def job_request_schemas(job_types: list[str]) -> dict:
    """`JobRequest` is one variant per built-in type (its payload checked) plus one for custom types."""
    builtins = {"noop": "Noop", "sleep": "Sleep", "email": "Email", "webhook": "Webhook"}
    out, mapping = {}, {}
    for name in job_types:
        if name in builtins:
            title = builtins[name]
            out[f"{title}JobRequest"] = job_request(string(enum=[name]), ref(f"{title}Payload"))
            mapping[name] = f"#/components/schemas/{title}JobRequest"
    custom = [name for name in job_types if name not in builtins]
    if custom or not out:
        type_schema = string(enum=custom) if custom else string(pattern=TYPE_NAME.pattern)
        out["CustomJobRequest"] = job_request(type_schema, {"type": "object", "description": "checked by the type"})
        mapping.update({name: "#/components/schemas/CustomJobRequest" for name in custom})
    variants = [ref(name) for name in out]
    out["JobRequest"] = {"oneOf": variants, "discriminator": {"propertyName": "type", "mapping": mapping}} \
        if mapping else variants[0]
    return out


def time_field(nullable_: bool = False) -> dict:
    schema = string(format="date-time", description="RFC 3339, UTC")
    return nullable(schema) if nullable_ else schema


def job_schema() -> dict:
    """`Job.to_json()`."""
    anything = {"description": "any JSON value, or null"}
    return strict_object({
        "id": integer(1, INT64_MAX), "type": string(), "payload": {"type": "object"},
        "state": string(enum=[s.value for s in JobState]), "queue": string(), "priority": integer(0, 9),
        "run_at": time_field(), "max_retries": integer(0), "attempts": integer(0),
        "rescues": integer(0, description="lapsed leases and crash recoveries, apart from attempts"),
        "timeout_seconds": nullable({"type": "number"}), "idempotency_key": nullable(string()),
        "last_error": nullable(string()), "result": anything, "progress": anything,
        "created_at": time_field(), "started_at": time_field(True), "finished_at": time_field(True),
    }, ["id", "type", "payload", "state", "queue", "priority", "run_at", "max_retries", "attempts", "rescues",
        "timeout_seconds", "idempotency_key", "last_error", "result", "progress", "created_at", "started_at",
        "finished_at"])


def schemas(job_types: list[str]) -> dict:
    counts = {"type": "object", "additionalProperties": integer(0)}
    return {
        "Error": strict_object({"error": string(), "code": string()}, ["error", "code"]),
        "Job": job_schema(),
        **job_request_schemas(job_types),
        **payload_schemas(),
        "JobBatchRequest": strict_object(
            {"jobs": {"type": "array", "items": ref("JobRequest"), "minItems": 1, "maxItems": MAX_BATCH}}, ["jobs"]),
        "JobBatch": strict_object({"jobs": {"type": "array", "items": ref("Job")}}, ["jobs"],
                                  description="the jobs in request order"),
        "JobPage": strict_object(
            {"jobs": {"type": "array", "items": ref("Job")},
             "next_after": nullable(integer(1, INT64_MAX, description="pass as `after` for the next page; "
                                                                         "null on the last page"))},
            ["jobs", "next_after"]),
        "Stats": strict_object({
            "state": string(enum=["paused", *(m.value for m in Mode)]), "version": string(),
            "uptime_seconds": {"type": "number", "minimum": 0}, "counts": counts,
            "queues": {"type": "object", "additionalProperties": counts}, "in_flight": integer(0),
            "workers": integer(0), "writable": {"type": "boolean"},
            "paused_queues": {"type": "array", "items": string()},
        }, ["state", "version", "uptime_seconds", "counts", "queues", "in_flight", "workers", "writable",
            "paused_queues"]),
        "Status": strict_object({"status": string(enum=["ok", "ready"])}, ["status"]),
    }


# --- operations -------------------------------------------------------------------------------

def operation(op_id: str, summary: str, responses: dict, **kw) -> dict:
    return {"operationId": op_id, "summary": summary, **kw, "responses": responses}


def body(schema_name: str) -> dict:
    return {"required": True, "content": {JSON: {"schema": ref(schema_name)}}}


def paths() -> dict:
    job_id = [ref("JobId", "parameters")]
    job = ref("Job")
    write_errors = errors("400", "401", "409", "413", "415", "422", "429", "503")
    transition = {"200": response("The job after the transition", job), **errors("401", "404", "409", "503")}
    return {
        "/createJob": {"post": operation("createJob", "Submit a job", {
            "201": response("Created and durably committed", job, headers=["Location"]),
            "200": response("Replay: the idempotency key matched the same type and payload; the job as it is now",
                            job, headers=["Location"]),
            **write_errors}, requestBody=body("JobRequest"))},
        "/createJobs": {"post": operation("createJobs", "Submit up to 1000 jobs in one transaction (all or none)", {
            "201": response("At least one job created; all in request order", ref("JobBatch")),
            "200": response("Every job was an idempotent replay", ref("JobBatch")),
            **write_errors}, requestBody=body("JobBatchRequest"))},
        "/jobs": {"get": operation("listJobs", "A page of jobs, newest first", {
            "200": response("The page, with the cursor of the next one", ref("JobPage")), **errors("400", "401")},
            parameters=[
                {"name": "state", "in": "query", "schema": string(enum=[s.value for s in JobState])},
                {"name": "type", "in": "query", "schema": string()},
                {"name": "queue", "in": "query", "schema": string()},
                {"name": "limit", "in": "query", "schema": integer(1, 1000, default=50)},
                {"name": "after", "in": "query", "schema": integer(1, INT64_MAX),
                 "description": "only jobs with a smaller id (the previous page's `next_after`)"},
            ])},
        "/jobs/{id}": {"get": operation("getJob", "One job", {
            "200": response("The job", job), **errors("401", "404")}, parameters=job_id)},
        "/jobs/{id}/cancel": {"post": operation(
            "cancelJob", "queued or running -> cancelled (a running handler is cancelled)", transition,
            parameters=job_id)},
        "/jobs/{id}/retry": {"post": operation(
            "retryJob", "dead or cancelled -> queued, attempts reset", transition, parameters=job_id)},
        "/healthz": {"get": operation("healthz", "Liveness: 200 while the process serves", {
            "200": response("Serving", ref("Status"))}, security=[])},
        "/readyz": {"get": operation("readyz", "Readiness: accepting jobs", {
            "200": response("Accepting jobs", ref("Status")), **errors("503")}, security=[])},
        "/stats": {"get": operation("stats", "Counts by state and queue, in-flight jobs, workers, daemon state", {
            "200": response("Statistics", ref("Stats")), **errors("401")})},
        "/metrics": {"get": operation("metrics", "Prometheus metrics", {
            "200": response("Prometheus text exposition format 0.0.4", string(), media="text/plain"),
            **errors("401")})},
        "/openapi.json": {"get": operation("openapi", "This document", {
            "200": response("The OpenAPI 3.0.3 document", {"type": "object"}), **errors("401")})},
    }


def openapi_document(job_types: list[str]) -> dict:
    """The document for a daemon whose registered job types are `job_types`."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "jqd", "version": __version__,
                 "description": "A crash-resilient, persistent background job daemon. Every error is "
                                "`{\"error\": message, \"code\": machine code}`."},
        "security": [{"bearerAuth": []}, {}],
        "paths": paths(),
        "components": {
            "securitySchemes": {"bearerAuth": {
                "type": "http", "scheme": "bearer",
                "description": "`Authorization: Bearer <token>`, required on every endpoint but /healthz and "
                               "/readyz only when the daemon runs with JQD_API_TOKEN; otherwise not checked"}},
            "parameters": {"JobId": {"name": "id", "in": "path", "required": True,
                                     "schema": integer(1, INT64_MAX)}},
            "headers": HEADERS,
            "responses": {name: error_response(name, text, retry)
                          for name, text, retry in ERROR_RESPONSES.values()},
            "schemas": schemas(job_types),
        },
    }
