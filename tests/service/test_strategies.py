"""Strategies crest / random / auto, and the coreset-quality monitor."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest

from crest.proto.contract import RegionStats, RegionStatus
from crest.service.job import JobState
from crest.service.pool import largest_remainder
from crest.service.strategy import (
    EXCESS_EPOCHS,
    RETEST_EXCESS_EPOCHS,
    RETEST_PAYBACK,
    WINDOW,
    bounded_coreset_quality,
    coreset_quality,
    monitor_gain,
    probe_loss,
    window_rates,
)
from crest.worker.selector import run_selection
from tests.service.helpers import fake_embeddings, fill_region, make_job, report, see


def walk(
    job: JobState,
    steps: int,
    embed=fake_embeddings,
    rates=None,
    served: set | None = None,
    unfit: float = 0.0,
    probe_extra: float = 0.0,
    checks_fail: bool = True,
) -> list[str]:
    """Play rank 0 for ``steps`` steps (embeddings from ``embed``); returns each step's mode.

    ``rates``: ``{mode: loss decrease per step}``: every example's loss is a model's plus a
    fixed offset per example, and each step of a mode lowers it by that mode's rate (from
    1.3, floor 0.01); else losses are 1. ``served`` collects every example a batch holds.
    ``unfit``: every tenth example (index % 10 == 0) is one the model cannot fit, as a
    mislabelled one: its loss is ``unfit`` higher (a negative ``unfit``: lower, at least 0)
    and its embedding far from all others'.
    ``probe_extra``: strategy auto's held-out probe examples' losses are that much higher.
    ``checks_fail``: every check fails (short regions); else every check passes (regions run
    to their bound).
    """
    modes = []
    loss = 1.3
    for step in range(steps):
        view = see(job, 0, step)
        if view.status is RegionStatus.EMBED:
            # Per-example offsets (fixed, so that they cancel in a rate): each probe's mean
            # depends on its examples.
            offsets = 0.01 * (view.candidates % 7) if rates else 0.0
            losses = (np.full(len(view.candidates), loss if rates else 1.0) + offsets).astype(
                np.float32
            )
            embeddings = embed(view.candidates)
            if unfit:
                outliers = view.candidates % 10 == 0
                losses[outliers] = np.maximum(losses[outliers] + unfit, 0.0)
                embeddings[outliers] *= 20
            losses[job.pool.held_out[view.candidates]] += probe_extra
            job.receive_embeddings(0, view.region_id, view.candidates, embeddings,
                                   losses)  # fmt: skip
            if see(job, 0, step).status is not RegionStatus.READY:  # a test's random region is
                job.complete_selection(
                    view.region_id, run_selection(job.selection_request(view.region_id))
                )
            view = see(job, 0, step)
        mode = job.status().regions[view.region_id].mode
        modes.append(mode)
        if served is not None:
            batch = view.batches[(step - view.start_step) % len(view.batches)][0]
            served.update(batch.tolist())
        if rates:
            loss = max(0.01, loss - rates[mode])
        if (step + 1 - view.start_step) % view.check_interval == 0 and step + 2 < view.end_step:
            # A failing check ends the region (its linear term mispredicts the loss); a
            # passing one predicts it exactly.
            report(job, step, loss=1.0, linear=5.0 if checks_fail else 0.0)
    return modes


def test_random_strategy_needs_no_embeddings_and_serves_class_proportional_batches() -> None:
    job = make_job(world_size=2, strategy="random")
    cfg = job.config
    views = [see(job, rank, 0) for rank in range(2)]
    for view in views:
        assert view.status is RegionStatus.READY
        assert len(view.candidates) == 0 and len(view.check_indices) == 0
        budgets = largest_remainder(job.pool.sizes_per_class(), cfg.batch_size)
        for indices, weights in view.batches:
            assert weights == pytest.approx(1.0, rel=0.1)  # about 1: rounding corrected
            counts = np.bincount(job.pool.labels[indices], minlength=cfg.num_classes)
            assert counts.tolist() == budgets.tolist()
    mine = [np.concatenate([b[0] for b in v.batches]) for v in views]
    assert not set(mine[0]) & set(mine[1]), "ranks get disjoint batches"
    assert len(np.unique(mine[0])) == len(mine[0]), "distinct batches within a region"
    assert views[0].end_step - views[0].start_step == int(cfg.steps_per_virtual_epoch)
    assert set(walk(job, cfg.total_steps)) == {"random"}


def test_uniform_random_batches_have_the_batch_size() -> None:
    job = make_job(strategy="random", random_batches="uniform")
    for indices, weights in see(job, 0, 0).batches:
        assert len(indices) == job.config.batch_size
        assert np.all(weights == 1.0)


def monitor_oracle(job: JobState, per_subset: bool = False, exponent: float = 1.0) -> tuple:
    """The coreset part of the monitor, written out with loops: per subset, the class means
    (members, and picks weighted by cluster size to ``exponent``) combined with the pool's
    class shares. Its mean over the subsets (``per_subset``: each subset's), and the
    selection."""
    request = job.selection_request(job.region.region_id)
    result = run_selection(request)
    classes = job.config.num_classes
    shares = job.pool.sizes_per_class() / job.pool.sizes_per_class().sum()
    embeddings = request.embeddings.astype(np.float64)
    errors = []
    for subset in np.unique(request.groups // classes):
        target = np.zeros(embeddings.shape[1])
        estimate = np.zeros(embeddings.shape[1])
        for label in range(classes):
            problem = subset * classes + label
            target += shares[label] * embeddings[request.groups == problem].mean(0)
            picked = result.groups == problem
            w = result.weights[picked].astype(np.float64) ** exponent
            picks = embeddings[result.rows[picked]]
            estimate += shares[label] * (w[:, None] * picks).sum(0) / w.sum()
        errors.append(((estimate - target) ** 2).sum() / (target @ target + 1e-12))
    return (errors if per_subset else float(np.mean(errors))), result


def test_monitor_matches_a_looped_oracle_and_random_batches_do_worse() -> None:
    job = make_job()
    view = see(job, 0, 0)
    job.receive_embeddings(0, 0, view.candidates, fake_embeddings(view.candidates),
                           np.ones(len(view.candidates), np.float32))  # fmt: skip
    expected, result = monitor_oracle(job)
    coreset, random = coreset_quality(job.region, result.rows, result.groups, result.weights,
                                      job.config, np.random.default_rng(0), draws=64)  # fmt: skip
    assert coreset == pytest.approx(expected, rel=1e-9)
    assert random > 1.5 * coreset, "coresets should estimate the subset gradient better"
    # The region's monitor measures the coresets as served: sizes to weight_exponent.
    served, _ = monitor_oracle(job, exponent=job.config.weight_exponent)
    assert served != pytest.approx(expected, rel=1e-3), "the exponent changes the estimate"
    job.complete_selection(0, result)
    stats = job.status().regions[0]
    assert stats.coreset_error == pytest.approx(served, rel=1e-9)
    assert stats.random_error is not None and stats.random_error > stats.coreset_error


def embedded_region(**overrides) -> tuple[JobState, object]:
    """A job whose first region is embedded and selected (not yet completed)."""
    job = make_job(**overrides)
    for rank in range(job.config.world_size):
        view = see(job, rank, 0)
        job.receive_embeddings(rank, 0, view.candidates, fake_embeddings(view.candidates),
                               np.ones(len(view.candidates), np.float32))  # fmt: skip
    return job, run_selection(job.selection_request(0))


def test_bounded_monitor_within_budget_is_the_whole_monitor() -> None:
    job, result = embedded_region(world_size=2)
    args = (job.region, result.rows, result.groups, result.weights, job.config)
    whole = coreset_quality(*args, np.random.default_rng(5))
    bounded = bounded_coreset_quality(*args, np.random.default_rng(5))
    subsets = 2 * job.config.num_coresets
    assert (bounded.coreset_error, bounded.random_error) == whole
    assert (bounded.evaluated, bounded.subsets) == (subsets, subsets)
    job.complete_selection(0, result)
    assert job.status().regions[0].monitor == f"all {subsets} subsets"


def test_bounded_monitor_over_budget_measures_a_seeded_sample_of_whole_subsets() -> None:
    job, result = embedded_region(world_size=2)
    region, classes = job.region, job.config.num_classes
    args = (region, result.rows, result.groups, result.weights, job.config)
    member_subset = region.member_groups // classes
    per_subset = np.bincount(member_subset) * region.embeddings.shape[1]
    budget = int(per_subset.max()) * 3  # three subsets, whatever their sizes
    first = bounded_coreset_quality(*args, np.random.default_rng(5), budget=budget)
    again = bounded_coreset_quality(*args, np.random.default_rng(5), budget=budget)
    other = bounded_coreset_quality(*args, np.random.default_rng(6), budget=budget)
    assert first == again, "deterministic for the seed"
    assert 3 <= first.evaluated < first.subsets == 2 * job.config.num_coresets
    assert other.coreset_error != first.coreset_error, "another seed, another sample"
    # The sample's coreset error is the mean of its subsets' own errors (the looped oracle's).
    errors = monitor_oracle(job, per_subset=True)[0]
    assert first.coreset_error == pytest.approx(np.mean([errors[i] for i in first.sampled]))
    tiny = bounded_coreset_quality(*args, np.random.default_rng(5), budget=1)
    assert tiny.evaluated == 1, "at least one subset, whatever the budget"


def test_monitor_gain_edge_cases() -> None:
    assert monitor_gain(None, 1.0) is None
    assert monitor_gain(0.0, 0.0) == 1.0  # both exact: coresets are no better
    assert monitor_gain(0.0, 1.0) == float("inf")
    assert monitor_gain(0.5, 1.0) == 2.0


def same_within_class(job: JobState):
    """Embeddings that depend only on the class: any stratified batch is already exact."""
    return lambda indices: np.eye(6, dtype=np.float32)[job.pool.labels[indices] % 6]


def test_window_rates_match_a_direct_recomputation() -> None:
    # Regions [0, 4) C, [4, 8) R, [8, 12) R, [12, 15) C; probe losses at their starts and 15.
    window = [[0, 4, 1], [4, 8, 0], [8, 12, 0], [12, 15, 1]]
    loss = {0: 2.0, 4: 1.6, 8: 1.5, 12: 1.3, 15: 1.0}
    points = [[step, value] for step, value in reversed(loss.items())]  # any order
    rc, rr = window_rates(window, points)
    assert rc == pytest.approx(((2.0 - 1.6) / 4 + (1.3 - 1.0) / 3) / 2)
    assert rr == pytest.approx(((1.6 - 1.5) / 4 + (1.5 - 1.3) / 4) / 2)
    assert window_rates(window, points[1:]) is None, "the end point is missing"
    assert window_rates(window[:1], points) is None, "no random region"


# walk's losses carry no selection signal (the selected examples' loss is the candidates'
# give or take a hundredth), so tests of the probe's rates turn the lower loss-excess bar off.
RATES_ONLY = {"auto_min_loss_excess": -1e6}


def test_probe_loss_clips_at_a_uniform_guess() -> None:
    losses = np.array([0.1, 0.3, 9.0], np.float32)
    assert probe_loss(losses, 4) == pytest.approx((0.1 + 0.3 + math.log(4)) / 3)


def auto_tests(job: JobState) -> list:
    """Each test's arms (lists of region stats: consecutive coreset regions, or one random
    region) and its measure region last, as one list."""
    tests, current = [], []
    for stats in job.status().regions:
        if stats.auto_test == "coresets" and current and current[-1][0].auto_test == "coresets":
            current[-1].append(stats)
        elif stats.auto_test:
            current.append([stats])
        if stats.auto_test == "measure":
            tests.append(current)
            current = []
    return tests


# Long enough for re-tests: a verdict stands as long as the job took to reach it, and a
# re-test needs two windows' steps left (RETEST_PAYBACK).
RETESTS = {"strategy": "auto", "epochs": 40, "auto_retest_epochs": 1.0, "auto_test_epochs": 0.5}


def test_auto_measures_paired_arms_and_keeps_coresets_while_they_pay() -> None:
    job = make_job(**RETESTS, **RATES_ONLY)
    modes = walk(job, job.config.total_steps, rates={"crest": 0.004, "random": 0.002})
    regions = job.status().regions
    assert regions[0].mode == "crest" and regions[0].auto_test == ""  # before the first test
    tests = auto_tests(job)
    assert len(tests) >= 2, "auto tests again after its verdict"
    arm_steps = 0.5 * job.config.steps_per_virtual_epoch
    for test in tests:
        assert [arm[0].auto_test for arm in test] == ["coresets", "random", "random",
                                                      "coresets", "measure"]  # fmt: skip
        assert [arm[0].mode for arm in test[:4]] == ["crest", "random", "random", "crest"]
        starts = [arm[0].start_step for arm in test]
        lengths = [b - a for a, b in itertools.pairwise(starts)]
        assert lengths[0] >= arm_steps and lengths[3] >= arm_steps, "coreset arms: 1/2 epoch"
        assert lengths[1] == lengths[2] == lengths[0], "random arms as long as the first"
        # The recorded rates are the probe losses' decreases per step, recomputed here.
        probe = [arm[0].probe_loss for arm in test]
        rate = [(probe[i] - probe[i + 1]) / lengths[i] for i in range(4)]
        measure = test[-1][0]
        assert measure.loss_rate_coresets == pytest.approx((rate[0] + rate[3]) / 2, abs=1e-7)
        assert measure.loss_rate_random == pytest.approx((rate[1] + rate[2]) / 2, abs=1e-7)
        assert measure.loss_rate_coresets == pytest.approx(0.004, abs=1e-6)
        assert measure.loss_rate_random == pytest.approx(0.002, abs=1e-6)
    after = [r for r in regions if r.decision.startswith("coresets: probe loss falls")]
    assert after and all(r.mode == "crest" for r in after if not r.auto_test)
    assert modes.count("crest") > modes.count("random")
    # The second interval doubles the first (the same verdict twice), and each is at least
    # as long as the job had run at the verdict.
    ends = [t[-1][0].end_step for t in tests]
    starts = [t[0][0].start_step for t in tests]
    spve = job.config.steps_per_virtual_epoch
    assert starts[1] >= ends[0] + max(spve, ends[0])
    if len(tests) > 2:
        assert starts[2] >= ends[1] + max(2 * spve, ends[1])


def test_auto_ends_coreset_arms_on_time_when_regions_would_run_past_them() -> None:
    # No check fails: coreset regions would run to their bound, past the arm's end. Each arm
    # ends on time, so that the four arms are equally long (ABBA).
    job = make_job(**RETESTS, **RATES_ONLY, adaptive=False, check_interval=4)
    walk(job, job.config.total_steps, rates={"crest": 0.004, "random": 0.002}, checks_fail=False)
    tests = auto_tests(job)
    assert tests
    arm_steps = math.ceil(0.5 * job.config.steps_per_virtual_epoch)
    for test in tests:
        starts = [arm[0].start_step for arm in test]
        assert [b - a for a, b in itertools.pairwise(starts)] == [arm_steps] * 4
        coreset_regions = test[0] + test[3]
        assert all(r.end_step <= r.start_step + arm_steps for r in coreset_regions)
    arm_ends = [r for t in tests for r in t[0] + t[3] if r.end_reason == "bound"]
    assert arm_ends, "a coreset region was cut at its arm's end"


def test_auto_tests_no_more_when_too_few_steps_are_left_to_repay_a_test() -> None:
    job = make_job(**RETESTS, **RATES_ONLY)
    walk(job, job.config.total_steps, rates={"crest": 0.004, "random": 0.002})
    regions, config = job.status().regions, job.config
    window = len(WINDOW) * config.auto_test_epochs * config.steps_per_virtual_epoch
    tests = auto_tests(job)
    for test in tests[1:]:
        assert config.total_steps - test[0][0].start_step >= (1 + RETEST_PAYBACK) * window
    last = regions.index(tests[-1][-1][0])
    assert regions[last + 1].decision.endswith("no further test (too few steps left to repay one)")
    assert all(r.mode == "crest" and not r.auto_test for r in regions[last + 1 :])
    # A job too short for a re-test runs its first test only.
    short = make_job(**{**RETESTS, "epochs": 10}, **RATES_ONLY)
    walk(short, short.config.total_steps, rates={"crest": 0.004, "random": 0.002})
    assert len(auto_tests(short)) == 1


def test_auto_falls_back_when_random_batches_learn_faster_and_retests() -> None:
    job = make_job(**RETESTS, **RATES_ONLY)
    modes = walk(job, job.config.total_steps, rates={"crest": 0.001, "random": 0.003})
    regions = job.status().regions
    tests = auto_tests(job)
    assert len(tests) >= 2, "auto re-tests coresets after a fallback"
    verdict = next(i for i, r in enumerate(regions) if r.decision.startswith("random:"))
    fallback = [r for r in regions[verdict:] if not r.auto_test]
    assert fallback and fallback[0].mode == "random"
    # Serving coresets (as the job starts), they stay down to 1/1.5 of random's rate; serving
    # random batches, they need 1.5x to return (auto_switch_margin).
    assert "0.33x; coresets need 0.667x to stay" in regions[verdict].decision
    retest = regions.index(tests[1][-1][0]) + 1
    assert "0.33x; coresets need 1.5x to return" in regions[retest].decision
    next_test = int(regions[verdict].decision.rsplit(" ", 1)[1])
    assert tests[1][0][0].start_step >= next_test
    assert modes.count("random") > modes.count("crest")


def test_auto_needs_its_margin() -> None:
    # Coresets twice as fast: not enough for auto_min_gain 2.5 without the switching margin;
    # with it (1.5), a job serving coresets keeps them down to 2.5 / 1.5 = 1.67x.
    for margin, verdict in ((1.0, "random"), (1.5, "coresets")):
        job = make_job(strategy="auto", auto_min_gain=2.5, auto_test_epochs=1.0,
                       auto_switch_margin=margin, **RATES_ONLY)  # fmt: skip
        walk(job, 100, rates={"crest": 0.004, "random": 0.002})
        regions = job.status().regions
        verdicts = [r.decision.split(":")[0] for r in regions if "probe loss" in r.decision]
        assert verdicts and set(verdicts) == {verdict}


def play_window(
    policy, config, rates: tuple[float, float], second_excess: float = 0.0
) -> RegionStats:
    """Feed ``policy`` one whole test window of arms as long as the first coreset arm's
    ``auto_test_epochs``: the probe loss falls at ``rates`` (coresets, random) per step; the
    coreset arms' excess is 0 in the first, ``second_excess`` in the second. Returns the
    measure region's statistics."""
    policy.begin(np.arange(3))
    arm = math.ceil(config.auto_test_epochs * config.steps_per_virtual_epoch)
    step, loss = 0, 2.0
    for role, excess in (("coresets", 0.0), ("random", None), ("random", None),
                         ("coresets", second_excess), ("measure", None)):  # fmt: skip
        region = SimpleNamespace(start_step=step, end_step=step + arm, end_reason="bound")
        stats = RegionStats(region_id=0, start_step=step, num_coresets=1, check_interval=1,
                            num_candidates=1, pool_size=1, pool_per_class=[1],
                            auto_test=role)  # fmt: skip
        if excess is not None:
            stats.candidate_loss, stats.selected_loss = 1.0, 1.0 + excess
        policy.measured(step, loss)
        policy.after(region, stats, config)
        loss -= arm * rates[role != "coresets"] if role != "measure" else 0.0
        step += arm
    return stats


