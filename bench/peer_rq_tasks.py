"""Job functions for the RQ peer benchmark (imported by `rq worker` by dotted name)."""

import time


def noop():
    return None


def stamp():
    """Returns when the handler started (time.time()): for the pickup latency."""
    return time.time()
