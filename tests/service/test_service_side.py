"""The service side of the state machine: regions drawn one ahead, embedded by the selectors
from published weights, their staleness bounded, and the trainer side as a fallback."""

import math

import numpy as np
import pytest

from crest.proto.contract import CheckReport, RegionStatus
from crest.proto.errors import FailedPrecondition, InvalidArgument
from crest.service import journal
from crest.service.codec import pack, unpack
from crest.service.job import JobState, Phase
from crest.worker.selector import run_selection
from tests.service.helpers import fake_embeddings, make_job, report, see


def serve(job: JobState, region_id: int, version: int) -> None:
    """What the coordinator does with the selectors' answer: store, then select."""
    region = job.unfinished_region(region_id)
    assert region is not None
    losses = np.ones(len(region.candidates), np.float32)
    job.receive_service_embeddings(region_id, version, fake_embeddings(region.candidates), losses)
    job.complete_selection(region_id, run_selection(job.selection_request(region_id)))


def fail_check_after(job: JobState, step: int, initial_loss_sum: float = math.nan) -> None:
    region = job.region
    assert region is not None
    count = len(job.view(0, step).check_indices)
    decision = job.record_check(0, CheckReport(
        region_id=region.region_id, step=step, loss_sum=10.0 * count, count=count, linear=0.0,
        quadratic=0.0, curvature=1.0, initial_loss_sum=initial_loss_sum,
    ))  # fmt: skip
    assert decision is not None and decision.new_region


def service_job(**overrides) -> JobState:
    fields = {"adaptive": False, "check_interval": 3} | overrides
    return make_job(selection_side="service", **fields)


def test_the_next_region_is_drawn_once_one_is_open_and_ready() -> None:
    """From the weights of the open region's first step; drawn when the region is both open
    and ready, so that the pool it draws from does not depend on the selectors' timing."""
    job = service_job()
    view = see(job, 0, 0)
    assert view.status is RegionStatus.SELECTING, "the ranks do not embed on the service side"
    assert job.region is not None and job.region.weights_version == 0
    assert job.prepared is None, "region 0 is not ready yet"
    serve(job, 0, 0)
    assert job.prepared is not None and job.prepared.region_id == 1
    assert job.prepared.weights_version == 0
    serve(job, 1, 0)  # prepared while region 0 trains
    assert see(job, 0, 0).status is RegionStatus.READY
    fail_check_after(job, 2)  # region 1 starts at step 4, already prepared
    view = see(job, 0, 4)
    assert view.status is RegionStatus.READY and view.region_id == 1 and view.start_step == 4
    assert job.stats[1].staleness == 4 and job.stats[1].embedded_by == "service"
    assert job.prepared is not None and job.prepared.weights_version == 4
    assert job.stats[2].region_id == 2 and len(job.stats) == 3
    fail_check_after(job, 6)  # region 2 is not ready at its start: drawn once it is
    see(job, 0, 8)
    assert job.prepared is None
    serve(job, 2, 4)
    assert job.prepared is not None and job.prepared.weights_version == 8


def test_the_ranks_measure_l0_since_the_embeddings_are_older_than_theta_0() -> None:
    job = service_job()
    see(job, 0, 0)
    serve(job, 0, 0)
    count = len(job.view(0, 0).check_indices)
    job.record_check(0, CheckReport(
        region_id=0, step=2, loss_sum=2.0 * count, count=count, linear=-0.1, quadratic=0.0,
        curvature=1.0, initial_loss_sum=2.1 * count,
    ))  # fmt: skip
    check = job.stats[0].checks[0]
    assert check.predicted == pytest.approx(2.0) and not check.new_region
    assert job.stats[0].initial_loss == pytest.approx(2.1)
    with pytest.raises(InvalidArgument, match="initial_loss_sum"):
        job.record_check(0, CheckReport(
            region_id=0, step=5, loss_sum=1.0, count=1, linear=0.0, quadratic=0.0,
            curvature=1.0, initial_loss_sum=-1.0,
        ))  # fmt: skip


def test_a_region_lasts_at_most_max_staleness_steps() -> None:
    job = service_job(max_staleness=3, check_interval=8, max_check_interval=8)
    see(job, 0, 0)
    assert job.region is not None and job.region.end_step == 3
    assert job.region.end_reason == "bound"


