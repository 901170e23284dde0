"""Wall-clock time that follows Trio's clock.

`now()` is the system time at the first call in a Trio run, advanced by Trio's clock since
then. In production that clock is monotonic, so leases and backoff are immune to system
clock steps; in tests under `autojump_clock`, leases lapse and retries come due as virtual
time jumps, with no real waiting. `to_deadline()` turns a wall time into a Trio deadline.
"""

from __future__ import annotations

import time
import weakref

import trio

_anchors: "weakref.WeakKeyDictionary[object, tuple[float, float]]" = weakref.WeakKeyDictionary()


_last: tuple = (None, None)  # (root task, anchor) of the latest lookup: now() runs per job


def _anchor() -> tuple[float, float]:
    global _last
    root = trio.lowlevel.current_root_task()
    last_root, last_anchor = _last
    if last_root is root:
        return last_anchor
    anchor = _anchors.get(root)
    if anchor is None:
        anchor = _anchors[root] = (time.time(), trio.current_time())
    _last = (root, anchor)
    return anchor


def now() -> float:
    """Unix seconds. Call from the Trio thread (worker threads get times passed in)."""
    wall, trio_at = _anchor()
    return wall + (trio.current_time() - trio_at)


def to_deadline(wall_time: float) -> float:
    """The Trio deadline at which `now()` reaches `wall_time`."""
    wall, trio_at = _anchor()
    return trio_at + (wall_time - wall)
