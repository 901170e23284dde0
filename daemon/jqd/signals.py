"""The signal watcher: SIGTERM/SIGINT start the graceful shutdown; a second one skips the grace.

SIGHUP is documented as ignored (logs go to stderr, so there is nothing to reopen).
"""

from __future__ import annotations

import logging
import signal

import attrs
import trio

log = logging.getLogger("jqd.signals")


@attrs.define
class ShutdownRequest:
    requested: trio.Event = attrs.field(factory=trio.Event)  # stop intake, finish running jobs
    hurry: trio.Event = attrs.field(factory=trio.Event)  # skip what is left of the grace

    def request(self) -> None:
        if self.requested.is_set():
            self.hurry.set()
        self.requested.set()


async def watch(shutdown: ShutdownRequest, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        task_status.started()
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.info("SIGHUP ignored: logs go to stderr, configuration is read at start-up")
            elif shutdown.requested.is_set():
                log.warning("%s again: skipping the rest of the shutdown grace", name)
                shutdown.request()
            else:
                log.info("%s: shutting down gracefully", name)
                shutdown.request()