def test_embeddings_of_another_version_or_shape_are_refused_and_change_nothing() -> None:
    job = service_job()
    see(job, 0, 0)
    region = job.region
    assert region is not None
    before = pack(job.to_state())
    count = len(region.candidates)
    good = fake_embeddings(region.candidates)
    with pytest.raises(FailedPrecondition, match="weights of step 0, not 3"):
        job.receive_service_embeddings(0, 3, good, np.ones(count, np.float32))
    with pytest.raises(InvalidArgument, match="embeddings"):
        job.receive_service_embeddings(0, 0, good[1:], np.ones(count, np.float32))
    with pytest.raises(InvalidArgument, match="finite"):
        job.receive_service_embeddings(0, 0, good * np.nan, np.ones(count, np.float32))
    with pytest.raises(FailedPrecondition, match="not current"):
        job.receive_service_embeddings(7, 0, good, np.ones(count, np.float32))
    assert pack(job.to_state()) == before


def test_without_the_selectors_embeddings_a_region_falls_back_to_random_batches() -> None:
    job = service_job()
    see(job, 0, 0)
    job.complete_fallback(0)
    assert see(job, 0, 0).status is RegionStatus.READY and job.stats[0].fallback
    assert job.stats[0].candidate_loss is None, "no losses were measured"
    assert job.pool.observed.max() == 0


def test_the_trainer_side_takes_over_when_the_model_cannot_be_served() -> None:
    job = service_job()
    see(job, 0, 0)
    job.use_trainer_side("data-dependent control flow")
    assert job.side == "trainer" and job.prepared is None and len(job.stats) == 1
    assert see(job, 0, 0).status is RegionStatus.EMBED, "the ranks embed region 0 now"
    assert job.stats[0].embedded_by == "trainer" and job.stats[0].staleness is None
    job.use_trainer_side("again")  # idempotent
    assert job.side_reason == "data-dependent control flow"


def test_a_prepared_region_is_drawn_again_when_auto_starts_a_test() -> None:
    # A test's regions are drawn when they open, so that the probe's losses come from the
    # weights of their first steps; its random regions are embedded for the probe only.
    job = service_job(strategy="auto", auto_retest_epochs=0.01)  # the first test: region 1
    see(job, 0, 0)
    serve(job, 0, 0)
    serve(job, 1, 0)
    fail_check_after(job, 2)
    see(job, 0, 4)
    region = job.region
    assert region is not None and region.region_id == 1 and region.weights_version == 4
    assert job.stats[1].auto_test == "coresets" and region.probe_slots.size > 0
    assert job.prepared is None and [s.region_id for s in job.stats] == [0, 1]
    # The probe is the held-out one: embedded by the selectors, never a member or a batch.
    probe = np.flatnonzero(job.pool.held_out)
    np.testing.assert_array_equal(region.candidates[region.probe_slots], probe)
    assert not np.isin(region.candidates[region.members], probe).any()
    batches = [b for step in range(4) for b, _ in job.view(0, step).batches]
    assert probe.size and batches and not np.isin(np.concatenate(batches), probe).any()


def serve_unfit(job: JobState, region_id: int) -> None:
    """:func:`serve` with every tenth example one the model cannot fit (as a mislabelled
    one): its loss 3 nats higher and its embedding far from all others', so that facility
    location picks it."""
    region = job.unfinished_region(region_id)
    assert region is not None
    outliers = region.candidates % 10 == 0
    embeddings = fake_embeddings(region.candidates)
    embeddings[outliers] *= 20
    losses = np.where(outliers, 4.0, 1.0).astype(np.float32)
    job.receive_service_embeddings(region_id, region.weights_version, embeddings, losses)
    if region.phase is Phase.SELECTING:  # a test's random region is ready once embedded
        job.complete_selection(region_id, run_selection(job.selection_request(region_id)))