@pytest.mark.parametrize("ratio", [0.6, 0.7, 1.3, 1.6])
def test_a_test_switches_the_mode_only_by_the_margin(ratio: float) -> None:
    # Coresets' rate over random batches': a job serving coresets leaves them only under
    # 1/1.5 (0.6), one serving random batches returns to coresets only from 1.5x (1.6).
    for serving in ("crest", "random"):
        job = make_job(strategy="auto", auto_test_epochs=0.5)
        policy = job.strategy
        policy.mode = serving
        play_window(policy, job.config, (0.002 * ratio, 0.002))
        keeps = policy.mode == serving
        assert keeps == (ratio >= 1 / 1.5 if serving == "crest" else ratio < 1.5), policy.decision
    job = make_job(strategy="auto", auto_test_epochs=0.5, auto_switch_margin=1.0)
    play_window(job.strategy, job.config, (0.002 * ratio, 0.002))
    assert job.strategy.mode == ("crest" if ratio >= 1 else "random"), "no margin: the rates"


def test_auto_refuses_coresets_that_chase_examples_the_model_cannot_fit() -> None:
    # Coresets lower the probe loss twice as fast, but facility location picks the far-away,
    # high-loss examples (label noise's mark), so auto serves random batches after all.
    job = make_job(strategy="auto", auto_test_epochs=0.5)
    walk(job, job.config.total_steps, rates={"crest": 0.004, "random": 0.002}, unfit=3.0)
    regions = job.status().regions
    limit = job.config.auto_max_loss_excess * math.log(4)
    # Each test ends with its first coreset arm: no random arm can change that verdict.
    assert {r.auto_test for r in regions} == {"", "coresets"}
    deciding = [i for i, r in enumerate(regions) if r.loss_excess_coresets is not None]
    assert len(deciding) >= 2, "auto re-tests after the fallback"
    for i in deciding:
        arm = list(itertools.takewhile(lambda r: r.auto_test == "coresets", regions[i::-1]))
        # The recorded excess is the mean over the arm's regions, recomputed here.
        excess = np.mean([r.selected_loss - r.candidate_loss for r in arm])
        assert regions[i].loss_excess_coresets == pytest.approx(excess)
        assert excess > limit
        assert regions[i].loss_rate_coresets is None  # no rates: the test ended early
        after = regions[i + 1]
        assert after.mode == "random" and not after.auto_test
        assert after.decision.startswith(f"random: coresets select examples {excess:.2f} nats")
        assert f"(over {limit:.2f}: likely label noise)" in after.decision
    first, second = deciding[:2]
    next_test = int(regions[first + 1].decision.rsplit(" ", 1)[1])
    assert regions[first + 1 : second + 1][-1].start_step >= next_test

    # The same job with the rule off keeps coresets, on the probe's rates.
    job = make_job(strategy="auto", auto_test_epochs=0.5, auto_max_loss_excess=1e6)
    walk(job, job.config.total_steps, rates={"crest": 0.004, "random": 0.002}, unfit=3.0)
    tests = auto_tests(job)
    assert tests and all(t[-1][0].loss_excess_coresets > limit for t in tests)
    decisions = [r.decision for r in job.status().regions if "probe loss falls" in r.decision]
    assert decisions and all(d.startswith("coresets: probe loss falls") for d in decisions)


