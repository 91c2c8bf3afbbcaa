"""The FastAPI app: pages, JSON API, server-sent events and Prometheus metrics.

Read-only: every route reads the manager and nothing writes to it. The app must be served on
the manager's own event loop (the manager's locks are bound to it); see
:class:`crest.service.dashboard.server.DashboardServer`.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Request, Security
from fastapi.responses import FileResponse, Response
from fastapi.security import APIKeyQuery, HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import EventSourceResponse
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from crest.proto.errors import NotFound
from crest.service.dashboard.metrics import MetricsCollector
from crest.service.dashboard.models import JobDetail, JobSummary, RpcMethod
from crest.service.dashboard.views import all_summaries, job_detail, rpc_methods
from crest.service.manager import JobManager
from crest.service.telemetry import RpcTelemetry

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
DEFAULT_REFRESH_S = 1.0

T = TypeVar("T")


@dataclass
class _Streams:
    """The app's server-sent event streams: how often they poll, and whether to stop."""

    refresh_s: float
    closed: bool = False  # set by close_streams(); read by every open stream

    async def poll(
        self, read: Callable[[], Awaitable[T]], last: Callable[[T], bool]
    ) -> AsyncIterator[T]:
        """Yield ``read()`` whenever it changes; end after the item ``last`` accepts.

        Polling (not notification) keeps the manager untouched; it costs one read per
        ``refresh_s`` per open page.
        """
        previous: T | None = None
        while not self.closed:
            item = await read()
            if item != previous:
                yield item
                previous = item
            if last(item):
                return
            await asyncio.sleep(self.refresh_s)


def close_streams(app: FastAPI) -> None:
    """End the app's open event streams at their next poll (before a server shuts down:
    uvicorn waits for open responses, and an event stream never ends by itself)."""
    app.state.streams.closed = True


_BEARER = HTTPBearer(auto_error=False, description="the dashboard token")
_QUERY = APIKeyQuery(name="token", auto_error=False, description="for browsers and SSE")


class _RequireToken:
    """A dependency that accepts the token as a Bearer header or a ``token`` query parameter.

    A class with module-level schemes rather than a closure: FastAPI resolves the (postponed)
    annotations against module globals, where a closure's locals are not found.
    """

    def __init__(self, token: str) -> None:
        self._expected = token.encode()

    async def __call__(
        self,
        header: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
        param: Annotated[str | None, Security(_QUERY)],
    ) -> None:
        given = header.credentials if header is not None else param
        if given is None or not secrets.compare_digest(given.encode(), self._expected):
            raise HTTPException(
                401, "missing or invalid token", headers={"WWW-Authenticate": "Bearer"}
            )


async def _existing_job(job_id: str, request: Request) -> str:
    """The ``job_id`` path parameter, checked before a page or stream starts (an event
    stream cannot report a 404 once it has begun)."""
    if job_id not in request.app.state.manager.job_ids():
        raise HTTPException(404, f"unknown job {job_id!r}")
    return job_id


Job = Annotated[str, Depends(_existing_job)]


def create_dashboard(
    manager: JobManager,
    token: str | None = None,
    *,
    refresh_s: float = DEFAULT_REFRESH_S,
    rpc: RpcTelemetry | None = None,
) -> FastAPI:
    """A read-only dashboard app over ``manager``.

    Args:
        manager: the coordinator's jobs. Serve the app on the manager's event loop.
        token: when set (not None or empty), every page, API route, event stream and
            ``/metrics`` require it, as ``Authorization: Bearer <token>`` or
            ``?token=<token>`` (browsers: the page passes its own ``?token=`` on to its API
            and event-stream calls). Static assets (the page's code and the chart library)
            hold no data and stay public.
        refresh_s: how often an open event stream re-reads its job.
        rpc: the gRPC server's calls (the object given to
            :func:`crest.service.server.create_server`, on the same loop), for ``/metrics``,
            ``/api/rpc`` and the overview; None (an in-process coordinator, which makes no
            RPCs) leaves them out.

    Returns:
        A new app; nothing global is shared between apps.
    """
    auth = [Depends(_RequireToken(token))] if token else []
    app = FastAPI(
        title="crest dashboard",
        summary="What CREST selects and why: regions, checks, pool, coresets, service load.",
        dependencies=auth,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN; these machines are offline
        redoc_url=None,
    )
    app.state.manager = manager
    app.state.token = token or None  # the URL to open carries it (DashboardServer.browser_url)
    app.state.streams = streams = _Streams(refresh_s)
    collector = MetricsCollector(manager, rpc)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def overview_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/jobs/{job_id:path}", include_in_schema=False)
    async def job_page(job_id: Job) -> FileResponse:
        return FileResponse(STATIC_DIR / "job.html")

    @app.get("/api/jobs", tags=["api"])
    async def list_jobs() -> list[JobSummary]:
        """Every job at a glance."""
        return await all_summaries(manager)

    @app.get("/api/jobs/{job_id:path}", tags=["api"])
    async def get_job(job_id: Job) -> JobDetail:
        """Everything the job page shows."""
        try:
            return await job_detail(manager, job_id)
        except NotFound as err:
            raise HTTPException(404, str(err)) from None

    @app.get("/api/rpc", tags=["api"])
    async def list_rpc_methods() -> list[RpcMethod]:
        """The gRPC server's calls per method since it started (empty without one)."""
        return rpc_methods(rpc)

    @app.get("/api/rpc/events", response_class=EventSourceResponse, tags=["events"])
    async def rpc_events() -> AsyncIterable[list[RpcMethod]]:
        """Server-sent events: the gRPC server's calls per method whenever they change."""
        async for methods in streams.poll(list_rpc_methods, lambda _: False):
            yield methods

    @app.get("/api/events", response_class=EventSourceResponse, tags=["events"])
    async def overview_events() -> AsyncIterable[list[JobSummary]]:
        """Server-sent events: the job list whenever it changes."""
        async for summaries in streams.poll(lambda: all_summaries(manager), lambda _: False):
            yield summaries

    @app.get("/api/events/{job_id:path}", response_class=EventSourceResponse, tags=["events"])
    async def job_events(job_id: Job) -> AsyncIterable[JobDetail]:
        """Server-sent events: the job's detail whenever it changes; ends once it finished."""
        try:
            async for detail in streams.poll(
                lambda: job_detail(manager, job_id), lambda d: d.summary.finished
            ):
                yield detail
        except NotFound:
            return  # the job went away while followed: end the stream

    @app.get(
        "/metrics",
        response_class=Response,
        tags=["metrics"],
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        """Prometheus text exposition of the same figures."""
        return Response(await collector.scrape(), media_type=CONTENT_TYPE_LATEST)

    return app
