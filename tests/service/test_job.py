import dataclasses
import math

import numpy as np
import pytest

from crest.proto.contract import CheckReport, RegionStatus, RegionView
from crest.proto.errors import FailedPrecondition, InvalidArgument
from crest.service.codec import pack
from crest.service.job import JobState, Upload
from crest.service.pool import largest_remainder
from crest.worker.selector import run_selection
from tests.service.helpers import fake_embeddings, fill_region, make_job, report, see


def snapshot(job: JobState) -> bytes:
    return pack(job.to_state())


def test_first_region_asks_for_stratified_disjoint_subsets() -> None:
    job = make_job()
    cfg = job.config
    view = see(job, 0, 0)
    assert view.status is RegionStatus.EMBED
    region = job.region
    subsets = region.member_groups // cfg.num_classes
    for subset in range(cfg.num_coresets):
        members = region.candidates[region.members[subsets == subset]]
        counts = np.bincount(job.pool.labels[members], minlength=cfg.num_classes)
        expected = largest_remainder(job.pool.sizes_per_class(), cfg.resolved_subset_size)
        assert counts.tolist() == expected.tolist()  # in proportion to the classes
    assert len(np.unique(region.members)) == len(region.members), "subsets overlap"
    assert np.array_equal(view.candidates, np.sort(region.candidates))


def test_region_yields_p_coresets_of_a_batch_with_mean_one_weights() -> None:
    job = make_job()
    fill_region(job, 0)
    view = see(job, 0, 0)
    cfg = job.config
    assert view.status is RegionStatus.READY
    assert len(view.batches) == cfg.num_coresets
    for indices, weights in view.batches:
        assert len(indices) == cfg.batch_size
        assert len(np.unique(indices)) == len(indices)
        assert indices.dtype == np.int64 and weights.dtype == np.float32
    all_weights = np.concatenate([w for _, w in view.batches])
    assert all_weights.mean() == pytest.approx(1.0)
    assert np.all(all_weights > 0)
    assert view.initial_loss == pytest.approx(1.0)


@pytest.mark.parametrize("exponent", [1.0, 0.5, 0.0])
def test_served_weights_are_cluster_sizes_to_the_weight_exponent(exponent: float) -> None:
    """Within each (coreset, class) the served weights are proportional to the selector's
    cluster sizes raised to ``weight_exponent``; each class sums to its share; mean 1."""
    job = make_job(weight_exponent=exponent)
    view = see(job, 0, 0)
    losses = np.ones(len(view.candidates), np.float32)
    job.receive_embeddings(0, 0, view.candidates, fake_embeddings(view.candidates), losses)
    result = run_selection(job.selection_request(0))
    sizes = np.asarray(result.weights, np.float64)
    assert sizes.max() > 2 * sizes.min(), "unequal clusters, or the exponent changes nothing"
    job.complete_selection(0, result)
    region = job.region
    assert region is not None
    served = region.coreset_weights.astype(np.float64)
    classes = job.config.num_classes
    for group in np.unique(result.groups):
        mine = result.groups == group
        ratio = served[mine] / sizes[mine] ** exponent
        assert np.allclose(ratio, ratio[0], rtol=1e-5)
        # At mean 1 a coreset's weights sum to its size, B, and each class holds its share.
        share = region.class_shares[group % classes] * job.config.batch_size
        assert served[mine].sum() == pytest.approx(share, rel=1e-5)
    assert served.mean() == pytest.approx(1.0)


def test_selection_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    def coresets(seed: int) -> list[list[int]]:
        job = make_job(seed=seed)
        fill_region(job, 0)
        return [b[0].tolist() for b in see(job, 0, 0).batches]

    assert coresets(3) == coresets(3)
    assert coresets(3) != coresets(4)


