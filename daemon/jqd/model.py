"""The job record and its state graph.

`Job` is an immutable snapshot of one row; the database is the only source of truth, so a
`Job` is never mutated, only re-read. Times are Unix seconds inside the daemon and RFC 3339
(UTC, `Z`) at the HTTP boundary.
"""

from __future__ import annotations

import enum
import functools
import json
from datetime import datetime, timezone

import attrs


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.DEAD, JobState.CANCELLED})

# The legal transitions, for documentation and tests; each one is a guarded SQL statement.
TRANSITIONS = {
    JobState.QUEUED: {JobState.RUNNING, JobState.CANCELLED},
    JobState.RUNNING: {JobState.SUCCEEDED, JobState.QUEUED, JobState.DEAD, JobState.CANCELLED},
    JobState.DEAD: {JobState.QUEUED},
    JobState.CANCELLED: {JobState.QUEUED},
    JobState.SUCCEEDED: set(),
}


def format_time(ts: float | None) -> str | None:
    """Unix seconds -> RFC 3339 in UTC with microseconds, e.g. 2026-11-27T21:06:13.123456Z."""
    if ts is None:
        return None
    return _format_time(ts)


@functools.lru_cache(maxsize=4096)  # a batch's jobs share created_at and run_at
def _format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> float:
    """RFC 3339 -> Unix seconds. Requires a date, a time and an offset (`Z` or `±hh:mm`)."""
    if not isinstance(text, str) or len(text) < 20 or text[10] not in "Tt ":
        raise ValueError("expected an RFC 3339 date-time such as 2026-01-31T12:00:00Z")
    normalized = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    try:
        parsed = datetime.fromisoformat(normalized)
    except ValueError:
        raise ValueError("expected an RFC 3339 date-time such as 2026-01-31T12:00:00Z") from None
    if parsed.tzinfo is None:
        raise ValueError("an RFC 3339 date-time needs an offset, e.g. Z or +02:00")
    return parsed.timestamp()


@attrs.frozen
class Job:
    id: int
    type: str
    payload: dict
    state: JobState
    queue: str
    priority: int
    run_at: float
    max_retries: int
    attempts: int
    rescues: int
    timeout_seconds: float | None
    idempotency_key: str | None
    last_error: str | None
    result: object
    progress: object
    created_at: float
    started_at: float | None
    finished_at: float | None
    lease_owner: str | None = None
    lease_token: int | None = None

    COLUMNS = (
        "id, type, payload, state, queue, priority, run_at, max_retries, attempts, rescues, "
        "timeout_seconds, idempotency_key, last_error, result, progress, created_at, "
        "started_at, finished_at, lease_owner, lease_token"
    )

    @classmethod
    def from_row(cls, row) -> "Job":
        """Build from a row selected with `Job.COLUMNS`, in that order."""
        (id_, type_, payload, state, queue, priority, run_at, max_retries, attempts, rescues,
         timeout_seconds, key, last_error, result, progress, created_at, started_at,
         finished_at, lease_owner, lease_token) = row
        return cls(
            id=id_, type=type_, payload=json.loads(payload), state=JobState(state), queue=queue,
            priority=priority, run_at=run_at, max_retries=max_retries, attempts=attempts,
            rescues=rescues, timeout_seconds=timeout_seconds, idempotency_key=key,
            last_error=last_error,
            result=json.loads(result) if result is not None else None,
            progress=json.loads(progress) if progress is not None else None,
            created_at=created_at, started_at=started_at, finished_at=finished_at,
            lease_owner=lease_owner, lease_token=lease_token,
        )

    def to_json(self) -> dict:
        """The job as the HTTP API shows it (lease internals stay inside)."""
        return {
            "id": self.id,
            "type": self.type,
            "payload": self.payload,
            "state": self.state.value,
            "queue": self.queue,
            "priority": self.priority,
            "run_at": format_time(self.run_at),
            "max_retries": self.max_retries,
            "attempts": self.attempts,
            "rescues": self.rescues,
            "timeout_seconds": self.timeout_seconds,
            "idempotency_key": self.idempotency_key,
            "last_error": self.last_error,
            "result": self.result,
            "progress": self.progress,
            "created_at": format_time(self.created_at),
            "started_at": format_time(self.started_at),
            "finished_at": format_time(self.finished_at),
        }
