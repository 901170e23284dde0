"""`noop`, `sleep`, and the `builtin_types()` entry point."""

from __future__ import annotations

import httpx
import pytest
import trio

from jqd.config import Config, SmtpConfig
from jqd.handlers import JobContext, PayloadError, PermanentError, Registry
from jqd.jobtypes import builtin_types
from jqd.jobtypes.basic import run_noop, run_sleep, validate_noop, validate_sleep


def context(type_: str, payload: dict) -> JobContext:
    return JobContext(id=1, type=type_, payload=payload, attempt=1, queue="default",
                      trio_token=trio.lowlevel.current_trio_token())


async def test_builtin_types_register_together():
    config = Config(webhook_allowed_hosts=frozenset({"hooks.example.com"}), smtp=SmtpConfig(host="localhost"))
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200))) as client:
        registry = Registry(builtin_types(config, client))
    assert registry.names() == ["email", "noop", "sleep", "webhook"]
    assert all(job_type.is_async and job_type.validate for job_type in registry)
    registry.get("webhook").validate({"url": "https://hooks.example.com/"})
    with pytest.raises(PayloadError):
        registry.get("webhook").validate({"url": "https://elsewhere.example.com/"})


async def test_noop():
    validate_noop({})
    assert await run_noop(context("noop", {})) is None


def test_noop_rejects_keys():
    with pytest.raises(PayloadError, match="unknown payload key"):
        validate_noop({"x": 1})


async def test_sleep_sleeps_on_the_trio_clock(autojump_clock):
    start = trio.current_time()
    assert await run_sleep(context("sleep", {"seconds": 90})) == {"slept": 90}
    assert trio.current_time() - start == pytest.approx(90)


async def test_sleep_is_cancellable(autojump_clock):
    with trio.move_on_after(5) as scope:
        await run_sleep(context("sleep", {"seconds": 86400}))
    assert scope.cancelled_caught


async def test_sleep_bad_payload_at_run_is_permanent():
    with pytest.raises(PermanentError, match="invalid payload"):
        await run_sleep(context("sleep", {"seconds": -1}))


@pytest.mark.parametrize("payload", [{"seconds": 0}, {"seconds": 0.25}, {"seconds": 86400}])
def test_sleep_accepts(payload):
    validate_sleep(payload)


@pytest.mark.parametrize("payload", [
    {}, {"seconds": -0.1}, {"seconds": 86400.5}, {"seconds": True}, {"seconds": "1"},
    {"seconds": None}, {"seconds": float("nan")}, {"seconds": float("inf")}, {"seconds": 1, "extra": 2},
])
def test_sleep_rejects(payload):
    with pytest.raises(PayloadError):
        validate_sleep(payload)
