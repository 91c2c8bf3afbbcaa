"""Real components for integration tests: redis-server on a free port, gRPC on loopback."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from crest.service.local import LocalCoordinator
from crest.service.manager import JobManager
from crest.service.server import create_server
from crest.service.store import MemoryStore, StateStore
from crest.service.telemetry import RpcTelemetry
from crest.worker.selector import InProcessSelector


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port, stopped afterwards."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (`.ci/run` installs it: apt-get install "
                    "redis-server)")  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port)
        yield RedisServer(port, process)
    finally:
        process.terminate()
        process.wait(timeout=30)


@dataclass
class LoopbackCoordinator:
    """A gRPC coordinator in this process, on its own event-loop thread."""

    local: LocalCoordinator
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def manager(self) -> JobManager:
        return self.local.manager


def start_loopback(
    store: StateStore | None = None,
    token: str | None = None,
    tls=None,
    rpc: RpcTelemetry | None = None,
    **manager_args,
) -> tuple[LoopbackCoordinator, object, object]:
    local = LocalCoordinator(JobManager(InProcessSelector(), store or MemoryStore(), strict=True,
                                        **manager_args))  # fmt: skip
    local.submit(local.manager.start()).result()
    server, port, health_task = local.submit(
        create_server(local.manager, "127.0.0.1:0", token=token, tls=tls, rpc=rpc)
    ).result()
    return LoopbackCoordinator(local, port), server, health_task


def stop_loopback(handle: LoopbackCoordinator, server, health_task) -> None:
    handle.local.submit(server.stop(0)).result()
    handle.local._loop.call_soon_threadsafe(health_task.cancel)
    handle.local.close()


@pytest.fixture
def loopback() -> Iterator[LoopbackCoordinator]:
    handle, server, health_task = start_loopback()
    try:
        yield handle
    finally:
        stop_loopback(handle, server, health_task)


def crest_command(*args: str) -> list[str]:
    """The ``crest`` CLI of this interpreter (works without the venv on PATH)."""
    return [sys.executable, "-m", "crest.cli", *args]
