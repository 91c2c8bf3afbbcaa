"""The coordinator with the Ray selector pool on a real local Ray: same batches as the
in-process selector, and a job never hangs when every actor is stuck."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from crest.embedded import local_coordinator
from crest.service.local import LocalCoordinator
from crest.service.manager import JobManager
from tests.training import blobs, job_config, train

pytestmark = pytest.mark.integration


@pytest.fixture
def ray_coordinator(ray_session):
    from crest.worker.ray_pool import RaySelector

    selector = RaySelector(num_actors=1)
    # The manager passes its deadline with every selection: 5 s bounds a frozen pool's wait,
    # and leaves a busy machine's real selections (milliseconds) ample room.
    coordinator = LocalCoordinator(JobManager(selector, selection_timeout_s=5.0, strict=True))
    try:
        yield coordinator
    finally:
        coordinator.close()  # closes the pool


def test_ray_pool_serves_the_same_batches_as_the_in_process_selector(ray_coordinator) -> None:
    labels = blobs()[1].numpy()
    with local_coordinator() as local:
        expected = train(local, local.create_job(job_config(seed=6), labels))[1]
    served = train(ray_coordinator, ray_coordinator.create_job(job_config(seed=6), labels))[1]
    assert served == expected


def test_stuck_actors_mean_random_batches_then_selection_resumes(ray_coordinator) -> None:
    selector = ray_coordinator.manager.selector
    stopped: list[int] = []

    def freeze_then_thaw(step: int) -> None:
        if step == 10:  # every actor stops answering (SIGSTOP): selections time out
            stopped.extend(selector.actor_pids)
            for pid in stopped:
                os.kill(pid, signal.SIGSTOP)
        if step == 40:
            for pid in stopped:
                with contextlib.suppress(ProcessLookupError):  # the pool replaced it
                    os.kill(pid, signal.SIGCONT)
            time.sleep(1)

    job_id = ray_coordinator.create_job(job_config(seed=6), blobs()[1].numpy())
    _, served = train(ray_coordinator, job_id, on_step=freeze_then_thaw)
    regions = ray_coordinator.job_status(job_id).regions
    assert len(served) == job_config().total_steps, "the job finished"
    fallbacks = [r for r in regions if r.fallback]
    assert fallbacks, "a region without an answer gets random batches"
    assert all(10 <= r.start_step <= 45 for r in fallbacks)
    assert not regions[-1].fallback and regions[-1].weight_quantiles, "selection resumed"
    assert ray_coordinator.manager.telemetry(job_id).fallbacks == len(fallbacks)
