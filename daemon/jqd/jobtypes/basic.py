"""`noop` and `sleep`: job types for smoke tests and benchmarks.

`noop` does nothing and returns None. `sleep` waits `seconds` on the Trio clock, so a
cancelled attempt (job cancel, timeout, shutdown) ends at once with `trio.Cancelled`, which
the worker handles; neither type fails otherwise.
"""

from __future__ import annotations

import trio

from jqd.handlers import JobContext, JobType
from jqd.jobtypes._payload import check_keys, check_seconds, permanent_on_bad_payload

MAX_SLEEP = 86400.0  # seconds: the longest `sleep` job


def validate_noop(payload: dict) -> None:
    check_keys(payload)


async def run_noop(ctx: JobContext) -> None:
    permanent_on_bad_payload(validate_noop, ctx.payload)
    return None


def validate_sleep(payload: dict) -> None:
    check_keys(payload, required=("seconds",))
    check_seconds(payload, "seconds", low=0, high=MAX_SLEEP)


async def run_sleep(ctx: JobContext) -> dict:
    permanent_on_bad_payload(validate_sleep, ctx.payload)
    seconds = ctx.payload["seconds"]
    await trio.sleep(seconds)
    return {"slept": seconds}


def basic_types() -> list[JobType]:
    return [
        JobType(name="noop", run=run_noop, validate=validate_noop),
        JobType(name="sleep", run=run_sleep, validate=validate_sleep),
    ]