def test_bad_uploads_are_rejected_and_change_nothing() -> None:
    job = make_job()
    view = see(job, 0, 0)
    good = view.candidates[:10]
    emb, losses = fake_embeddings(good), np.ones(10, np.float32)
    before = snapshot(job)
    nan = emb.copy()
    nan[0, 0] = np.nan
    outsider = np.setdiff1d(np.arange(job.config.num_examples), view.candidates)[:10]
    bad_calls = [
        (0, view.region_id, good, nan, losses, "NaN"),
        (0, view.region_id, good, emb, -losses, ">= 0"),
        (0, view.region_id, good, emb[:, :1].repeat(2, 0), losses, "shape"),
        (0, view.region_id, good, emb.astype(np.int32), losses, "floating point"),
        (0, view.region_id, np.r_[good[:9], good[0]], emb, losses, "duplicates"),
        (0, view.region_id, outsider, emb, losses, "not candidates"),
        (0, view.region_id, good.astype(np.float32), emb, losses, "integer"),
        (1, view.region_id, good, emb, losses, "rank"),
    ]
    for rank, region_id, idx, e, loss, message in bad_calls:
        with pytest.raises(InvalidArgument, match=message):
            job.receive_embeddings(rank, region_id, idx, e, loss)
    with pytest.raises(FailedPrecondition, match="not current"):
        job.receive_embeddings(0, view.region_id + 1, good, emb, losses)
    assert snapshot(job) == before


def test_partial_uploads_then_selection() -> None:
    job = make_job()
    view = see(job, 0, 0)
    halves = np.array_split(view.candidates, 2)
    outcome = job.receive_embeddings(
        0, 0, halves[0], fake_embeddings(halves[0]), np.ones(len(halves[0]), np.float32)
    )
    assert outcome is Upload.ACCEPTED
    assert see(job, 0, 0).status is RegionStatus.EMBED
    assert job.missing(0) == len(halves[1])
    outcome = job.receive_embeddings(
        0, 0, halves[1][::-1], fake_embeddings(halves[1][::-1]), np.ones(len(halves[1]), np.float32)
    )
    assert outcome is Upload.COMPLETE
    assert see(job, 0, 0).status is RegionStatus.SELECTING


def test_sequence_numbers_skip_committed_uploads_and_refuse_gaps() -> None:
    job = make_job()
    view = see(job, 0, 0)
    parts = np.array_split(view.candidates, 3)

    def send(part: np.ndarray, seq: int) -> Upload:
        losses = np.ones(len(part), np.float32)
        return job.receive_embeddings(0, 0, part, fake_embeddings(part), losses, seq=seq)

    assert send(parts[0], 1) is Upload.ACCEPTED
    before = snapshot(job)
    assert send(parts[0], 1) is Upload.DUPLICATE  # a retried chunk changes nothing
    with pytest.raises(FailedPrecondition, match="out of order: expected 2"):
        send(parts[2], 3)
    assert snapshot(job) == before
    assert send(parts[1], 2) is Upload.ACCEPTED
    assert send(parts[2], 3) is Upload.COMPLETE
    assert job.committed_seq == [3]
    assert send(parts[2], 3) is Upload.DUPLICATE, "duplicates are skipped even after selection"


def test_fallback_serves_stratified_random_batches_of_weight_one() -> None:
    job = make_job()
    view = see(job, 0, 0)
    job.receive_embeddings(
        0,
        0,
        view.candidates,
        fake_embeddings(view.candidates),
        np.ones(len(view.candidates), np.float32),
    )
    job.complete_fallback(0)
    view = see(job, 0, 0)
    cfg = job.config
    assert view.status is RegionStatus.READY
    budgets = largest_remainder(job.pool.sizes_per_class(), cfg.batch_size)
    for indices, weights in view.batches:
        assert weights == pytest.approx(1.0, rel=0.1)  # random members: about weight 1
        counts = np.bincount(job.pool.labels[indices], minlength=cfg.num_classes)
        assert counts.tolist() == budgets.tolist()
    assert job.status().regions[0].fallback
    other = make_job()
    other_view = see(other, 0, 0)
    other.receive_embeddings(
        0,
        0,
        other_view.candidates,
        fake_embeddings(other_view.candidates),
        np.ones(len(other_view.candidates), np.float32),
    )
    other.complete_fallback(0)
    assert [b[0].tolist() for b in see(other, 0, 0).batches] == [
        b[0].tolist() for b in view.batches
    ], "fallback batches are reproducible"


def test_check_passes_while_the_model_holds_and_fails_when_it_does_not() -> None:
    job = make_job(tau=0.1)
    fill_region(job, 0, loss=2.0)
    (decision,) = report(job, 0, loss=1.9, linear=-0.1)  # F = 2.0 - 0.1 = L_true
    assert not decision.new_region
    assert decision.relative_error == pytest.approx(0.0, abs=1e-6)
    (decision,) = report(job, 1, loss=1.0, linear=-0.2)  # F = 1.8, error 0.8
    assert decision.new_region
    assert decision.relative_error == pytest.approx(0.8)
    assert see(job, 0, 2).region_id == 0  # step 2 trained while the report travelled
    assert see(job, 0, 3).region_id == 1  # step 3 opens the next region
    assert job.status().regions[0].end_reason == "check"
    assert job.status().regions[0].end_step == 3


