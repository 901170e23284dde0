"""Strict parsing of submissions: every field checked, unknown fields refused.

A `RequestError` carries the HTTP status and machine code the API documents; nothing is
written for a request that fails here. JSON is parsed with NaN/Infinity refused and
nesting bounded, so hostile bodies get a 400 rather than an exception.
"""

from __future__ import annotations

import hashlib
import json
import math
import re

import attrs
import orjson

from jqd.handlers import PayloadError, Registry
from jqd.model import JobState, parse_time
from jqd.store.params import ListParams, NewJob

MAX_DELAY = 10 * 365 * 86400.0  # seconds: the furthest a job may be scheduled
MAX_TIMEOUT = 7 * 86400.0
MAX_RETRIES = 100
MAX_ID = 2**63 - 1  # SQLite's largest INTEGER: no job id can be larger
QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
TYPE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")
JOB_FIELDS = frozenset({"type", "payload", "max_retries", "idempotency_key", "run_at", "delay_seconds",
                        "priority", "queue", "timeout_seconds"})


@attrs.frozen
class RequestError(Exception):
    status: int
    code: str
    message: str


def _bad(message: str, code: str = "invalid_field") -> RequestError:
    return RequestError(400, code, message)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is beyond the range of a double")
    return value


def parse_json(body: bytes) -> object:
    """Strict JSON: no NaN/Infinity, no numbers that overflow a double, no lone surrogates
    (SQLite stores UTF-8, which cannot hold them), bounded nesting."""
    try:
        value = json.loads(body, parse_constant=_reject_constant, parse_float=_finite_float)
        if b"\\u" in body:  # only \u escapes can smuggle in a lone surrogate
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        return value
    except RecursionError:
        raise _bad("JSON nested too deeply", "malformed_json") from None
    except UnicodeEncodeError:
        raise _bad("malformed JSON: a \\u escape encodes a lone surrogate, which is not text", "malformed_json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"malformed JSON: {exc}", "malformed_json") from None


def canonical_json(value: object) -> str:
    """Compact JSON text of a parsed value (orjson; the stdlib for integers beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def request_hash(type_: str, payload: dict) -> str:
    digest = hashlib.sha256(json.dumps([type_, payload], sort_keys=True, separators=(",", ":")).encode())
    return digest.hexdigest()


def _integer(body: dict, name: str, lo: int, hi: int, default: int, where: str) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _bad(f"{where}{name}: expected an integer from {lo} to {hi}")
    return value


def _number(body: dict, name: str, lo: float, hi: float, where: str, *, exclusive_lo: bool = False) -> float:
    value = body[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(f"{where}{name}: expected a number")
    if value > hi or value < lo or (exclusive_lo and value == lo):
        bound = f"more than {lo:g}" if exclusive_lo else f"at least {lo:g}"
        raise _bad(f"{where}{name}: must be {bound} and at most {hi:g}")
    return float(value)


def parse_new_job(body: object, registry: Registry, now: float, where: str = "") -> NewJob:
    """Validate one job of a submission; `where` prefixes messages (e.g. "jobs[3].")."""
    if not isinstance(body, dict):
        raise _bad(f"{where.rstrip('.') or 'body'}: expected a JSON object")
    if not body.keys() <= JOB_FIELDS:
        unknown = sorted(set(body) - JOB_FIELDS)
        raise _bad(f"{where}{unknown[0]}: unknown field (allowed: {', '.join(sorted(JOB_FIELDS))})",
                   "unknown_field")
    type_ = body.get("type")
    if not isinstance(type_, str) or not TYPE_NAME.fullmatch(type_):
        raise _bad(f"{where}type: required, a job type name (letters, digits, _ . : -)")
    if "payload" not in body:
        raise _bad(f"{where}payload: required, a JSON object")
    payload = body["payload"]
    if not isinstance(payload, dict):
        raise _bad(f"{where}payload: expected a JSON object")
    max_retries = _integer(body, "max_retries", 0, MAX_RETRIES, 3, where)
    priority = _integer(body, "priority", 0, 9, 0, where)
    queue = body.get("queue", "default")
    if not isinstance(queue, str) or not QUEUE_NAME.fullmatch(queue):
        raise _bad(f"{where}queue: 1 to 64 characters among letters, digits, _ . : -")
    key = body.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 255):
        raise _bad(f"{where}idempotency_key: a string of 1 to 255 characters")
    run_at = None
    if "run_at" in body and "delay_seconds" in body:
        raise _bad(f"{where}run_at and delay_seconds: give one or the other")
    if "run_at" in body:
        try:
            run_at = parse_time(body["run_at"])
        except ValueError as exc:
            raise _bad(f"{where}run_at: {exc}") from None
        if run_at > now + MAX_DELAY:
            raise _bad(f"{where}run_at: more than 10 years ahead")
        if run_at < 0:
            raise _bad(f"{where}run_at: before 1970-01-01T00:00:00Z")
    elif "delay_seconds" in body:
        run_at = now + _number(body, "delay_seconds", 0, MAX_DELAY, where)
    timeout = None
    if "timeout_seconds" in body:
        timeout = _number(body, "timeout_seconds", 0, MAX_TIMEOUT, where, exclusive_lo=True)
    job_type = registry.get(type_)
    if job_type is None:
        raise RequestError(422, "unknown_type",
                           f"{where}type: unknown job type {type_!r} (known: {', '.join(registry.names())})")
    if job_type.validate is not None:
        try:
            job_type.validate(payload)
        except PayloadError as exc:
            raise RequestError(422, "invalid_payload", f"{where}payload: {exc}") from None
    return NewJob(type=type_, payload_json=canonical_json(payload), queue=queue, priority=priority,
                  run_at=run_at, max_retries=max_retries, timeout_seconds=timeout, idempotency_key=key,
                  request_hash=request_hash(type_, payload) if key is not None else None, payload=payload)


def parse_batch(body: object, registry: Registry, now: float, max_batch: int) -> list[NewJob]:
    if not isinstance(body, dict) or set(body) != {"jobs"}:
        raise _bad('body: expected {"jobs": [...]} and nothing else')
    jobs = body["jobs"]
    if not isinstance(jobs, list) or not 1 <= len(jobs) <= max_batch:
        raise _bad(f"jobs: expected a list of 1 to {max_batch} jobs")
    return [parse_new_job(job, registry, now, f"jobs[{i}].") for i, job in enumerate(jobs)]


def parse_list_query(args) -> ListParams:
    unknown = sorted(set(args) - {"state", "type", "queue", "limit", "after"})
    if unknown:
        raise _bad(f"{unknown[0]}: unknown query parameter", "unknown_field")
    state = args.get("state")
    if state is not None and state not in {s.value for s in JobState}:
        raise _bad(f"state: one of {', '.join(s.value for s in JobState)}")
    limit, after = 50, None
    try:
        if "limit" in args:
            limit = int(args["limit"])
        if "after" in args:
            after = int(args["after"])
    except ValueError:
        raise _bad("limit and after: expected integers") from None
    if not 1 <= limit <= 1000:
        raise _bad("limit: from 1 to 1000")
    if after is not None and not 1 <= after <= MAX_ID:
        raise _bad("after: a job id (positive integer)")
    return ListParams(state=state, type=args.get("type"), queue=args.get("queue"), limit=limit, after=after)