def test_auto_reads_the_excess_after_one_virtual_epoch_of_a_longer_arm() -> None:
    # With coreset arms of two virtual epochs, a test that the excess decides still ends
    # after one (a re-test after a quarter); within the bars, the first arm runs its two.
    rates = {"crest": 0.004, "random": 0.002}
    job = make_job(strategy="auto", auto_test_epochs=2.0, epochs=30)  # long enough to re-test
    walk(job, job.config.total_steps, rates=rates, unfit=3.0)
    regions, epoch = job.status().regions, job.config.steps_per_virtual_epoch
    deciding = [i for i, r in enumerate(regions) if r.loss_excess_coresets is not None]
    assert len(deciding) >= 2
    for n, i in enumerate(deciding):
        arm = list(itertools.takewhile(lambda r: r.auto_test == "coresets", regions[i::-1]))
        start = arm[-1].start_step
        read_at = (EXCESS_EPOCHS if n == 0 else RETEST_EXCESS_EPOCHS) * epoch
        assert regions[i].start_step - start < read_at <= regions[i].end_step - start
        assert regions[i].end_step - start < read_at + epoch, "ends with the region it is read"
        assert regions[i + 1].mode == "random" and not regions[i + 1].auto_test

    job = make_job(strategy="auto", auto_test_epochs=2.0, auto_max_loss_excess=1e6, epochs=30)
    walk(job, job.config.total_steps, rates=rates, unfit=3.0)
    tests = auto_tests(job)
    assert tests
    for test in tests:
        first_arm = test[0]
        assert first_arm[-1].end_step - first_arm[0].start_step >= 2 * epoch


