"""``crest serve``: the coordinator process."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from crest.service.dashboard import DashboardServer, create_dashboard
from crest.service.manager import JobManager
from crest.service.server import create_server
from crest.service.settings import ServeSettings
from crest.service.store import StateStore, open_store
from crest.service.telemetry import RpcTelemetry
from crest.worker.placement import parse_cores, pin_process
from crest.worker.selector import InProcessSelector, Selector

log = logging.getLogger(__name__)


# The embedded Ray: loopback only, and Ray's token required on every connection. Ray reads
# both from the environment (its processes inherit it): RAY_AUTH_MODE=token (the token comes
# from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token, generated there if missing);
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes the node use the loopback address, and Ray binds
# its servers to the node's address (``ray.init(_node_ip_address="127.0.0.1")`` does not:
# ray.init swaps a loopback address for a routable one). The first is read when Ray is
# imported, so this is set before the import; init_ray(loopback=True) checks it took.
EMBEDDED_RAY_ENV = {"RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


async def build_selector(settings: ServeSettings) -> Selector:
    """The in-process selector, or the Ray pool (joining ``ray_address`` or a local Ray)."""
    cores = parse_cores(settings.selector_cores) if settings.selector_cores else None
    if settings.selector == "inprocess":
        return InProcessSelector(settings.device, settings.selector_threads, cores)
    embedded = not settings.ray_address
    if embedded:
        os.environ.update(EMBEDDED_RAY_ENV)
    from crest.worker.ray_pool import RaySelector, init_ray

    # ray.init must run on the main thread (it installs signal handlers); nothing else runs
    # yet, so blocking the loop here costs nothing.
    init_ray(
        settings.ray_address,
        num_cpus=settings.ray_num_cpus,
        object_store_bytes=settings.ray_object_store_mb * 2**20,
        loopback=embedded,
    )
    return await RaySelector.create(
        num_actors=settings.selector_actors,
        gpu_share=settings.gpu_share,
        threads=settings.selector_threads,
        cores=cores,
        deadline_s=settings.selection_timeout_s,
    )


def build_manager(
    settings: ServeSettings, selector: Selector, store: StateStore | None = None
) -> JobManager:
    """The coordinator's core as ``crest serve`` configures it; ``store`` replaces the one
    the settings name (``crest bench scale`` passes that one wrapped, to time its writes)."""
    if store is None:
        store = open_store(settings.store, settings.store_max_value_mb * 2**20)
    return JobManager(
        selector,
        store,
        wait_s=settings.wait_s,
        selection_timeout_s=settings.selection_timeout_s,
        archived_regions=settings.archived_regions,
        strict=settings.strict,
        finished_ttl_s=settings.finished_job_ttl_s,
    )


async def serve(settings: ServeSettings) -> None:
    """Run the coordinator until SIGTERM or SIGINT, then stop gracefully.

    In-flight RPCs get ``grace_s`` to finish; every acknowledged change is already in the
    store (the journal is written before each reply), so stopping loses nothing.

    With ``coordinator_cores`` the process is pinned first, so that every thread and process
    it starts afterwards (gRPC's, an embedded Ray's) stays on those cores too.
    """
    if settings.coordinator_cores:
        pin_process(parse_cores(settings.coordinator_cores))
        log.info("coordinator pinned to cores %s", settings.coordinator_cores)
    manager = build_manager(settings, await build_selector(settings))
    await manager.start()
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = (settings.tls_cert.read_bytes(), settings.tls_key.read_bytes())
    token = settings.token.get_secret_value() if settings.token else None
    rpc = RpcTelemetry()  # the server's calls, shown by the dashboard
    server, port, health_task = await create_server(
        manager, settings.address, token=token, tls=tls, rpc=rpc
    )
    dashboard = dashboard_task = None
    if settings.dashboard_port >= 0:
        app = create_dashboard(manager, token, rpc=rpc)
        dashboard = DashboardServer(app, settings.dashboard_host, settings.dashboard_port)
        dashboard_task = asyncio.create_task(dashboard.serve())
    # Installed after everything that may replace handlers (ray.init does).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"crest coordinator listening on {settings.host}:{port}", flush=True)
    if dashboard is not None:
        print(f"crest dashboard on {dashboard.browser_url}", flush=True)
    log.info("store %s, selector %s, %d jobs resumed", settings.store.split("@")[-1],
             settings.selector, len(manager.job_ids()))  # fmt: skip
    await stop.wait()
    log.info("stopping: %.0f s for in-flight calls", settings.grace_s)
    if dashboard is not None and dashboard_task is not None:
        dashboard.stop()
        await dashboard_task
    await server.stop(settings.grace_s)
    health_task.cancel()
    await manager.close()
    print("crest coordinator stopped", file=sys.stderr, flush=True)
