"""The HTTP front end: a quart-trio app served by hypercorn inside the daemon's nursery.

`serve()` calls `task_status.started(port)` only once the socket listens. A 201 is sent only
after the store writer's commit that holds the job returned (durable). Every error is JSON
`{"error", "code"}` with the status the SPEC documents; nothing is written for a refused
request.
"""

from __future__ import annotations

import collections
import hmac
import logging

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from jqd import clock
from jqd import __version__
from jqd.handlers import Registry
from jqd.metrics import Metrics
from jqd.openapi import openapi_document
from jqd.runstate import RunState
from jqd.store.api import Store
from jqd.store.errors import (
    IdempotencyConflict, InvalidTransition, JobNotFound, QueueFull, StorageFull, StorageUnavailable,
)
from jqd.validation import MAX_ID, RequestError, canonical_json, parse_batch, parse_json, parse_list_query, parse_new_job
from jqd.wakeup import Wakeup
from jqd.workers import WorkerGroup

log = logging.getLogger("jqd.http")

UNAUTHENTICATED = frozenset({"/healthz", "/readyz"})


@attrs.frozen
class HttpDeps:
    store: Store
    registry: Registry
    state: RunState
    workers: WorkerGroup
    wakeup: Wakeup
    metrics: Metrics
    api_token: str | None = attrs.field(repr=False)
    max_body: int
    max_batch: int
    started_at: float


def _json(body: object, status: int = 200, headers: dict | None = None) -> Response:
    return Response(canonical_json(body), status=status, headers=headers, content_type="application/json")


def _error(status: int, code: str, message: str, headers: dict | None = None) -> Response:
    return _json({"error": message, "code": code}, status, headers)


def _store_error(exc: Exception) -> Response:
    if isinstance(exc, StorageFull):
        return _error(503, "storage_full", str(exc), {"Retry-After": "5"})
    if isinstance(exc, StorageUnavailable):
        return _error(503, "storage_unavailable", str(exc), {"Retry-After": "5"})
    if isinstance(exc, QueueFull):
        return _error(429, "queue_full", "too many jobs are queued; retry later", {"Retry-After": "1"})
    if isinstance(exc, IdempotencyConflict):
        return _error(409, "idempotency_conflict", str(exc))
    if isinstance(exc, JobNotFound):
        return _error(404, "not_found", str(exc))
    if isinstance(exc, InvalidTransition):
        return _error(409, "invalid_state", str(exc))
    raise exc


class InFlight:
    """ASGI wrapper counting HTTP exchanges in flight, so shutdown can close the server as
    soon as none is (idle keep-alive connections do not hold the exit)."""

    def __init__(self, app: QuartTrio):
        self.app = app
        self.count = 0
        self._idle = trio.Event()
        self._idle.set()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self.count += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        try:
            await self.app(scope, receive, send)
        finally:
            self.count -= 1
            if not self.count:
                self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


def create_app(deps: HttpDeps) -> InFlight:
    return InFlight(_create_quart_app(deps))