def test_auto_refuses_coresets_of_easier_examples_than_their_candidates() -> None:
    # The far-away examples facility location picks are the easiest ones here (loss 0): the
    # coresets are easier than their candidates, which auto takes for too few picks per class.
    job = make_job(strategy="auto", auto_test_epochs=0.5)
    walk(job, job.config.total_steps, rates={"crest": 0.004, "random": 0.002}, unfit=-5.0)
    regions = job.status().regions
    deciding = [i for i, r in enumerate(regions) if r.loss_excess_coresets is not None]
    assert deciding
    for i in deciding:
        assert regions[i].loss_excess_coresets < 0
        assert regions[i + 1].decision.startswith("random: coresets select examples")
        assert "nats easier than their candidates (under 0.00:" in regions[i + 1].decision
    # Turned off, the same job keeps coresets on the probe's rates.
    job = make_job(strategy="auto", auto_test_epochs=0.5, auto_min_loss_excess=-1e6)
    walk(job, job.config.total_steps, rates={"crest": 0.004, "random": 0.002}, unfit=-5.0)
    decisions = [r.decision for r in job.status().regions if "probe loss falls" in r.decision]
    assert decisions and all(d.startswith("coresets: probe loss falls") for d in decisions)


def test_auto_weighs_the_loss_excess_over_both_coreset_arms() -> None:
    # Coresets chase high-loss examples only in their second arm: the test runs its whole
    # window, and the mean over both arms decides.
    job = make_job(strategy="auto", auto_test_epochs=0.5)
    policy, cfg = job.strategy, job.config
    limit = cfg.auto_max_loss_excess * math.log(cfg.num_classes)
    measure = play_window(policy, cfg, (0.01, 0.01), second_excess=1.5 * limit)  # same rates
    assert measure.loss_excess_coresets == pytest.approx(0.75 * limit)
    assert policy.verdict == "coresets"


