"""Checks reported by rank 0 on behalf of all ranks: the same decisions as separate reports."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from crest.client.ranks import combine_reports
from crest.proto import steps
from crest.proto.contract import CheckDecision, CheckReport
from crest.proto.errors import FailedPrecondition, InvalidArgument
from crest.service import journal
from crest.service.codec import pack, unpack
from crest.service.job import JobState
from tests.service.helpers import fill_region, make_job, see

WORLD = 4
Send = Callable[[JobState, list[CheckReport], np.random.Generator], CheckDecision]


def separately(
    job: JobState, reports: list[CheckReport], rng: np.random.Generator
) -> CheckDecision:
    """Every rank reports for itself, in a random arrival order; the last one decides."""
    answers = [job.record_check(rank, reports[rank]) for rank in rng.permutation(len(reports))]
    assert all(a is None for a in answers[:-1])
    decision = answers[-1]
    assert decision is not None
    return decision


def combined(job: JobState, reports: list[CheckReport], rng: np.random.Generator) -> CheckDecision:
    rng.permutation(len(reports))  # the same draws as ``separately``: the same scalars follow
    decision = job.record_check(0, combine_reports(reports))
    assert decision is not None, "a report covering every rank decides at once"
    return decision


def rank_reports(job: JobState, step: int, rng: np.random.Generator) -> list[CheckReport]:
    """Scalars of magnitudes far apart, so that the order of their sums shows in the last bits."""
    region = job.region
    assert region is not None
    reports = []
    for rank in range(WORLD):
        count = len(see(job, rank, region.start_step).check_indices)
        scale = 10.0 ** rng.uniform(-6, 1)
        reports.append(CheckReport(
            region_id=region.region_id, step=step,
            loss_sum=count * rng.uniform(0.7, 1.4) + rng.uniform(0, 1e-3), count=count,
            linear=rng.uniform(-0.3, 0.3) * scale, quadratic=rng.uniform(0, 0.2) * scale,
            curvature=rng.uniform(0.1, 10) * scale, train_seconds=rng.uniform(0, 9),
            selection_seconds=rng.uniform(0, 1),
        ))  # fmt: skip
    return reports


def play(send: Send, regions: int = 6, seed: int = 3) -> tuple[JobState, list[CheckDecision]]:
    """A job of ``WORLD`` ranks through ``regions`` regions, every check reported by ``send``."""
    job = make_job(world_size=WORLD, n=1000, max_check_interval=4, adaptive=True)
    rng = np.random.default_rng(seed)
    decisions: list[CheckDecision] = []
    step = 0
    for _ in range(regions):
        fill_region(job, step)
        region = job.region
        assert region is not None
        for s in range(region.start_step, region.end_step):
            if steps.check_due(s, region.start_step, region.check_interval, region.end_step):
                decisions.append(send(job, rank_reports(job, s, rng), rng))
                if decisions[-1].new_region:
                    break
        step = region.end_step
    return job, decisions


def test_a_combined_report_decides_as_the_ranks_separate_reports() -> None:
    separate_job, separate = play(separately)
    combined_job, together = play(combined)
    assert len(separate) >= 8 and {d.new_region for d in separate} == {True, False}
    assert together == separate, "bit-identical decisions, whatever order reports arrived in"
    assert combined_job.status().regions == separate_job.status().regions
    # Not vacuous: summing the same scalars in another order changes some of the last bits.
    rng = np.random.default_rng(0)
    values = [rng.uniform(-0.3, 0.3) * 10.0 ** rng.uniform(-6, 1) for _ in range(400)]
    assert any(
        sum(values[i : i + WORLD]) != sum(reversed(values[i : i + WORLD]))
        for i in range(0, 400, WORLD)
    )


def test_a_combined_report_holds_the_ranks_sums_and_times() -> None:
    job = make_job(world_size=WORLD)
    fill_region(job, 0)
    reports = rank_reports(job, 0, np.random.default_rng(1))
    report = combine_reports(reports)
    assert report.ranks == WORLD
    assert report.count == sum(r.count for r in reports)
    assert report.train_seconds == sum(r.train_seconds for r in reports)
    job.record_check(0, report)
    (trainer,) = job.status().trainers  # rank 0's row holds all ranks' seconds
    assert (trainer.rank, trainer.train_seconds) == (0, report.train_seconds)
    with pytest.raises(RuntimeError, match="rank 2 checked region 0 after step 1"):
        combine_reports([*reports[:2], dataclasses.replace(reports[2], step=1), reports[3]])


def test_the_coordinator_refuses_combined_reports_that_do_not_cover_the_job() -> None:
    job = make_job(world_size=WORLD)
    fill_region(job, 0)
    reports = rank_reports(job, 0, np.random.default_rng(2))
    whole = combine_reports(reports)
    before = pack(job.to_state())
    with pytest.raises(InvalidArgument, match="covering 3 ranks from rank 0"):
        job.record_check(0, combine_reports(reports[:3]))
    with pytest.raises(InvalidArgument, match="covering 4 ranks from rank 1"):
        job.record_check(1, whole)
    with pytest.raises(InvalidArgument, match="at least one rank"):
        job.record_check(0, dataclasses.replace(reports[0], ranks=0))
    assert pack(job.to_state()) == before, "a refused report changes nothing"
    assert job.record_check(2, reports[2]) is None
    with pytest.raises(FailedPrecondition, match=r"ranks \[2\] reported it for themselves"):
        job.record_check(0, whole)
    for rank in (0, 1, 3):  # the separate reports still decide
        decision = job.record_check(rank, reports[rank])
    assert decision is not None and decision.step == 0


def test_a_journaled_combined_report_replays_exactly() -> None:
    job = make_job(world_size=WORLD)
    fill_region(job, 0)
    copy = JobState.from_state(unpack(pack(job.to_state())))
    report = combine_reports(rank_reports(job, 0, np.random.default_rng(4)))
    decision = job.record_check(0, report)
    journal.replay(copy, journal.checked(0, report))
    assert pack(copy.to_state()) == pack(job.to_state())
    assert copy.decided(0, report) == decision