def _create_quart_app(deps: HttpDeps) -> QuartTrio:
    app = QuartTrio("jqd", static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = deps.max_body
    app.config["JSON_SORT_KEYS"] = False

    @app.before_request
    async def authenticate():
        if deps.api_token is None or request.path in UNAUTHENTICATED:
            return None
        supplied = request.headers.get("Authorization", "")
        scheme, _, token = supplied.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), deps.api_token.encode()):
            return _error(401, "unauthorized", "missing or wrong bearer token",
                          {"WWW-Authenticate": 'Bearer realm="jqd"'})
        return None

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        message = exc.description or exc.name
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}  # 405 must say Allow
        if exc.code == 413:
            message = f"request body larger than {deps.max_body} bytes"
            headers["Connection"] = "close"  # the unread body would otherwise jam the connection
        return _error(exc.code or 500, codes.get(exc.code, "http_error"), message, headers)

    @app.after_request
    async def read_unread_body(response: Response) -> Response:
        """An answer decided before the request body was read (401, 404, 405, 429, 503...)
        reads it first (bounded by the body limit): hypercorn cannot serve the next request
        on a keep-alive connection behind an unread body."""
        if not g.get("body_read") and (
                request.headers.get("Transfer-Encoding") or request.headers.get("Content-Length", "0") != "0"):
            try:
                await request.get_data(cache=False)
            except HTTPException:  # larger than the limit: give up on this connection instead
                response.headers["Connection"] = "close"
        return response

    @app.errorhandler(RequestError)
    async def request_error(exc: RequestError):
        return _error(exc.status, exc.code, exc.message)

    async def json_body() -> object:
        body = await request.get_data(cache=False)  # read even when refusing: keeps keep-alive usable
        g.body_read = True
        if request.mimetype != "application/json":
            raise RequestError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
        return parse_json(body)

    def intake_closed() -> Response | None:
        if not deps.state.intake_open:
            return _error(503, "draining", f"jqd is {deps.state.label()}: not accepting jobs",
                          {"Retry-After": "5"})
        return None

    async def insert(new_jobs) -> list | Response:
        try:
            results = await deps.store.jobs_insert(new_jobs, clock.now())
        except (StorageFull, StorageUnavailable, QueueFull, IdempotencyConflict) as exc:
            return _store_error(exc)
        created = [job for job, was_created in results if was_created]
        if created:
            deps.wakeup.notify()
            for type_, n in collections.Counter(job.type for job in created).items():
                deps.metrics.submitted.inc(n, type_)
        replays = len(results) - len(created)
        if replays:
            deps.metrics.replayed.inc(replays)
        return results

    @app.post("/createJob")
    async def create_job():
        if (closed := intake_closed()) is not None:
            return closed
        new = parse_new_job(await json_body(), deps.registry, clock.now())
        results = await insert([new])
        if isinstance(results, Response):
            return results
        job, created = results[0]
        return _json(job.to_json(), 201 if created else 200, {"Location": f"/jobs/{job.id}"})

    @app.post("/createJobs")
    async def create_jobs():
        if (closed := intake_closed()) is not None:
            return closed
        new_jobs = parse_batch(await json_body(), deps.registry, clock.now(), deps.max_batch)
        results = await insert(new_jobs)
        if isinstance(results, Response):
            return results
        status = 201 if any(created for _, created in results) else 200
        return _json({"jobs": [job.to_json() for job, _ in results]}, status)

    @app.get("/jobs/<int:job_id>")
    async def get_job(job_id: int):
        if job_id > MAX_ID:  # cannot exist; SQLite could not even compare it
            return _error(404, "not_found", f"job {job_id} does not exist")
        job = await deps.store.job_get(job_id)
        if job is None:
            return _error(404, "not_found", f"job {job_id} does not exist")
        return _json(job.to_json())

    @app.get("/jobs")
    async def list_jobs():
        params = parse_list_query(request.args)
        jobs = await deps.store.job_list(params)
        cursor = jobs[-1].id if len(jobs) == params.limit else None
        return _json({"jobs": [job.to_json() for job in jobs], "next_after": cursor})

    async def transition(job_id: int, write) -> Response:
        """Cancel or retry: one guarded store write; 404 unknown, 409 from the wrong state."""
        if job_id > MAX_ID:  # cannot exist; SQLite could not even compare it
            return _error(404, "not_found", f"job {job_id} does not exist")
        try:
            job = await write(job_id, clock.now())
        except (JobNotFound, InvalidTransition, StorageFull, StorageUnavailable) as exc:
            return _store_error(exc)
        return _json(job.to_json())

    @app.post("/jobs/<int:job_id>/cancel")
    async def cancel_job(job_id: int):
        response = await transition(job_id, deps.store.job_cancel)
        deps.workers.stop(job_id, "cancelled")  # a running handler is cancelled via its scope
        return response

    @app.post("/jobs/<int:job_id>/retry")
    async def retry_job(job_id: int):
        response = await transition(job_id, deps.store.job_retry)
        deps.wakeup.notify()
        return response

    @app.get("/healthz")
    async def healthz():
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz():
        if not deps.state.intake_open:
            return _error(503, "draining", f"jqd is {deps.state.label()}", {"Retry-After": "5"})
        if not deps.store.writable:
            return _error(503, "storage_unavailable", "the store cannot take writes", {"Retry-After": "5"})
        return _json({"status": "ready"})

    @app.get("/stats")
    async def stats():
        counts = await deps.store.counts()
        by_state: dict[str, int] = {}
        by_queue: dict[str, dict[str, int]] = {}
        for state, queue, n in counts:
            by_state[state] = by_state.get(state, 0) + n
            by_queue.setdefault(queue, {})[state] = n
        workers = deps.workers.statistics()
        return _json({
            "state": deps.state.label(), "version": __version__,
            "uptime_seconds": round(clock.now() - deps.started_at, 3),
            "counts": by_state, "queues": by_queue, "in_flight": workers.in_flight,
            "workers": workers.workers, "writable": deps.store.writable,
            "paused_queues": sorted(deps.state.paused_queues),
        })

    @app.get("/metrics")
    async def metrics():
        now = clock.now()
        text = deps.metrics.render(await deps.store.counts(), await deps.store.oldest_due(now), now)
        return Response(text, content_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/openapi.json")
    async def openapi():
        return _json(openapi_document(deps.registry.names()))

    return app


async def serve(app: InFlight, host: str, port: int, shutdown: trio.Event, *,
                task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve until `shutdown` is set; then stop accepting and close connections gracefully."""
    config = HypercornConfig()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("jqd.http.server")
    config.graceful_timeout = 5.0
    config.keep_alive_timeout = 5.0  # idle connections (and connect-then-close probes) free their fd soon

    class _Status:
        def started(self, binds):
            task_status.started(int(binds[0].rsplit(":", 1)[1]))

    await hypercorn_serve(app, config, shutdown_trigger=shutdown.wait, task_status=_Status())
