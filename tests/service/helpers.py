"""Drive a JobState by hand: embeddings from a fixed random projection of the labels."""

from __future__ import annotations

import numpy as np

from crest.proto.contract import CheckReport, JobConfig, RegionStatus, RegionView
from crest.service.job import JobState
from crest.worker.selector import run_selection


def make_job(world_size: int = 1, n: int = 2000, classes: int = 4, **overrides) -> JobState:
    labels = np.random.default_rng(0).integers(0, classes, n)
    settings = {"batch_size": 32, "epochs": 10, "train_frac": 0.2, **overrides}
    config = JobConfig(num_examples=n, num_classes=classes, world_size=world_size, **settings)
    return JobState("job", config, labels)


def see(job: JobState, rank: int, step: int) -> RegionView:
    """What the coordinator does for GetRegion: open the region when it is due, then view."""
    job.open_region(rank, step)
    return job.view(rank, step)


def fake_embeddings(indices: np.ndarray, dim: int = 6) -> np.ndarray:
    """Deterministic per-example embeddings (the same index always gets the same vector)."""
    return np.stack([np.random.default_rng(int(i)).random(dim) for i in indices]).astype(np.float32)


def fill_region(job: JobState, step: int, loss: float = 1.0) -> None:
    """Embed every rank's candidates for the region at ``step`` and run selection."""
    for rank in range(job.config.world_size):
        view = see(job, rank, step)
        if view.status is RegionStatus.EMBED:
            losses = np.full(len(view.candidates), loss, np.float32)
            job.receive_embeddings(
                rank, view.region_id, view.candidates, fake_embeddings(view.candidates), losses
            )
    assert job.region is not None
    region_id = job.region.region_id
    job.complete_selection(region_id, run_selection(job.selection_request(region_id)))


def report(
    job: JobState, step: int, *, loss: float, linear: float = 0.0, curvature: float = 1.0
) -> list:
    """Every rank reports the same per-example loss; returns the ranks' answers."""
    region = job.region
    assert region is not None
    answers = []
    for rank in range(job.config.world_size):
        count = len(see(job, rank, step).check_indices)
        answers.append(job.record_check(rank, CheckReport(
            region_id=region.region_id, step=step, loss_sum=loss * count, count=count,
            linear=linear, quadratic=0.0, curvature=curvature,
        )))  # fmt: skip
    return answers
