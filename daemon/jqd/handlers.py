"""The handler API: how a job type is declared, what a handler receives, how it fails.

A custom module named in `--handlers` registers job types with `@job_type("name")`:

    from jqd import job_type, PermanentError, RetryAfter

    @job_type("resize")
    async def resize(job):
        await job.progress({"done": 0.5})
        return {"ok": True}          # stored as the job's `result`

`async def` handlers run as Trio tasks; plain `def` handlers run in a worker thread.
Raise `PermanentError` to send the job straight to `dead`, `RetryAfter(seconds)` to retry
after a chosen delay; any other exception is a retryable failure with backoff.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable

import attrs
import trio


class PermanentError(Exception):
    """The job can never succeed: it goes to `dead` without further attempts."""


class RetryAfter(Exception):
    """Retry this job after `seconds` (still bounded by `max_retries`)."""

    def __init__(self, seconds: float, message: str = ""):
        super().__init__(message or f"retry requested after {seconds} s")
        self.seconds = max(0.0, float(seconds))


class PayloadError(ValueError):
    """A payload its job type rejects at submission (HTTP 422)."""


@attrs.define
class JobContext:
    """What a handler gets: the job's id, type, payload, attempt number and `progress()`.

    `progress()` may be called from an async handler or from a thread handler; it never
    blocks. The worker group keeps only the latest value per job and writes it soon after.
    """

    id: int
    type: str
    payload: dict
    attempt: int
    queue: str
    _trio_token: trio.lowlevel.TrioToken = attrs.field(alias="trio_token", repr=False)
    _on_progress: Callable[[int, object], None] | None = attrs.field(default=None, alias="on_progress",
                                                                      repr=False)

    def progress(self, value: object) -> None:
        """Record progress (any JSON value); it is stored on the job shortly after."""
        json.dumps(value)  # fail in the handler, where the mistake is, not in the writer
        if self._on_progress is None:
            return
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # a worker thread: hand it to the event loop
            self._trio_token.run_sync_soon(self._on_progress, self.id, value)
        else:
            self._on_progress(self.id, value)


@attrs.frozen
class JobType:
    """One registered job type: its handler and an optional payload validator."""

    name: str
    run: Callable
    validate: Callable[[dict], None] | None = None
    is_async: bool = attrs.field(init=False)  # known once, not inspected per job

    @is_async.default
    def _is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.run)


class Registry:
    """Job types by name. The daemon builds one from the built-ins plus custom modules."""

    def __init__(self, types: list[JobType] = ()):
        self._types: dict[str, JobType] = {}
        for job_type_ in types:
            self.add(job_type_)

    def add(self, job_type_: JobType) -> None:
        if job_type_.name in self._types:
            raise ValueError(f"job type {job_type_.name!r} is registered twice")
        self._types[job_type_.name] = job_type_

    def get(self, name: str) -> JobType | None:
        return self._types.get(name)

    def names(self) -> list[str]:
        return sorted(self._types)

    def __iter__(self):
        return iter(self._types.values())


# Custom handler modules register here at import time; the daemon merges it with the built-ins.
CUSTOM_TYPES = Registry()


def job_type(name: str, *, validate: Callable[[dict], None] | None = None):
    """Decorator registering a handler for job type `name`.

    `validate(payload)` runs at submission; raise `PayloadError` to reject with 422.
    """
    def register(fn: Callable) -> Callable:
        CUSTOM_TYPES.add(JobType(name=name, run=fn, validate=validate))
        return fn

    return register
