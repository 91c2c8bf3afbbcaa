"""A coordinator replica killed mid-job: another takes its job over, and no batch changes.

Real processes: a private redis-server, two ``crest serve --lease-s`` replicas sharing it, and
two trainers (``python -m crest.bench.faults trainer``, the fault benchmark's): one given both
replicas' addresses, whose job the first replica creates and owns, and one training the same
job undisturbed on the second replica. The owner is killed with SIGKILL halfway; the trainer
finds the second replica by itself, which takes the job over once the lease expires, and every
batch equals the undisturbed run's. About half a minute on an idle 2-core machine.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from crest.bench.faults import CoordinatorProcess, RedisServer, Trainer, TrainJob
from crest.client.remote import RemoteCoordinator
from tests.integration.test_replicas import REDIRECTED, SERVED, redirect_of

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]

LEASE_S = 2.0
TIMEOUT_S = 600.0  # generous: a busy machine


def replica(directory: Path, redis: RedisServer, name: str) -> CoordinatorProcess:
    return CoordinatorProcess(
        directory / f"serve-{name}.log", "--store", redis.url, "--selector", "inprocess",
        "--lease-s", str(LEASE_S), "--replica-id", name,
    )  # fmt: skip


def test_a_killed_replicas_job_is_taken_over_with_the_same_batches(tmp_path: Path) -> None:
    job = TrainJob(examples=2_400, epochs=4)  # 150 steps
    total = job.config().total_steps
    with RedisServer(tmp_path) as redis, contextlib.ExitStack() as stack:
        a, b = replica(tmp_path, redis, "a"), replica(tmp_path, redis, "b")
        for process in (a, b):
            stack.callback(process.stop)
        with ThreadPoolExecutor(2) as pool:  # both start at once: half the wait
            list(pool.map(CoordinatorProcess.start, (a, b)))
        baseline = Trainer(b.address, "undisturbed", job, tmp_path / "baseline.log")
        trainer = Trainer(f"{a.address},{b.address}", "taken-over", job,
                          tmp_path / "trainer.log")  # fmt: skip
        try:
            trainer.wait_for(total // 2, TIMEOUT_S)
            assert redirect_of(b.address, "taken-over") == (REDIRECTED, a.address)
            a.kill()
            killed_at = trainer.steps_done()
            batches = trainer.finish(TIMEOUT_S)
            undisturbed = baseline.finish(TIMEOUT_S)
        finally:
            trainer.kill()
            baseline.kill()
        assert redirect_of(b.address, "taken-over") == SERVED
        with RemoteCoordinator(b.address) as remote:
            assert remote.job_status("taken-over").finished
    assert killed_at < total, "the kill fell mid-job"
    assert len(batches) == len(undisturbed) == total
    differs = [i for i, (got, want) in enumerate(zip(batches, undisturbed, strict=True))
               if got[:4] != want[:4]]  # step, indices, weights, region  # fmt: skip
    assert differs == [], f"first different batch: {differs[:1]}"
