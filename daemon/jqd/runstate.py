"""`RunState`: what the operator has asked of the daemon (pauses, drain, shutdown).

Owned by the event loop; the control server and the signal watcher change it, the
dispatcher and the HTTP intake read it. Pauses are also persisted by the store (the
database stays the source of truth); this object mirrors them for cheap reads. Every change
notifies the dispatcher's wakeup, so a resume starts work at once.
"""

from __future__ import annotations

import enum

import attrs

from jqd.wakeup import Wakeup

GLOBAL = "*"  # the queue name under which the global pause is stored


class Mode(str, enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    DRAINED = "drained"
    STOPPING = "stopping"


@attrs.frozen
class Pause:
    reason: str | None
    paused_at: float


@attrs.define
class RunState:
    wakeup: Wakeup
    pauses: dict[str, Pause] = attrs.field(factory=dict)  # queue (or GLOBAL) -> pause
    mode: Mode = Mode.RUNNING

    @property
    def intake_open(self) -> bool:
        return self.mode is Mode.RUNNING

    @property
    def dispatching(self) -> bool:
        """Whether the dispatcher may claim at all (not drained, draining, stopping or paused)."""
        return self.mode is Mode.RUNNING and GLOBAL not in self.pauses

    @property
    def paused_queues(self) -> frozenset[str]:
        return frozenset(q for q in self.pauses if q != GLOBAL)

    def label(self) -> str:
        """The state `status` reports: running, paused, draining, drained or stopping."""
        if self.mode is Mode.RUNNING and GLOBAL in self.pauses:
            return "paused"
        return self.mode.value

    def set_pause(self, queue: str | None, pause: Pause) -> None:
        self.pauses[queue or GLOBAL] = pause

    def clear_pause(self, queue: str | None) -> None:
        if queue is None:
            self.pauses.clear()
        else:
            self.pauses.pop(queue, None)
        self.wakeup.notify()

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        self.wakeup.notify()
