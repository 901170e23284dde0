"""One frozen params object per store operation (river's driver seam): the SQLite backend and
a future PostgreSQL one take the same objects."""

from __future__ import annotations

import enum
from collections.abc import Mapping

import attrs


@attrs.frozen
class NewJob:
    type: str
    payload_json: str  # canonical JSON of the payload object
    queue: str = "default"
    priority: int = 0
    run_at: float | None = None  # None: now
    max_retries: int = 3
    timeout_seconds: float | None = None
    idempotency_key: str | None = None
    request_hash: str | None = None
    payload: dict | None = None  # the parsed payload, when the caller has it (saves a parse)


@attrs.frozen
class ClaimParams:
    limit: int  # free worker slots: never claim more
    now: float
    owner: str  # this daemon run's id
    token: int  # lease token of this claim, unique within the daemon run
    lease_expires_at: float
    excluded_queues: frozenset[str] = frozenset()  # paused or at their limit
    queue_limits: Mapping[str, int] = attrs.field(factory=dict)  # queue -> free slots (limited queues only)


@attrs.frozen
class ClaimResult:
    jobs: list  # list[Job], in priority, run_at, id order
    next_run_at: float | None  # earliest run_at of a claimable job left queued


class Outcome(enum.Enum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # retry after `retry_at`, or dead when no retries are left
    PERMANENT = "permanent"  # dead at once
    INTERRUPTED = "interrupted"  # shutdown or drain: back to queued, attempt refunded


@attrs.frozen
class CompleteParams:
    job_id: int
    owner: str
    token: int
    outcome: Outcome
    now: float
    result_json: str | None = None
    error: str | None = None
    retry_at: float | None = None


@attrs.frozen
class CompleteResult:
    accepted: bool  # False: the lease no longer holds (stale attempt), nothing written
    state: str | None = None  # the state written


@attrs.frozen
class LeaseRenewParams:
    owner: str
    jobs: list  # [(job_id, token)]
    expires_at: float


@attrs.frozen
class RescueResult:
    requeued: list  # job ids put back to queued
    dead: list  # job ids dead-lettered (no attempts left)


@attrs.frozen
class ListParams:
    state: str | None = None
    type: str | None = None
    queue: str | None = None
    limit: int = 50
    after: int | None = None  # cursor: only ids below this one (newest first)