def test_auto_reads_the_excess_after_every_coreset_region_past_the_read_point() -> None:
    # Label noise's excess grows as the model fits the clean examples: inside the bar when
    # first read (after one virtual epoch), over it two regions later, so the test ends
    # there, in its first arm, without a random arm.
    job = make_job(strategy="auto", auto_test_epochs=2.0)
    policy, cfg = job.strategy, job.config
    limit = cfg.auto_max_loss_excess * math.log(cfg.num_classes)
    policy.begin(np.arange(3))
    length = math.ceil(cfg.steps_per_virtual_epoch / 4)  # four regions per virtual epoch
    excesses = [0.0] * 4 + [3 * limit] * 4  # running mean: 0 at the read point, then
    # 0.6, 1.0 (not over) and 1.29 x the bar in the seventh region
    for number, excess in enumerate(excesses, 1):
        start = (number - 1) * length
        region = SimpleNamespace(start_step=start, end_step=start + length, end_reason="bound")
        stats = RegionStats(region_id=number, start_step=start, num_coresets=1, check_interval=1,
                            num_candidates=1, pool_size=1, pool_per_class=[1],
                            auto_test="coresets", candidate_loss=1.0,
                            selected_loss=1.0 + excess)  # fmt: skip
        policy.after(region, stats, cfg)
        if not policy.testing:
            break
    assert number == 7 and policy.verdict == "random"
    assert stats.loss_excess_coresets == pytest.approx(9 * limit / 7)
    assert policy.window == [], "ended in its first arm"
    assert policy.decision.startswith("random: coresets select examples")