@pytest.mark.parametrize("arm_epochs", [0.5, 2.0])  # the excess read at the arm's end, or within
def test_auto_ends_a_test_with_its_first_arm_on_the_service_side_too(arm_epochs: float) -> None:
    # Coresets of unfit examples lose a test as soon as the excess is read in its first coreset
    # arm: the next region is random, drawn then; no region is drawn ahead while a test runs;
    # auto re-tests.
    # Long enough for re-tests to repay their windows (strategy.RETEST_PAYBACK).
    epochs = 10 if arm_epochs < 1 else 30
    job = service_job(
        strategy="auto", auto_retest_epochs=0.5, auto_test_epochs=arm_epochs, epochs=epochs
    )
    for step in range(job.config.total_steps):
        view = see(job, 0, step)
        while view.status is not RegionStatus.READY:
            for region in job.unfinished():
                if region.phase is Phase.EMBED:
                    serve_unfit(job, region.region_id)
            view = see(job, 0, step)
        assert not (job.strategy.testing and job.prepared is not None), "drawn ahead in a test"
        if (step + 1 - view.start_step) % view.check_interval == 0 and step + 2 < view.end_step:
            report(job, step, loss=1.0, linear=5.0)  # every check fails: short regions
    regions = job.status().regions
    assert {r.auto_test for r in regions} == {"", "coresets"}, "no random arm, no measure"
    deciding = [i for i, r in enumerate(regions) if r.loss_excess_coresets is not None]
    assert len(deciding) >= 2, "auto re-tests after the fallback"
    for i in deciding:
        assert regions[i].loss_excess_coresets > job.config.auto_max_loss_excess * math.log(4)
        after = regions[i + 1]
        assert after.mode == "random" and not after.auto_test
        assert after.decision.startswith("random: coresets select examples")


def test_the_journal_replays_the_service_side_exactly() -> None:
    job = service_job()
    start = pack(job.to_state())
    events = [journal.opened(0, 0)]
    see(job, 0, 0)
    for region_id in (0, 1):
        region = job.unfinished_region(region_id)
        assert region is not None
        emb = fake_embeddings(region.candidates)
        losses = np.linspace(0.5, 1.5, len(region.candidates)).astype(np.float32)
        job.receive_service_embeddings(region_id, 0, emb, losses)
        events.append(journal.served(region_id, 0, emb, losses))
        result = run_selection(job.selection_request(region_id))
        job.complete_selection(region_id, result)
        events.append(journal.selected(region_id, result))
    job.use_trainer_side("test")
    events.append(journal.trainer_side("test"))
    replayed = JobState.from_state(unpack(start))
    for event in events:
        journal.replay(replayed, event)
    assert pack(replayed.to_state()) == pack(job.to_state())


def test_lookahead_draws_as_many_coresets_as_recent_regions_lasted() -> None:
    job = make_job(selection_side="service", num_coresets=2, max_coresets=20, check_interval=5,
                   lookahead_coresets=True)  # fmt: skip
    see(job, 0, 0)
    serve(job, 0, 0)
    serve(job, 1, 0)
    fail_check_after(job, 4)  # region 0 lasted 6 steps
    see(job, 0, 6)
    assert job.prepared is not None and job.prepared.phase is Phase.EMBED
    job.adapt.num_coresets = 20  # as if the curvature had grown k
    assert job._lookahead_coresets() == 6, "as many as the last regions lasted"
    job.adapt.num_coresets = 4
    assert job._lookahead_coresets() == 4, "at most the adaptive P"


def test_regions_drawn_ahead_keep_their_statistics_within_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a region drawn ahead (its statistics last in ``stats``, dropped again when it is
    drawn anew), a job that keeps only its last regions' statistics decides as one that keeps
    them all, and its status ends the same (the next region included)."""
    from crest.proto.contract import region_totals
    from crest.service import job as job_module
    from tests.service.helpers import report

    def run(stats_kept: int) -> tuple[JobState, list[list[int]]]:
        monkeypatch.setattr(job_module, "STATS_KEPT", stats_kept)
        job = service_job(lookahead_coresets=True, max_coresets=8)
        batches, step = [], 0
        while job.regions_opened < 12:
            see(job, 0, step)
            for region in job.unfinished():
                if region.phase is Phase.EMBED:
                    serve(job, region.region_id, region.weights_version)
            view = see(job, 0, step)
            batches.append(view.batches[(step - view.start_step) % len(view.batches)][0].tolist())
            if (step + 1 - view.start_step) % view.check_interval == 0 and step + 2 < view.end_step:
                report(job, step, loss=0.5 + 0.1 * (step % 4))
            step += 1
        return job, batches

    bounded, batches = run(3)
    unbounded, unbounded_batches = run(10**9)
    assert batches == unbounded_batches
    got, whole = bounded.status(), unbounded.status()
    assert got.next_region is not None and got.next_region == whole.next_region
    assert len(bounded.stats) <= 3 and got.regions == whole.regions[-len(got.regions) :]
    assert got.regions_omitted + len(got.regions) == len(whole.regions) == 12
    assert region_totals(got) == region_totals(whole)
    assert pack(JobState.from_state(unpack(pack(bounded.to_state()))).to_state()) == pack(
        bounded.to_state()
    )
