import pytest
import trio.testing


@pytest.fixture
def slow_autojump_clock():
    """An autojump clock that waits for 10 ms of real idleness (see engine_harness)."""
    return trio.testing.MockClock(autojump_threshold=0.01)
