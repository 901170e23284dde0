"""Retry delays: exponential backoff with full jitter (AWS architecture blog's "Full Jitter").

The n-th retry waits a uniformly random time in [0, min(cap, base * 2**(n-1))]: retries of
many jobs failing together spread out instead of hammering a recovering service in waves.
"""

import random


def retry_delay(retry_number: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Delay before retry number `retry_number` (1 for the first retry)."""
    exponent = min(max(retry_number - 1, 0), 64)  # 2**64 * base is past any sane cap
    ceiling = min(cap, base * (2 ** exponent))
    return (rng or random).uniform(0.0, ceiling)
