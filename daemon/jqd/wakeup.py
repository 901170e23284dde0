"""`Wakeup`: an edge-triggered event for one waiter, with no lost wake-ups.

The waiter calls `arm()` BEFORE looking at the state it depends on, then waits on the event
it got; a `notify()` that happens in between has already set that event. Cheaper and
clearer than a Condition for the dispatcher's "new job / free slot / resumed" wake-ups.
"""

import trio


class Wakeup:
    def __init__(self) -> None:
        self._event = trio.Event()

    def arm(self) -> trio.Event:
        if self._event.is_set():
            self._event = trio.Event()
        return self._event

    def notify(self) -> None:
        self._event.set()

    async def wait_until(self, ready) -> None:
        """Return once `ready()` is true, arming before every check (the pattern above), so a
        notify that comes while the caller was busy elsewhere is never missed."""
        while True:
            event = self.arm()
            if ready():
                return
            await event.wait()