def test_checks_must_come_in_order_and_steps_wait_for_them() -> None:
    job = make_job()
    fill_region(job, 0)
    assert see(job, 0, 1).region_id == 0  # one step may run ahead of an undecided check
    with pytest.raises(FailedPrecondition, match="needs the check after step 0"):
        see(job, 0, 2)
    before = snapshot(job)
    with pytest.raises(FailedPrecondition, match=r"next check .* after step 0, not 1"):
        job.record_check(0, CheckReport(0, 1, 1.0, 1, 0.0, 0.0, 1.0))
    assert snapshot(job) == before
    first = report(job, 0, loss=1.0)
    assert report(job, 0, loss=5.0) == first, "a decided step answers the same again"


def test_malformed_check_scalars_are_rejected() -> None:
    job = make_job()
    fill_region(job, 0)
    before = snapshot(job)
    for bad in (
        dict(loss_sum=math.nan),
        dict(linear=math.inf),
        dict(loss_sum=-1.0),
        dict(curvature=-1.0),
    ):
        fields = (
            dict(
                region_id=0, step=0, loss_sum=1.0, count=1, linear=0.0, quadratic=0.0, curvature=1.0
            )
            | bad
        )
        with pytest.raises(InvalidArgument):
            job.record_check(0, CheckReport(**fields))
    assert snapshot(job) == before


def test_region_ends_at_its_coreset_use_bound() -> None:
    job = make_job(max_coreset_uses=2, adaptive=False)
    fill_region(job, 0)
    end = job.config.num_coresets * 2
    assert see(job, 0, 0).end_step == end
    for step in range(end - 2):  # checks after steps end-2 and end-1 could not matter
        (decision,) = report(job, step, loss=1.0)
        assert not decision.new_region
    assert see(job, 0, end).region_id == 1
    assert job.status().regions[0].end_reason == "bound"


def test_adaptive_interval_and_coresets_follow_curvature() -> None:
    job = make_job(max_check_interval=4, adaptive=True)
    fill_region(job, 0)
    report(job, 0, loss=1.0, linear=5.0, curvature=8.0)  # fails: region 1 opens at step 2
    fill_region(job, 2)
    region = job.region
    assert (region.region_id, region.check_interval, region.num_coresets) == (1, 1, 5)
    report(job, 2, loss=1.0, linear=5.0, curvature=2.0)  # curvature fell 4x; region 2 at 4
    fill_region(job, 4)
    region = job.region
    assert region.check_interval == 4
    assert region.num_coresets == min(5 * 4, job.config.resolved_max_coresets)
    assert see(job, 0, 4 + 4).region_id == region.region_id  # steps 4..7, check, one more
    with pytest.raises(FailedPrecondition):
        see(job, 0, 4 + 5)


def test_two_ranks_get_disjoint_coresets_and_one_decision() -> None:
    job = make_job(world_size=2)
    fill_region(job, 0)
    views = [see(job, rank, 0) for rank in range(2)]
    mine = [np.concatenate([b[0] for b in v.batches]) for v in views]
    assert len(np.intersect1d(mine[0], mine[1])) == 0
    assert len(views[0].batches) == len(views[1].batches)
    assert len(np.intersect1d(views[0].check_indices, views[1].check_indices)) == 0
    region = job.region
    count = len(views[0].check_indices)
    first = job.record_check(0, CheckReport(0, 0, 1.0 * count, count, 0.0, 0.0, 1.0))
    assert first is None, "rank 0 alone must not decide"
    count1 = len(views[1].check_indices)
    decision = job.record_check(1, CheckReport(0, 0, 3.0 * count1, count1, 0.0, 0.0, 1.0))
    expected = (count + 3 * count1) / (count + count1)
    assert decision.loss == pytest.approx(expected)
    assert job.record_check(0, CheckReport(0, 0, 9.0, 1, 0.0, 0.0, 1.0)) == decision
    assert region.last_decided == 0


