"""The operator's commands (status, pause, resume, drain), as the control server calls them.

Pauses are written to the store first and mirrored in `RunState` after, so a pause that was
acknowledged survives a restart. Drain closes intake, stops claiming, lets running jobs
finish up to the timeout, then returns the rest to `queued` without using an attempt; the
daemon then stays up, drained, until `resume` or a stop signal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio

from jqd import clock
from jqd import __version__, faults
from jqd_ctl.wire import ControlError
from jqd.model import format_time
from jqd.dispatcher import Dispatcher
from jqd.runstate import GLOBAL, Mode, Pause, RunState
from jqd.store.api import Store
from jqd.workers import WorkerGroup

PROGRESS_EVERY = 0.5  # seconds between drain progress lines (a report to a human, not a poll)


class Controller:
    def __init__(self, store: Store, state: RunState, workers: WorkerGroup, dispatcher: Dispatcher, *,
                 started_at: float):
        self._store = store
        self._state = state
        self._workers = workers
        self._dispatcher = dispatcher
        self._started_at = started_at

    async def status(self) -> dict:
        counts: dict[str, int] = {}
        for state, _queue, n in await self._store.counts():
            counts[state] = counts.get(state, 0) + n
        stats = self._workers.statistics()
        global_pause = self._state.pauses.get(GLOBAL)
        return {
            "state": self._label(), "version": __version__,
            "uptime_seconds": round(clock.now() - self._started_at, 3),
            "in_flight": stats.in_flight, "workers": stats.workers, "counts": counts,
            "global_pause": _pause_json(global_pause) if global_pause else None,
            "paused_queues": [{"queue": q, **_pause_json(p)} for q, p in sorted(self._state.pauses.items())
                              if q != GLOBAL],
            "writable": self._store.writable,
        }

    def _label(self) -> str:
        if self._state.mode is Mode.DRAINING and not self._workers.attempts:
            return Mode.DRAINED.value
        return self._state.label()

    async def pause(self, queue: str | None, reason: str | None) -> dict:
        if queue == GLOBAL:
            raise ControlError("bad_arguments", f"{GLOBAL!r} is not a queue name")
        now = clock.now()
        await self._store.pause_set(queue or GLOBAL, reason, now)
        self._state.set_pause(queue, Pause(reason, now))
        return await self.status()

    async def resume(self, queue: str | None) -> dict:
        if queue == GLOBAL:
            raise ControlError("bad_arguments", f"{GLOBAL!r} is not a queue name")
        await self._store.pause_clear(queue)
        self._state.clear_pause(queue)
        if queue is None and self._state.mode in (Mode.DRAINING, Mode.DRAINED):
            self._state.set_mode(Mode.RUNNING)
        return await self.status()

    async def drain(self, timeout: float | None) -> AsyncIterator[dict]:
        if self._state.mode is Mode.STOPPING:
            raise ControlError("stopping", "jqd is shutting down")
        self._state.set_mode(Mode.DRAINING)
        faults.hit("drain")
        await self._dispatcher.wait_no_claim()  # a job claimed just now counts as running
        deadline = trio.current_time() + (timeout if timeout is not None else float("inf"))
        while self._draining() and self._workers.attempts and trio.current_time() < deadline:
            yield await self._progress()
            with trio.move_on_at(min(deadline, trio.current_time() + PROGRESS_EVERY)):
                await self._workers.wait_idle()
        returned = []
        if self._draining():  # not resumed (or stopped) meanwhile: the timeout is ours to apply
            returned = await self._workers.finish_running(0)
            self._state.set_mode(Mode.DRAINED)
        yield {"state": self._label(), "returned": returned}

    def _draining(self) -> bool:
        return self._state.mode is Mode.DRAINING

    async def _progress(self) -> dict:
        queued = sum(n for state, _q, n in await self._store.counts() if state == "queued")
        return {"running": len(self._workers.attempts), "queued": queued}


def _pause_json(pause: Pause) -> dict:
    return {"reason": pause.reason, "paused_at": format_time(pause.paused_at)}
