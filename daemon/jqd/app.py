"""The daemon: one nursery tree, started in dependency order, stopped in reverse.

    root nursery
    ├── store writer        (stopped last: every other component writes through it)
    └── engine nursery
        ├── worker group    WORKER_COUNT runners, each attempt in its own cancel scope,
        │                   plus one outcome recorder and one progress flusher
        ├── dispatcher      claims for free slots, wakes on events
        ├── lease keeper    renews live attempts' leases
        ├── timeout reaper  rescues lapsed leases, prunes old jobs
        └── front nursery
            ├── HTTP        hypercorn + quart-trio
            ├── control     Unix socket server
            ├── signals     SIGTERM/SIGINT -> shutdown request
            └── watchdog    systemd WATCHDOG=1 while the dispatcher makes progress

Shutdown: intake closes and claiming stops (mode STOPPING), running jobs get the grace,
the rest are interrupted and re-queued (writes shielded), HTTP closes gracefully, then the
front, the engine and finally the writer are cancelled.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import uuid

import attrs
import httpx
import trio

from jqd import clock
from jqd import control_server, http, leases, reaper, signals, systemd
from jqd.config import Config
from jqd.controller import Controller
from jqd.dispatcher import Dispatcher
from jqd.handlers import CUSTOM_TYPES, Registry
from jqd.jobtypes import builtin_types
from jqd.metrics import Metrics
from jqd.runstate import Mode, Pause, RunState
from jqd.store.api import ReadPool, Store
from jqd.store.sqlite import DatabaseLock, open_database
from jqd.store.writer import StoreWriter
from jqd.wakeup import Wakeup
from jqd.workers import WorkerGroup, WorkerSettings

log = logging.getLogger("jqd")

HTTP_CLOSE_TIMEOUT = 6.0  # seconds to wait for hypercorn's graceful close
STATUS_EVERY = 2.0  # seconds between checks of the systemd STATUS= line


class StartupError(Exception):
    """A start-up failure with a message for the operator (exit status 1)."""


@attrs.frozen
class Running:
    """What `run` reports once every component accepts work (tests use the port)."""

    port: int
    control_socket: str
    run_id: str


def import_handler_modules(modules: tuple[str, ...]) -> None:
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, os.getcwd())  # `--handlers mymodule` finds ./mymodule.py
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise StartupError(f"--handlers: cannot import {name!r}: {type(exc).__name__}: {exc}") from exc


def build_registry(config: Config, http_client: httpx.AsyncClient) -> Registry:
    registry = Registry(builtin_types(config, http_client))
    for job_type in CUSTOM_TYPES:
        if registry.get(job_type.name) is not None:
            raise StartupError(f"job type {job_type.name!r} from --handlers clashes with a built-in type")
        registry.add(job_type)
    return registry


async def run(config: Config, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    run_id = uuid.uuid4().hex
    started_at = clock.now()
    import_handler_modules(config.handler_modules)
    lock = await trio.to_thread.run_sync(DatabaseLock, config.db_path, run_id)
    try:
        conn = await trio.to_thread.run_sync(open_database, config.db_path, config.max_db_bytes)
        reads = ReadPool(config.db_path)
        try:
            await _serve(config, run_id, started_at, conn, reads, task_status)
        finally:
            with trio.CancelScope(shield=True):  # closing may checkpoint the WAL: off the loop
                await trio.to_thread.run_sync(_close, reads, conn)
    finally:
        lock.release()


def _close(reads: ReadPool, conn) -> None:
    reads.close()
    conn.close()


async def _serve(config, run_id, started_at, conn, reads, task_status) -> None:
    notifier = systemd.Notifier.from_environ(os.environ)
    writer = StoreWriter(conn)
    store = Store(writer, reads, config.max_queued, reserve_pages=_reserve_pages(config.max_db_bytes))
    wakeup = Wakeup()
    metrics = Metrics()
    metrics.watch_writer(writer.statistics)
    shutdown = signals.ShutdownRequest()
    async with httpx.AsyncClient(follow_redirects=False, timeout=30.0) as http_client:
        registry = build_registry(config, http_client)
        async with trio.open_nursery() as root:
            await root.start(writer.run)
            recovered = await store.jobs_recover(run_id, clock.now())
            metrics.rescued.inc(len(recovered.requeued) + len(recovered.dead))
            reaper.log_rescue(recovered, "recovered after a previous run stopped")
            state = RunState(wakeup, {q: Pause(r, at) for q, r, at in await store.pause_list()})
            workers = WorkerGroup(store, registry, WorkerSettings(
                workers=config.workers, queue_limits=dict(config.queue_limits), job_timeout=config.job_timeout,
                retry_base=config.retry_base, retry_max=config.retry_max),
                run_id=run_id, wakeup=wakeup, metrics=metrics)
            dispatcher = Dispatcher(store, workers, state, wakeup, run_id=run_id,
                                    visibility_timeout=config.visibility_timeout)
            async with trio.open_nursery() as engine:
                await engine.start(workers.run)
                await engine.start(dispatcher.run)
                await engine.start(leases.run, store, workers, run_id, config.visibility_timeout)
                await engine.start(lambda task_status: reaper.run(
                    store, workers, metrics, wakeup, visibility_timeout=config.visibility_timeout,
                    retention=config.retention, task_status=task_status))
                async with trio.open_nursery() as front:
                    app = http.create_app(http.HttpDeps(
                        store=store, registry=registry, state=state, workers=workers, wakeup=wakeup,
                        metrics=metrics, api_token=config.api_token, max_body=config.max_body,
                        max_batch=config.max_batch, started_at=started_at))
                    stop_http = trio.Event()
                    port = await front.start(_serve_http, app, config, stop_http)
                    controller = Controller(store, state, workers, dispatcher, started_at=started_at)
                    socket_path = await front.start(lambda task_status: control_server.serve(
                        config.control_socket, controller, group=config.control_group, task_status=task_status))
                    await front.start(signals.watch, shutdown)
                    interval = systemd.watchdog_interval(os.environ)
                    if notifier and interval:
                        front.start_soon(systemd.run_watchdog, notifier, interval, _progress_probe(dispatcher))
                    log.info("jqd %s ready: http://%s:%d, control %s, %d workers, run %s",
                             _version(), config.bind_host, port, socket_path, config.workers, run_id)
                    if notifier:
                        notifier.ready()
                        front.start_soon(_report_status, notifier, state, workers)
                    task_status.started(Running(port, socket_path, run_id))

                    await shutdown.requested.wait()
                    await _shut_down(config, state, workers, dispatcher, notifier, shutdown)
                    stop_http.set()  # stop accepting; let requests in flight finish, then close
                    with trio.move_on_after(HTTP_CLOSE_TIMEOUT):
                        await app.wait_idle()
                    front.cancel_scope.cancel()
                engine.cancel_scope.cancel()
            root.cancel_scope.cancel()
    log.info("jqd stopped")


async def _serve_http(app, config: Config, stop: trio.Event, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    try:
        await http.serve(app, config.bind_host, config.bind_port, stop, task_status=task_status)
    except OSError as exc:
        raise StartupError(f"cannot listen on {config.bind_host}:{config.bind_port}: {exc.strerror or exc}") from exc


async def _report_status(notifier, state: RunState, workers: WorkerGroup) -> None:
    """STATUS= for `systemctl status`, sent when it changes (checked every few seconds)."""
    last = None
    while True:
        stats = workers.statistics()
        text = f"{state.label()}: {stats.in_flight} of {stats.workers} workers busy"
        if text != last:
            notifier.status(text)
            last = text
        await trio.sleep(STATUS_EVERY)


async def _shut_down(config: Config, state: RunState, workers: WorkerGroup, dispatcher: Dispatcher,
                     notifier, shutdown) -> None:
    """Stop intake and claiming, give running jobs the grace, re-queue what still runs."""
    state.set_mode(Mode.STOPPING)
    await dispatcher.wait_no_claim()  # a job claimed just now gets the grace like the others
    running = len(workers.attempts)
    log.info("shutting down: %d job(s) running, grace %g s", running, config.shutdown_grace)
    if notifier:
        notifier.stopping()
        notifier.extend_timeout(config.shutdown_grace + HTTP_CLOSE_TIMEOUT + 5)
        notifier.status(f"stopping: waiting for {running} running job(s)")
    returned = await workers.finish_running(config.shutdown_grace, shutdown.hurry)
    if returned:
        log.warning("returned %d interrupted job(s) to queued: %s", len(returned), returned)


def _reserve_pages(max_db_bytes: int | None) -> int | None:
    """Under JQD_MAX_DB_BYTES, intake stops 5% (at least 16 pages) short of the cap, so that
    claims, completions and pruning always have room to free space again."""
    if max_db_bytes is None:
        return None
    pages = max_db_bytes // 4096
    return max(16, pages // 20)


def _progress_probe(dispatcher: Dispatcher):
    """True when the dispatcher is idle-waiting or has completed a pass since the last ping."""
    last = [-1]

    def probe() -> bool:
        progressed = dispatcher.loops != last[0]
        last[0] = dispatcher.loops
        return progressed or dispatcher.waiting

    return probe


def _version() -> str:
    from jqd import __version__

    return __version__
