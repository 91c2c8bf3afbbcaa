"""One legal request must not stall every job (issue 16): gRPC on loopback, real selector."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from crest.client.remote import RemoteCoordinator
from crest.proto.contract import MAX_REGION_PROBLEMS, CheckReport, JobConfig, RegionStatus
from tests.integration.conftest import LoopbackCoordinator
from tests.training import blobs, job_config

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

# The most selection problems a region may pose: 16 ranks x 16 coresets x 1,024 classes.
# Drawing it takes several seconds of coordinator CPU (10-20 s on a busy 2-core machine).
HOSTILE = JobConfig(
    num_examples=200_000, num_classes=1024, world_size=16, num_coresets=16, subset_size=1024,
    adaptive=False,
)  # fmt: skip


def _timed(call: Callable[[], object]) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def test_a_hostile_job_cannot_delay_another_jobs_calls(loopback: LoopbackCoordinator) -> None:
    assert HOSTILE.region_problems == MAX_REGION_PROBLEMS
    labels = np.arange(HOSTILE.num_examples) % HOSTILE.num_classes
    with (
        RemoteCoordinator(loopback.address, call_timeout_s=600) as hostile,
        RemoteCoordinator(loopback.address) as remote,
    ):
        hostile_id = hostile.create_job(HOSTILE, labels, job_id="hostile")
        job_id = remote.create_job(job_config(), blobs()[1].numpy(), job_id="small")
        view = remote.get_region(job_id, 0, 0)
        embeddings = np.random.default_rng(1).random((len(view.candidates), 6), np.float32)
        losses = np.ones(len(view.candidates), np.float32)
        remote.submit_embeddings(job_id, 0, view.region_id, view.candidates, embeddings, losses)
        ready = remote.get_region(job_id, 0, 0)
        assert ready.status is RegionStatus.READY
        step = ready.start_step + ready.check_interval - 1
        report = CheckReport(ready.region_id, step, 10.0, 10, -0.1, 0.0, 1.0)
        calls = [
            lambda: remote.open_session(job_id, 0),
            lambda: remote.get_region(job_id, 0, 0),
            lambda: remote.report_check(job_id, 0, report),
        ]

        with ThreadPoolExecutor(1) as pool:
            opening = pool.submit(_timed, lambda: hostile.get_region(hostile_id, 0, 0))
            latencies = []
            while not opening.done():
                latencies += [_timed(call)[0] for call in calls]
            hostile_seconds, hostile_view = opening.result()

    assert hostile_view.status is RegionStatus.EMBED
    # Before issue 16 the small job's first call waited for the whole region; now its calls
    # keep being answered (generous bounds: the machine is busy).
    assert len(latencies) >= 3 * len(calls), f"only {len(latencies)} calls in {hostile_seconds} s"
    assert max(latencies) < 2.0, f"a call of the small job took {max(latencies):.2f} s"
