"""The containers' exact entrypoints, run here without Docker or Ray: Redis with the compose
file's command, the coordinator's entrypoint with the compose file's environment (the
in-process selector instead of Ray; free ports instead of fixed ones), its healthcheck, and a
short trainer run with the trainer service's command and environment."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import crest.service.serve
from crest.cli import main
from crest.embedded import connect
from tests.deploy.manifests import (
    COORDINATOR_SCRIPT,
    ROOT,
    command_argv,
    environment,
    healthcheck_argv,
    host_port,
    load_compose,
)
from tests.integration.conftest import free_port, wait_for_port


def with_address(argv: list[str], old: str, new: str) -> list[str]:
    return [new if arg == old else arg for arg in argv]


def clean_environ() -> dict[str, str]:
    """This process's environment without CREST_* / RAY_* (the services' own env goes on top),
    with this interpreter's scripts (`crest`) first on PATH, as in the image's venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREST_", "RAY_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    return env


def dashboard_get(port: int, path: str, token: str | None) -> tuple[int, object]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, None


def stop(process: subprocess.Popen | None) -> None:
    if process is not None and process.poll() is None:
        process.kill()
        process.wait(timeout=30)


@pytest.mark.integration
def test_compose_entrypoints_serve_and_train_against_redis(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (`.ci/run` installs it)")
    path = clean_environ()["PATH"]
    assert shutil.which("crest", path=path), "the `crest` script of this interpreter's env"
    services = load_compose()["services"]
    coordinator, trainer = services["coordinator"], services["trainer"]

    # Redis with the compose file's command; a private port and folder instead of /data.
    redis_port = free_port()
    redis_argv = [*command_argv(services["redis"]["command"]), "--port", str(redis_port),
                  "--bind", "127.0.0.1", "--dir", str(tmp_path)]  # fmt: skip
    # The coordinator's compose environment; Ray replaced by the in-process selector.
    compose_env = environment(coordinator)
    compose_port = int(compose_env["CREST_PORT"])
    port, dashboard_port = free_port(), free_port()
    env = {
        **clean_environ(),
        **compose_env,
        "CREST_SELECTOR": "inprocess",
        "CREST_PORT": str(port),
        "CREST_DASHBOARD_PORT": str(dashboard_port),
        "CREST_STORE": f"redis://127.0.0.1:{redis_port}/0",
    }
    token = env["CREST_TOKEN"]
    address = f"127.0.0.1:{port}"
    health = with_address(healthcheck_argv(coordinator), f"127.0.0.1:{compose_port}", address)
    assert health[:2] == ["crest", "health"] and address in health

    redis = server = None
    try:
        redis = subprocess.Popen(redis_argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(redis_port)
        # The image's `crest-coordinator` is deploy/coordinator.sh.
        server = subprocess.Popen(
            ["sh", str(COORDINATOR_SCRIPT), *command_argv(coordinator["command"])[1:]],
            env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while subprocess.run(health, env=env, capture_output=True).returncode != 0:
            assert server.poll() is None, f"crest serve exited: {server.communicate()[0]}"
            assert time.monotonic() < deadline, "the healthcheck never passed"
            time.sleep(0.5)

        # The trainer service's command and environment: the digits example, 2 epochs.
        # One coordinator here (the compose file's first replica, leases and all): the trainer's
        # list of replicas becomes its address.
        trainer_argv = command_argv(trainer["command"])
        compose_addresses = trainer_argv[trainer_argv.index("--address") + 1]
        assert {host_port(a)[1] for a in compose_addresses.split(",")} == {compose_port}
        trainer_argv = with_address(trainer_argv, compose_addresses, address)
        trainer_argv = [sys.executable if a == "python" else a for a in trainer_argv]
        trainer_argv = [*with_address(trainer_argv, "examples/train_mnist1d.py",
                                      "examples/train_digits.py"), "--epochs", "2"]  # fmt: skip
        run = subprocess.run(trainer_argv, env={**clean_environ(), **environment(trainer)},
                             cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, run.stderr[-3000:]
        assert "test accuracy" in run.stdout

        # The dashboard listens on its host and port, behind the same token.
        assert dashboard_get(dashboard_port, "/api/jobs", None)[0] == 401
        status, jobs = dashboard_get(dashboard_port, "/api/jobs", token)
        assert status == 200 and isinstance(jobs, list) and len(jobs) == 1, jobs

        server.send_signal(signal.SIGTERM)  # reaches crest serve itself (exec)
        output, _ = server.communicate(timeout=60)
        assert server.returncode == 0 and "stopped" in output, output
    finally:
        stop(server)
        stop(redis)
    aof = tmp_path / "appendonlydir"
    assert aof.is_dir() and sum(f.stat().st_size for f in aof.iterdir()) > 0, "no AOF written"


def test_crest_serve_without_flags_takes_its_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Regression: `crest serve` with no --log-level crashed (None.upper()) before serving, so
    a container configured by CREST_* variables alone never started."""
    seen = []

    async def fake_serve(settings) -> None:
        seen.append(settings)

    monkeypatch.setattr(crest.service.serve, "serve", fake_serve)
    monkeypatch.setenv("CREST_LOG_LEVEL", "ERROR")
    monkeypatch.setenv("CREST_PORT", "50999")
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", root.level)  # `crest serve` sets the root level
    assert main(["serve"]) == 0
    (settings,) = seen
    assert settings.log_level == "ERROR" and settings.port == 50999


def test_connect_sends_the_token_from_crest_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREST_TOKEN", "s3cret")
    with connect("127.0.0.1:1") as remote:
        assert remote._metadata == (("authorization", "Bearer s3cret"),)
    monkeypatch.delenv("CREST_TOKEN")
    with connect("127.0.0.1:1") as remote:
        assert remote._metadata == ()
    with connect("127.0.0.1:1", token="given") as remote:
        assert remote._metadata == (("authorization", "Bearer given"),)


@pytest.mark.integration
def test_ray_head_and_a_coordinator_that_joins_it(tmp_path: Path) -> None:
    """`ray start --head` (as the ray-head service, on a free port, not 6379), `crest serve
    --selector ray --ray-address` joining it, and a short trainer job selected by its actors."""
    token = "ray-test-token"
    env = {**clean_environ(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    ray_port, grpc_port = free_port(), free_port()
    # Short: Ray's Unix sockets live under it, and socket paths are limited to 107 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="crest-ray-", dir="/tmp"))
    head = subprocess.Popen(
        ["ray", "start", "--head", "--port", str(ray_port), "--num-cpus", "1", "--block",
         "--temp-dir", str(temp_dir), "--disable-usage-stats", "--include-dashboard", "false"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    coordinator = None
    try:
        wait_for_port(ray_port, timeout=120)
        assert head.poll() is None, "ray start --head exited"
        coordinator = subprocess.Popen(
            ["crest", "serve", "--selector", "ray", "--ray-address", f"127.0.0.1:{ray_port}",
             "--port", str(grpc_port), "--dashboard-port", "-1", "--log-level", "WARNING"],
            env=env, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 180
        health = ["crest", "health", "--address", f"127.0.0.1:{grpc_port}"]
        while subprocess.run(health, env=env, capture_output=True).returncode != 0:
            assert coordinator.poll() is None, "crest serve exited"
            assert time.monotonic() < deadline, "the coordinator never became healthy"
            time.sleep(1)
        result = subprocess.run(
            [sys.executable, "examples/train_digits.py", "--address", f"127.0.0.1:{grpc_port}",
             "--epochs", "4"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert "test accuracy" in result.stdout
        coordinator.send_signal(signal.SIGTERM)
        assert coordinator.wait(timeout=120) == 0
    finally:
        stop(coordinator)
        head.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
        head.wait(timeout=120)
        shutil.rmtree(temp_dir, ignore_errors=True)
    leftovers = subprocess.run(["pgrep", "-f", str(temp_dir)], capture_output=True, text=True)
    assert leftovers.stdout.strip() == "", "Ray processes outlived the test"
