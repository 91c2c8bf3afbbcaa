"""Coordinator and trainers in separate processes: SIGKILL restarts, SIGTERM, two ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crest.client.remote import RemoteCoordinator
from crest.embedded import local_coordinator
from tests.integration.conftest import LoopbackCoordinator, RedisServer, crest_command, free_port
from tests.training import blobs, job_config, train

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


class CoordinatorProcess:
    """``crest serve`` in a subprocess on a fixed port (so a restart keeps the address)."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.args = ["serve", "--port", str(self.port), "--dashboard-port", "-1",
                     "--log-level", "WARNING", *args]  # fmt: skip
        if "--selector" not in args:
            self.args += ["--selector", "inprocess"]
        self.process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            crest_command(*self.args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, cwd=ROOT,
        )  # fmt: skip
        assert self.process.stdout is not None
        line = self.process.stdout.readline()  # blocks until it listens (or dies)
        assert "listening" in line, f"crest serve did not start: {line}"

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(timeout=60)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def stop(self) -> str:
        """SIGTERM; returns what it printed afterwards."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        output, _ = self.process.communicate(timeout=120)
        return output

    def __enter__(self) -> CoordinatorProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.kill()


@pytest.mark.parametrize("side", ["trainer", "service"])
def test_sigkill_restart_on_redis_continues_the_exact_batch_sequence(
    redis_server: RedisServer, side: str
) -> None:
    """On the service side the restarted coordinator has lost the model and the weights (held
    in memory only): it asks the trainer for them again, and the batches stay the same."""
    labels = blobs()[1].numpy()
    config = job_config(seed=7, selection_side=side)
    with local_coordinator() as local:  # the uninterrupted run (remote == local elsewhere)
        expected = train(local, local.create_job(config, labels))[1]

    with CoordinatorProcess("--store", redis_server.url) as coordinator:
        kills = []

        def kill_and_restart(step: int) -> None:
            if step in (9, 40):  # one early (short regions), one later
                coordinator.kill()
                kills.append(step)
                coordinator.start()

        with RemoteCoordinator(coordinator.address, retry_s=120) as remote:
            job_id = remote.create_job(config, labels, job_id="restart")
            _, served = train(remote, job_id, on_step=kill_and_restart)
    assert kills == [9, 40]
    assert served == expected


def test_sigterm_stops_gracefully() -> None:
    with CoordinatorProcess() as coordinator:
        with RemoteCoordinator(coordinator.address) as remote:
            remote.create_job(job_config(), blobs()[1].numpy(), job_id="j")
        started = time.monotonic()
        output = coordinator.stop()
        assert coordinator.process.returncode == 0, output
        assert "stopped" in output
        assert time.monotonic() - started < 60


def test_health_follows_the_store(redis_server: RedisServer) -> None:
    with CoordinatorProcess("--store", redis_server.url) as coordinator:
        health = crest_command("health", "--address", coordinator.address)
        deadline = time.monotonic() + 60
        while subprocess.run(health, capture_output=True, cwd=ROOT).returncode != 0:
            assert time.monotonic() < deadline, "never SERVING"
            time.sleep(0.5)
        redis_server.process.terminate()
        redis_server.process.wait(timeout=30)
        deadline = time.monotonic() + 60
        while True:
            result = subprocess.run(health, capture_output=True, text=True, cwd=ROOT)
            if "NOT_SERVING" in result.stdout:
                break
            assert time.monotonic() < deadline, f"still {result.stdout}"
            time.sleep(0.5)
        assert result.returncode == 1


def test_two_ranks_in_two_processes(loopback: LoopbackCoordinator, tmp_path: Path) -> None:
    config = job_config(world_size=2)
    with RemoteCoordinator(loopback.address) as remote:
        job_id = remote.create_job(config, blobs()[1].numpy(), job_id="pair")
    outs = [tmp_path / f"rank{rank}.json" for rank in range(2)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ranks = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.integration.rank_main",
                loopback.address,
                job_id,
                str(rank),
                str(out),
            ],
            cwd=ROOT,
            env=env,
        )
        for rank, out in enumerate(outs)
    ]
    for process in ranks:
        assert process.wait(timeout=300) == 0
    zero, one = (json.loads(out.read_text())["batches"] for out in outs)
    assert len(zero) == len(one) == config.total_steps, "every rank gets the same batch count"
    for a, b in zip(zero, one, strict=True):
        assert a[0] == b[0], "steps in lockstep"
        assert a[3] == b[3], "both ranks switch regions at the same step"
        assert not set(a[1]) & set(b[1]), "coresets are disjoint across ranks"


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def test_a_killed_trainer_resumes_from_its_checkpoint_with_the_same_batches(
    loopback: LoopbackCoordinator, tmp_path: Path
) -> None:
    labels = blobs()[1].numpy()
    with local_coordinator() as local:
        expected = train(local, local.create_job(job_config(seed=4), labels))[1]
    with RemoteCoordinator(loopback.address) as remote:
        remote.create_job(job_config(seed=4), labels, job_id="ckpt")
    checkpoint, out = tmp_path / "trainer.pt", tmp_path / "batches.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = (loopback.address, "ckpt", str(checkpoint), "21")
    killed = subprocess.run(python_module("tests.integration.trainer_main", *args, "37", str(out)),
                            cwd=ROOT, env=env, timeout=600)  # fmt: skip
    assert killed.returncode == -signal.SIGKILL
    assert checkpoint.exists() and not out.exists()
    resumed = subprocess.run(python_module("tests.integration.trainer_main", *args, "-1", str(out)),
                             cwd=ROOT, env=env, timeout=600)  # fmt: skip
    assert resumed.returncode == 0
    assert [tuple(b) for b in json.loads(out.read_text())] == [tuple(b) for b in expected[22:]]


def test_a_rank_that_dies_rejoins_its_job(loopback: LoopbackCoordinator, tmp_path: Path) -> None:
    config = job_config(world_size=2, seed=5)
    labels = blobs()[1].numpy()
    with RemoteCoordinator(loopback.address) as remote:
        remote.create_job(config, labels, job_id="reference")
        remote.create_job(config, labels, job_id="rejoin")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def rank(job: str, number: int) -> subprocess.Popen:
        out = tmp_path / f"{job}-{number}.json"
        return subprocess.Popen(
            python_module("tests.integration.rank_main", loopback.address, job, str(number),
                          str(out)),
            cwd=ROOT, env=env,
        )  # fmt: skip

    reference = [rank("reference", 0), rank("reference", 1)]
    survivor, victim = rank("rejoin", 0), rank("rejoin", 1)
    deadline = time.monotonic() + 300
    while loopback.local.job_status("rejoin").step < 20:  # let it get going, then kill rank 1
        assert time.monotonic() < deadline
        time.sleep(0.2)
    victim.kill()
    victim.wait(timeout=60)
    restarted = rank("rejoin", 1)  # from scratch: replays the recorded regions and decisions
    for process in (*reference, survivor, restarted):
        assert process.wait(timeout=600) == 0
    for number in (0, 1):
        expected = json.loads((tmp_path / f"reference-{number}.json").read_text())["batches"]
        got = json.loads((tmp_path / f"rejoin-{number}.json").read_text())["batches"]
        assert got == expected, f"rank {number} diverged"