def test_job_ends_with_its_budget() -> None:
    job = make_job(max_coreset_uses=None, adaptive=False, tau=1e6)
    total = job.config.total_steps
    fill_region(job, 0)
    for step in range(total - 2):
        report(job, step, loss=1.0)
    assert see(job, 0, total).status is RegionStatus.DONE
    assert job.status().finished


def test_learned_examples_leave_the_pool_and_return_later() -> None:
    job = make_job(
        drop_interval=0.01,
        loss_window=1,
        learned_loss=0.5,
        max_drop_frac=0.25,
        readmit_after=2,
        max_coreset_uses=1,
        adaptive=False,
    )
    floor = job._pool_floor()
    step = 0
    dropped_seen = 0
    for _ in range(6):
        fill_region(job, step, loss=0.1)  # every candidate looks learned
        end = see(job, 0, step).end_step
        for s in range(step, end - 2):
            report(job, s, loss=0.1)
        step = end
        see(job, 0, step)
        dropped_seen = max(dropped_seen, job.status().dropped)
        sizes = job.pool.sizes_per_class()
        assert np.all(sizes >= np.minimum(floor, np.bincount(job.pool.labels)))
        assert job.status().dropped <= 0.25 * job.config.num_examples
    stats = job.status().regions
    assert dropped_seen > 0
    assert sum(r.readmitted for r in stats) > 0, "dropped examples must be re-examined"


def test_state_round_trips_and_continues_identically() -> None:
    from crest.service.codec import unpack

    original = make_job()
    _continue(original, 0, 12)
    clone = JobState.from_state(unpack(pack(original.to_state())))
    assert pack(clone.to_state()) == pack(original.to_state())
    assert clone.status() == original.status()
    assert _continue(original, 12, 40) == _continue(clone, 12, 40)


def _continue(job: JobState, start: int, stop: int) -> list[int]:
    seen = []
    for step in range(start, stop):
        view = see(job, 0, step)
        if view.status is RegionStatus.EMBED:
            fill_region(job, step, loss=0.5)
            view = see(job, 0, step)
        seen += view.batches[(step - view.start_step) % len(view.batches)][0].tolist()
        if (step + 1 - view.start_step) % view.check_interval == 0 and step + 2 < view.end_step:
            report(job, step, loss=0.5 + 0.1 * (step % 4))  # some checks fail, some pass
    return seen


def test_invalid_labels_and_selection_answers_are_rejected() -> None:
    from crest.proto.contract import JobConfig
    from crest.worker.selector import SelectionResult

    config = JobConfig(num_examples=100, num_classes=3, batch_size=10)
    with pytest.raises(InvalidArgument, match=r"integers in \[0, 3\)"):
        JobState("j", config, np.full(100, 3))
    with pytest.raises(InvalidArgument, match="shape"):
        JobState("j", config, np.zeros(99, int))
    job = make_job()
    view = see(job, 0, 0)
    job.receive_embeddings(
        0,
        0,
        view.candidates,
        fake_embeddings(view.candidates),
        np.ones(len(view.candidates), np.float32),
    )
    good = run_selection(job.selection_request(0))
    before = snapshot(job)
    for bad in (
        SelectionResult(good.rows + 10**6, good.groups, good.weights),
        SelectionResult(good.rows, good.groups[::-1].copy(), good.weights),
        SelectionResult(good.rows, good.groups, good.weights * 0),
    ):
        with pytest.raises(InvalidArgument):
            job.complete_selection(0, bad)
    assert snapshot(job) == before
    job.complete_selection(0, good)


def test_the_state_machine_imports_without_torch() -> None:
    import subprocess
    import sys

    code = "import sys, crest.service.job, crest.service.journal; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_view_is_pure_and_opening_is_explicit() -> None:
    job = make_job()
    with pytest.raises(FailedPrecondition, match="not open yet"):
        job.view(0, 0)
    assert job.region is None, "a read changed nothing"
    assert job.open_region(0, 0) and not job.open_region(0, 0)
    assert job.view(0, 0).region_id == 0


def test_the_stored_state_lists_every_attribute_of_a_job() -> None:
    from crest.service.job import _STATE

    job = make_job()
    transient = {"leaving"}  # regions on their way to the archive: empty at every snapshot
    assert set(_STATE) | transient == set(vars(job)), "an attribute a snapshot would drop"
    restored = JobState.from_state(job.to_state())
    assert set(vars(restored)) == set(vars(job))


