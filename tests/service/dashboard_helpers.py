"""A small real job for the dashboard tests: trainer ranks in threads, pausable mid-job, and
the dashboard (and, where a test needs RPCs, a gRPC server) on the coordinator's own event
loop."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI

from crest.client import JobConfig, Session, tensor_fetch, weighted_loss
from crest.service.dashboard import DashboardServer
from crest.service.local import LocalCoordinator
from crest.service.server import create_server
from crest.service.telemetry import RpcTelemetry
from tests.client.test_session import blobs, make_model

WAIT_S = 120  # seconds; generous: the machine is shared


def job_config(world_size: int = 2, **overrides: Any) -> JobConfig:
    """1200 examples, 4 classes: about 190 steps in a few dozen regions, learned examples
    dropped every virtual epoch (19 steps); ``overrides`` set other fields (e.g. strategy).
    Subsets of 96 (fewer than the default's 128) so that examples are seen often enough to be
    learned and dropped within the job."""
    fields: dict[str, Any] = dict(
        num_examples=1200, num_classes=4, batch_size=32, epochs=10, train_frac=0.5,
        world_size=world_size, learned_loss=0.2, subset_size=96,
    )  # fmt: skip
    return JobConfig(**(fields | overrides))


@dataclass
class LiveJob:
    """A job whose ranks train in threads; with ``pause_at`` they stop before that step
    until :meth:`resume`."""

    coordinator: LocalCoordinator
    job_id: str
    pause_at: int | None = None
    errors: list[BaseException] = field(default_factory=list)
    _gate: threading.Event = field(default_factory=threading.Event, init=False)
    _arrived: threading.Semaphore = field(
        default_factory=lambda: threading.Semaphore(0), init=False
    )
    _threads: list[threading.Thread] = field(default_factory=list, init=False)

    @classmethod
    def start(
        cls,
        coordinator: LocalCoordinator,
        *,
        world_size: int = 2,
        pause_at: int | None = None,
        **overrides: Any,
    ) -> LiveJob:
        """Create a job (:func:`job_config` with ``overrides``) and start its ranks."""
        _, labels = blobs()
        job_id = coordinator.create_job(job_config(world_size, **overrides), labels.numpy())
        job = cls(coordinator, job_id, pause_at)
        for rank in range(world_size):
            thread = threading.Thread(target=job._train, args=(rank,), name=f"rank-{rank}")
            job._threads.append(thread)
            thread.start()
        return job

    def _train(self, rank: int) -> None:
        try:
            x, y = blobs()
            model = make_model(seed=rank)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            session = Session(
                self.coordinator, self.job_id, model=model, fetch=tensor_fetch(x, y), rank=rank
            )
            for batch in session.batches():
                if batch.step == self.pause_at:
                    self._arrived.release()
                    self._gate.wait(WAIT_S)
                loss = weighted_loss(model(x[batch.indices]), y[batch.indices], batch.weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        except BaseException as err:  # surfaced by join()
            self.errors.append(err)
            self._arrived.release()

    def wait_paused(self) -> None:
        """Block until every rank waits at ``pause_at``."""
        for _ in self._threads:
            assert self._arrived.acquire(timeout=WAIT_S), "a rank never reached the pause"
        assert not self.errors, self.errors

    def resume(self) -> None:
        self._gate.set()

    def join(self) -> None:
        self.resume()
        for thread in self._threads:
            thread.join(WAIT_S)
        assert not self.errors, self.errors
        assert not any(t.is_alive() for t in self._threads), "a rank did not finish"


@contextmanager
def serving(coordinator: LocalCoordinator, app: FastAPI, grace_s: int = 5) -> Iterator[str]:
    """Serve ``app`` on the coordinator's loop on a free port; yield its base URL."""
    server = DashboardServer(app, grace_s=grace_s)
    future = coordinator.submit(server.serve())
    deadline = time.monotonic() + WAIT_S
    while not server.started:
        if future.done():
            future.result()  # raises the startup error
        assert time.monotonic() < deadline, "the dashboard did not start"
        time.sleep(0.02)
    try:
        yield server.url
    finally:
        server.stop()
        future.result(timeout=WAIT_S)


@contextmanager
def grpc_server(coordinator: LocalCoordinator, rpc: RpcTelemetry) -> Iterator[str]:
    """A gRPC server over the coordinator's manager, on its loop, recording into ``rpc``;
    yields its address."""
    server, port, health_task = coordinator.submit(
        create_server(coordinator.manager, rpc=rpc)
    ).result(WAIT_S)

    async def stop() -> None:
        await server.stop(0)
        health_task.cancel()

    try:
        yield f"127.0.0.1:{port}"
    finally:
        coordinator.submit(stop()).result(WAIT_S)


def get(url: str, token: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    """GET ``url``; returns (status, body, headers) for any status."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=WAIT_S) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read(), dict(err.headers)


def get_json(url: str, token: str | None = None) -> Any:
    status, body, _ = get(url, token)
    assert status == 200, (status, body)
    return json.loads(body)


def first_event(url: str) -> Any:
    """The data of the first server-sent event at ``url`` (then the connection is closed)."""
    with urllib.request.urlopen(url, timeout=WAIT_S) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        data = []
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("data: "):
                data.append(line[len("data: ") :])
            elif not line and data:
                return json.loads("\n".join(data))
    raise AssertionError("the stream ended without an event")
