"""Strategies crest / random / auto, and the coreset-quality monitor."""

from __future__ import annotations

import numpy as np
import pytest

from crest.proto.contract import RegionStatus
from crest.service.job import JobState
from crest.service.pool import largest_remainder
from crest.service.strategy import bounded_coreset_quality, coreset_quality, monitor_gain
from crest.worker.selector import run_selection
from tests.service.helpers import fake_embeddings, fill_region, make_job, report, see


def walk(job: JobState, steps: int, embed=fake_embeddings) -> list[str]:
    """Play rank 0 for ``steps`` steps (embeddings from ``embed``); returns each step's mode."""
    modes = []
    for step in range(steps):
        view = see(job, 0, step)
        if view.status is RegionStatus.EMBED:
            job.receive_embeddings(0, view.region_id, view.candidates, embed(view.candidates),
                                   np.ones(len(view.candidates), np.float32))  # fmt: skip
            job.complete_selection(
                view.region_id, run_selection(job.selection_request(view.region_id))
            )
            view = see(job, 0, step)
        modes.append(job.status().regions[view.region_id].mode)
        if (step + 1 - view.start_step) % view.check_interval == 0 and step + 2 < view.end_step:
            report(job, step, loss=1.0, linear=5.0)  # every check fails: short regions
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


def monitor_oracle(job: JobState, per_subset: bool = False) -> tuple:
    """The coreset part of the monitor, written out with loops: per subset, the class means
    (members, and cluster-size-weighted picks) combined with the pool's class shares. Its
    mean over the subsets (``per_subset``: each subset's), and the selection."""
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
            w = result.weights[picked].astype(np.float64)
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
    job.complete_selection(0, result)
    stats = job.status().regions[0]
    assert stats.coreset_error == pytest.approx(expected, rel=1e-9)
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


def test_auto_falls_back_when_coresets_are_no_better_and_retests() -> None:
    job = make_job(strategy="auto", auto_retest_epochs=1.0)
    modes = walk(job, job.config.total_steps, embed=same_within_class(job))
    stats = job.status().regions
    assert stats[0].mode == "crest"
    assert stats[0].coreset_error < 1e-12 and stats[0].random_error < 1e-12  # both exact
    assert stats[1].mode == "random" and "only 1.00x better" in stats[1].decision
    retests = [r for r in stats if r.decision == "re-test coresets"]
    assert retests and all(r.mode == "crest" for r in retests), "auto re-tests periodically"
    assert modes.count("random") > modes.count("crest"), "mostly random batches"
    gap = retests[0].start_step - stats[1].start_step
    assert gap >= job.config.steps_per_virtual_epoch - 1


def test_auto_keeps_coresets_while_they_pay() -> None:
    job = make_job(strategy="auto", auto_min_gain=1.01)
    modes = walk(job, 60)
    assert set(modes) == {"crest"}
    assert all("keep them" in r.decision for r in job.status().regions[1:])


def test_auto_is_deterministic_for_a_seed() -> None:
    def decisions(seed: int) -> list[tuple[str, str]]:
        # With the default subset of 4 max(B, C) candidates the gains here are about 4-11x:
        # a threshold of 7 keeps some regions' coresets and drops others'.
        job = make_job(strategy="auto", seed=seed, auto_min_gain=7.0)
        walk(job, 80)
        return [(r.mode, r.decision) for r in job.status().regions]

    assert decisions(1) == decisions(1)
    assert {mode for mode, _ in decisions(1)} == {"crest", "random"}, "a mixed run"


def test_trainer_times_come_from_check_reports() -> None:
    job = make_job()
    fill_region(job, 0)
    from crest.proto.contract import CheckReport

    count = len(see(job, 0, 0).check_indices)
    job.record_check(0, CheckReport(0, 0, 1.0 * count, count, 0.0, 0.0, 1.0, 3.0, 1.0))
    (trainer,) = job.status().trainers
    assert (trainer.rank, trainer.train_seconds, trainer.selection_seconds) == (0, 3.0, 1.0)
    assert trainer.selection_share == 0.25