def assert_same_view(got: RegionView, expected: RegionView) -> None:
    for field in dataclasses.fields(RegionView):
        a, b = getattr(got, field.name), getattr(expected, field.name)
        if field.name == "batches":
            assert len(a) == len(b)
            for (ia, wa), (ib, wb) in zip(a, b, strict=True):
                assert np.array_equal(ia, ib) and np.array_equal(wa, wb)
        elif isinstance(b, np.ndarray):
            assert np.array_equal(a, b), field.name
        else:
            assert a == b, field.name


def test_only_recent_regions_keep_their_per_class_pool_sizes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The statistics of every region stay in the state; their per-class pool sizes (C values
    each) only for the last ``PER_CLASS_STATS_KEPT`` regions, so the state does not grow by C
    values a region."""
    from crest.service import job as job_module

    PER_CLASS_STATS_KEPT = 16  # small: the job has fewer than 64 + 3 regions
    monkeypatch.setattr(job_module, "PER_CLASS_STATS_KEPT", PER_CLASS_STATS_KEPT)
    job = make_job(max_coreset_uses=1)
    step = 0
    while len(job.stats) < PER_CLASS_STATS_KEPT + 3:
        view = see(job, 0, step)
        if view.status is RegionStatus.EMBED:
            fill_region(job, step, loss=0.5)
            view = see(job, 0, step)
        if (step + 1 - view.start_step) % view.check_interval == 0 and step + 2 < view.end_step:
            report(job, step, loss=0.5 + 0.1 * (step % 4))
        step += 1
    kept = [len(s.pool_per_class) for s in job.stats]
    assert kept[-PER_CLASS_STATS_KEPT:] == [job.config.num_classes] * PER_CLASS_STATS_KEPT
    assert kept[:-PER_CLASS_STATS_KEPT] == [0] * (len(kept) - PER_CLASS_STATS_KEPT)
    assert all(s.pool_size > 0 for s in job.stats), "the totals stay"


def test_closed_regions_leave_the_live_state_and_their_views_survive_the_archive() -> None:
    """Only the last closed regions stay whole in the state (and its snapshots); older ones
    are handed out in ``leaving``, and a read that needs one says which, so that the
    coordinator answers it from its archive exactly as the live state did."""
    from crest.service.codec import unpack
    from crest.service.job import LIVE_CLOSED_REGIONS, ArchivedRegion
    from crest.service.region import region_from_state, region_to_state

    job = make_job(max_coreset_uses=1)
    before: dict[int, list[tuple[int, RegionView]]] = {}  # views while still live
    decided: dict[tuple[int, int], object] = {}
    step = 0
    while len(job.leaving) < 6:
        view = see(job, 0, step)
        if view.status is RegionStatus.EMBED:
            fill_region(job, step, loss=0.5)
            view = see(job, 0, step)
        if (step + 1 - view.start_step) % view.check_interval == 0 and step + 2 < view.end_step:
            answer = report(job, step, loss=0.5 + 0.1 * (step % 4))[0]
            decided[(view.region_id, step)] = answer
        step += 1
        for region in job.past:  # closed, still live: its views are final
            if region.region_id not in before:
                steps = range(region.start_step, region.end_step)
                before[region.region_id] = [(s, job.view(0, s)) for s in steps]
    assert [r.region_id for r in job.past] == [len(job.leaving) + i
                                               for i in range(LIVE_CLOSED_REGIONS)]  # fmt: skip
    assert len(unpack(snapshot(job))["past"]) == LIVE_CLOSED_REGIONS

    for gone in job.leaving:
        stored = region_to_state(gone)
        archived = region_from_state(unpack(pack(stored)))  # as stored
        assert archived.members.size == 0, "the archive keeps what views need, not selection's"
        assert stored["candidates"].itemsize < 8, "example ids stored narrow"
        assert archived.candidates.dtype == np.int64
        assert np.array_equal(archived.candidates, gone.candidates)
        for step, view in before[gone.region_id]:
            with pytest.raises(ArchivedRegion) as raised:
                job.view(0, step)
            assert raised.value.region_id == gone.region_id
            assert_same_view(archived.view(0), view)
        for (region_id, check_step), answer in decided.items():
            if region_id == gone.region_id:
                assert archived.decisions[check_step] == answer
                again = CheckReport(region_id, check_step, 1.0, 1, 0.0, 0.0, 1.0)
                with pytest.raises(ArchivedRegion):
                    job.record_check(0, again)
    with pytest.raises(FailedPrecondition, match="is not current"):  # never decided there
        job.record_check(0, CheckReport(job.past[0].region_id, 10**6, 1.0, 1, 0.0, 0.0, 1.0))


def _drive(job: JobState, regions: int) -> list[int]:
    """Train until ``regions`` regions opened (every third one a fallback); the batches."""
    seen = []
    step = 0 if job.region is None else job.region.last_decided + 1
    while job.regions_opened < regions:
        view = see(job, 0, step)
        assert view.status is not RegionStatus.DONE, "the job is too short"
        if view.status is RegionStatus.EMBED:
            if view.region_id % 3 == 2:
                losses = np.full(len(view.candidates), 0.5, np.float32)
                emb = fake_embeddings(view.candidates)
                job.receive_embeddings(0, view.region_id, view.candidates, emb, losses)
                job.complete_fallback(view.region_id)
            else:
                fill_region(job, step, loss=0.5)
            view = see(job, 0, step)
        seen += view.batches[(step - view.start_step) % len(view.batches)][0].tolist()
        if (step + 1 - view.start_step) % view.check_interval == 0 and step + 2 < view.end_step:
            report(job, step, loss=0.5 + 0.1 * (step % 4))
        step += 1
    return seen


def test_only_the_last_regions_keep_their_statistics_and_totals_stay_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The live state keeps the statistics of its last ``STATS_KEPT`` regions; the status
    counts the others in ``regions_omitted`` and sums them in ``omitted_totals``, so that its
    job-wide totals equal an unbounded job's; snapshots, restores and replays (the same
    transitions again) give the same state, and the snapshot stops growing."""
    from crest.proto.contract import region_totals
    from crest.service import job as job_module
    from crest.service.codec import unpack

    kept = 8
    monkeypatch.setattr(job_module, "PER_CLASS_STATS_KEPT", 3)  # trimmed as in a long job

    def run(stats_kept: int, regions: int) -> tuple[JobState, list[int]]:
        monkeypatch.setattr(job_module, "STATS_KEPT", stats_kept)
        job = make_job(n=8000, max_coreset_uses=1)
        return job, _drive(job, regions)

    bounded, batches = run(kept, 3 * kept)
    unbounded, unbounded_batches = run(10**9, 3 * kept)
    assert batches == unbounded_batches, "the bound changes no decision"
    assert len(bounded.stats) == kept and not unbounded.stats_omitted.regions
    got, whole = bounded.status(), unbounded.status()
    assert got.regions_omitted == len(whole.regions) - kept == 2 * kept
    assert got.regions == whole.regions[-kept:]
    assert [r.region_id for r in got.regions] == list(range(2 * kept, 3 * kept))
    totals = region_totals(got)
    assert totals == region_totals(whole)
    assert totals.regions == 3 * kept and totals.fallback == kept and totals.checks > 0
    assert totals.ended_check + totals.ended_bound == 3 * kept - 1
    assert got.model_copy(update={"regions": [], "regions_omitted": 0,
                                  "omitted_totals": whole.omitted_totals}) == whole.model_copy(
        update={"regions": []})  # fmt: skip

    monkeypatch.setattr(job_module, "STATS_KEPT", kept)
    restored = JobState.from_state(unpack(snapshot(bounded)))
    assert snapshot(restored) == snapshot(bounded) and restored.status() == got
    replayed, _ = run(kept, 3 * kept)
    assert snapshot(replayed) == snapshot(bounded)

    sizes = [len(snapshot(bounded))]
    _drive(bounded, 5 * kept)
    assert _drive(restored, 5 * kept) and snapshot(restored) == snapshot(bounded)
    sizes.append(len(snapshot(bounded)))
    monkeypatch.setattr(job_module, "STATS_KEPT", 10**9)
    grown = [len(snapshot(unbounded))]
    _drive(unbounded, 5 * kept)
    grown.append(len(snapshot(unbounded)))
    assert abs(sizes[1] - sizes[0]) < 0.01 * sizes[0], sizes
    assert grown[1] - grown[0] > 10 * abs(sizes[1] - sizes[0]) + 1000, (sizes, grown)
