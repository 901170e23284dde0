"""Small strict checks shared by the built-in payload validators.

Every check raises `PayloadError` with a message naming the offending key, which the HTTP
front end returns as a 422. Handlers re-run their validator before doing anything, and turn a
`PayloadError` into a `PermanentError` (`permanent_on_bad_payload`): a payload that no longer
validates will not start validating on a retry.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

from jqd.handlers import PayloadError, PermanentError


def check_keys(payload: dict, *, required: Collection[str] = (), optional: Collection[str] = ()) -> None:
    """Reject unknown keys and missing required ones."""
    if not payload and not required:
        return  # the common `{}` of noop: nothing to look at
    unknown = sorted(set(payload) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join(sorted({*required, *optional})) or "none"
        raise PayloadError(f"unknown payload key(s): {', '.join(unknown)} (allowed: {allowed})")
    missing = [key for key in required if key not in payload]
    if missing:
        raise PayloadError(f"missing payload key(s): {', '.join(missing)}")


def check_seconds(payload: dict, key: str, *, low: float, high: float, low_inclusive: bool = True) -> float:
    """A finite int or float (not a bool) in [low, high], or (low, high] when not `low_inclusive`."""
    value = payload[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PayloadError(f"{key!r} must be a number of seconds")
    if value > high or value < low or (value == low and not low_inclusive):
        bracket = "[" if low_inclusive else "("
        raise PayloadError(f"{key!r} must be in {bracket}{low:g}, {high:g}], got {value!r}")
    return value


def check_str(payload: dict, key: str, *, max_chars: int | None = None, max_bytes: int | None = None,
              single_line: bool = False) -> str:
    """A string of bounded size, encodable as UTF-8, optionally without CR or LF."""
    value = payload[key]
    if not isinstance(value, str):
        raise PayloadError(f"{key!r} must be a string")
    if max_chars is not None and len(value) > max_chars:
        raise PayloadError(f"{key!r} is longer than {max_chars} characters")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise PayloadError(f"{key!r} is not valid Unicode (lone surrogate)") from None
    if max_bytes is not None and size > max_bytes:
        raise PayloadError(f"{key!r} is larger than {max_bytes} bytes (UTF-8)")
    if single_line and ("\r" in value or "\n" in value):
        raise PayloadError(f"{key!r} must not contain CR or LF")
    return value


def permanent_on_bad_payload(validate: Callable[[dict], object], payload: dict) -> object:
    """Run `validate` at execution time; a rejected payload is a permanent failure."""
    try:
        return validate(payload)
    except PayloadError as exc:
        raise PermanentError(f"invalid payload: {exc}") from None