def test_candidate_loss_leaves_out_the_probe() -> None:
    # Every candidate's loss is 1 and every probe example's 4 (walk's probe_extra): the
    # regions' candidate loss stays 1, with or without the probe embedded alongside.
    job = make_job(strategy="auto", auto_test_epochs=0.5)
    walk(job, job.config.total_steps, probe_extra=3.0)
    regions = job.status().regions
    tested = [r for r in regions if r.auto_test == "coresets"]
    assert tested and all(r.probe_loss == pytest.approx(math.log(4)) for r in tested)  # clipped
    coresets = [r for r in regions if r.mode == "crest"]
    assert coresets and all(r.candidate_loss == pytest.approx(1.0) for r in coresets)


def test_auto_holds_its_probe_out_of_every_batch() -> None:
    # Every loss seen is "learned", so drops and readmissions run too.
    drops = {"loss_window": 1, "learned_loss": 2.0, "readmit_after": 1}
    job = make_job(strategy="auto", auto_test_epochs=0.5, **drops)
    probe = np.flatnonzero(job.pool.held_out)
    sizes = np.bincount(job.pool.labels, minlength=4)
    per_class = np.bincount(job.pool.labels[probe], minlength=4)
    assert probe.size and (per_class > 0).all() and (per_class <= sizes // 10).all()
    assert not job.pool.in_pool[probe].any() and job.pool.dropped == 0
    served: set[int] = set()
    walk(job, job.config.total_steps, rates={"crest": 0.01, "random": 0.01}, served=served)
    assert served and not served & set(probe.tolist()), "a held-out example was trained on"
    regions = job.status().regions
    assert any(r.dropped for r in regions) and any(r.readmitted for r in regions)
    assert [r.probe_loss for r in regions if r.auto_test] and all(
        r.probe_loss is not None for r in regions if r.auto_test
    )
    np.testing.assert_array_equal(np.flatnonzero(job.pool.held_out), probe)  # still out
    restored = JobState.from_state(job.to_state())
    np.testing.assert_array_equal(np.flatnonzero(restored.pool.held_out), probe)
    again = make_job(strategy="auto", auto_test_epochs=0.5, **drops)
    np.testing.assert_array_equal(np.flatnonzero(again.pool.held_out), probe)  # seed's draw
    assert not make_job().pool.held_out.any(), "only auto holds examples out"


def test_auto_is_deterministic_for_a_seed() -> None:
    def decisions(seed: int) -> list[tuple[str, str, float | None]]:
        job = make_job(strategy="auto", seed=seed)
        walk(job, 100, rates={"crest": 0.003, "random": 0.003})
        return [(r.mode, r.decision, r.probe_loss) for r in job.status().regions]

    assert decisions(1) == decisions(1)
    assert decisions(1) != decisions(2), "another seed draws other probes and regions"


def test_auto_state_survives_a_snapshot_mid_test() -> None:
    job = make_job(strategy="auto")
    walk(job, 30, rates={"crest": 0.004, "random": 0.002})
    restored = JobState.from_state(job.to_state())
    assert restored.strategy == job.strategy


def test_trainer_times_come_from_check_reports() -> None:
    job = make_job()
    fill_region(job, 0)
    from crest.proto.contract import CheckReport

    count = len(see(job, 0, 0).check_indices)
    job.record_check(0, CheckReport(0, 0, 1.0 * count, count, 0.0, 0.0, 1.0, 3.0, 1.0))
    (trainer,) = job.status().trainers
    assert (trainer.rank, trainer.train_seconds, trainer.selection_seconds) == (0, 3.0, 1.0)
    assert trainer.selection_share == 0.25
