"""Connecting and reconnecting: a wrong address fails fast, an outage is ridden out promptly.

A real gRPC server on loopback is stopped and started again on the same port under a
client that keeps calling; what is measured is when the client's call succeeds after the
restart, which gRPC's default reconnect backoff (1 s growing 1.6x) would delay by seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest

from crest.client.remote import RemoteCoordinator
from crest.embedded import connect
from crest.proto.errors import Unavailable
from crest.service.local import LocalCoordinator
from crest.service.manager import JobManager
from crest.service.server import create_server
from crest.worker.selector import InProcessSelector
from tests.integration.conftest import free_port
from tests.training import blobs, job_config

pytestmark = pytest.mark.integration

OUTAGE_S = 16.0  # gRPC's default backoff tries again ~10 s after a 16 s outage ends


def test_a_closed_port_fails_within_the_connect_timeout_and_names_the_address() -> None:
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    with connect(address, connect_timeout_s=2) as remote:
        started = time.monotonic()
        with pytest.raises(Unavailable, match=f"could not connect .* at {address} within 2 s"):
            remote.open_session("job", 0)
        elapsed = time.monotonic() - started
    assert elapsed < 30, f"took {elapsed:.1f} s"  # today's retry_s would be 300 s


class Server:
    """A coordinator on a fixed loopback port that can go away and come back."""

    def __init__(self, local: LocalCoordinator, port: int) -> None:
        self.local, self.address = local, f"127.0.0.1:{port}"
        self._running: tuple | None = None

    def start(self) -> float:
        """Serve; returns when it listens (monotonic time)."""
        server, _, health_task = self.local.submit(
            create_server(self.local.manager, self.address)
        ).result()
        self._running = (server, health_task)
        return time.monotonic()

    def stop(self) -> None:
        if self._running is not None:
            server, health_task = self._running
            self._running = None
            self.local.submit(server.stop(0)).result()
            self.local._loop.call_soon_threadsafe(health_task.cancel)


@pytest.fixture
def server() -> Iterator[Server]:
    with LocalCoordinator(JobManager(InProcessSelector())) as local:
        handle = Server(local, free_port())
        try:
            yield handle
        finally:
            handle.stop()


def later(seconds: float, action) -> tuple[threading.Thread, list]:
    """Run ``action`` on a thread after ``seconds``; its result lands in the list."""
    results: list = []

    def run() -> None:
        time.sleep(seconds)
        results.append(action())

    thread = threading.Thread(target=run)
    thread.start()
    return thread, results


def test_the_first_connection_waits_for_a_coordinator_that_comes_up_in_time(
    server: Server,
) -> None:
    thread, _ = later(1.0, server.start)
    try:
        with RemoteCoordinator(server.address, connect_timeout_s=60) as remote:
            assert remote.create_job(job_config(), blobs()[1].numpy(), job_id="late") == "late"
    finally:
        thread.join()


def test_calls_during_an_outage_succeed_promptly_once_the_coordinator_is_back(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    server.start()
    with RemoteCoordinator(server.address, retry_s=120) as remote:
        job_id = remote.create_job(job_config(), blobs()[1].numpy(), job_id="outage")
        server.stop()
        went_away = time.monotonic()
        caplog.set_level(logging.WARNING, logger="crest.client.remote")
        thread, restarted = later(OUTAGE_S, server.start)
        try:
            info = remote.open_session(job_id, 0)  # retries through the outage
            answered = time.monotonic()
        finally:
            thread.join()
    assert info.job_id == job_id
    assert answered - went_away >= OUTAGE_S
    delay = answered - restarted[0]
    assert delay < 5, f"the first call after the restart took {delay:.1f} s"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and all(server.address in w for w in warnings)
    assert any("so far" in w for w in warnings)
    # Rate-limited: one line per few seconds of outage, not one per retry.
    assert len(warnings) <= OUTAGE_S / 5 + 2, warnings
