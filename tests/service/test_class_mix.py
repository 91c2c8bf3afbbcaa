"""Class-proportional subsets, budgets and weights on imbalanced labels (issue: real data)."""

import numpy as np
import pytest

from crest.proto.contract import JobConfig
from crest.proto.errors import InvalidArgument
from crest.service.job import JobState
from crest.service.pool import largest_remainder
from tests.service.helpers import fill_region, see

SHARES = np.array([0.40, 0.25, 0.15, 0.10, 0.05, 0.03, 0.02])  # a 7-class tabular mix


def imbalanced_job(**overrides) -> JobState:
    n = 5000
    labels = np.random.default_rng(1).choice(len(SHARES), n, p=SHARES)
    config = JobConfig(
        num_examples=n, num_classes=len(SHARES), batch_size=128, epochs=10, train_frac=0.1,
        **overrides,
    )  # fmt: skip
    return JobState("imbalanced", config, labels)


def weight_per_class(job: JobState, batches) -> np.ndarray:
    sums = np.zeros(job.config.num_classes)
    for indices, weights in batches:
        np.add.at(sums, job.pool.labels[indices], weights)
    return sums / sums.sum()


def test_largest_remainder_is_exact_and_gives_every_present_class_a_seat() -> None:
    seats = largest_remainder(np.array([900, 60, 30, 9, 1, 0]), 20)
    # exact quotas 18, 1.2, 0.6, 0.18, 0.02, 0 -> 18, 1, 1, 0, 0, 0; the two empty present
    # classes take a seat from the largest class.
    assert seats.tolist() == [16, 1, 1, 1, 1, 0]
    assert largest_remainder(np.array([1, 1, 1]), 2).sum() == 2  # fewer seats than classes
    assert largest_remainder(np.array([3, 1]), 8).tolist() == [6, 2]


@pytest.mark.parametrize("strategy", ["crest", "random"])
def test_summed_weight_per_class_equals_the_class_share(strategy: str) -> None:
    job = imbalanced_job(strategy=strategy)
    if strategy == "crest":
        fill_region(job, 0)
    view = see(job, 0, 0)
    pool_share = job.pool.sizes_per_class() / job.config.num_examples
    assert weight_per_class(job, view.batches) == pytest.approx(pool_share, abs=1e-6)
    for indices, _ in view.batches:
        assert len(indices) == job.config.batch_size, "batches of exactly batch_size"
        counts = np.bincount(job.pool.labels[indices], minlength=len(SHARES))
        assert np.all(counts >= 1), "the 2% class is in every batch"
        assert np.abs(counts / job.config.batch_size - pool_share).max() < 0.01
    assert np.concatenate([w for _, w in view.batches]).mean() == pytest.approx(1.0)


def test_fallback_batches_are_class_proportional_too() -> None:
    job = imbalanced_job()
    view = see(job, 0, 0)
    rng = np.random.default_rng(0)
    embeddings = rng.random((len(view.candidates), 4), dtype=np.float32)
    job.receive_embeddings(0, 0, view.candidates, embeddings, np.ones(len(embeddings), np.float32))
    job.complete_fallback(0)
    batches = see(job, 0, 0).batches
    pool_share = job.pool.sizes_per_class() / job.config.num_examples
    assert weight_per_class(job, batches) == pytest.approx(pool_share, abs=1e-6)
    assert all(len(indices) == job.config.batch_size for indices, _ in batches)


@pytest.mark.parametrize("strategy", ["crest", "random"])
def test_balanced_weighting_is_an_explicit_option(strategy: str) -> None:
    job = imbalanced_job(class_weighting="balanced", strategy=strategy)
    if strategy == "crest":
        fill_region(job, 0)
    batches = see(job, 0, 0).batches
    assert weight_per_class(job, batches) == pytest.approx(np.full(7, 1 / 7), abs=1e-6)
    assert all(len(indices) == job.config.batch_size for indices, _ in batches)


def test_a_class_without_examples_is_an_error_unless_allowed() -> None:
    labels = np.random.default_rng(0).integers(0, 3, 300)  # classes 0..2 of num_classes=5
    config = JobConfig(num_examples=300, num_classes=5, batch_size=10)
    with pytest.raises(InvalidArgument, match=r"2 of num_classes=5 classes have no example"):
        JobState("j", config, labels)
    allowed = config.model_copy(update={"allow_empty_classes": True})
    job = JobState("j", allowed, labels)
    for indices, _ in see(job, 0, 0).batches or [(np.zeros(0, np.int64), None)]:
        assert np.all(job.pool.labels[indices] < 3)


def test_more_classes_than_the_batch_still_gives_batches_of_batch_size() -> None:
    """C > B (1,000 classes, batches of 128): classes are sampled in proportion, per batch."""
    n, classes = 20_000, 1000
    rng = np.random.default_rng(3)
    labels = np.concatenate([np.arange(classes), rng.integers(0, classes, n - classes)])
    config = JobConfig(num_examples=n, num_classes=classes, batch_size=128, epochs=10,
                       subset_size=400, num_coresets=8)  # fmt: skip
    job = JobState("many", config, labels)
    fill_region(job, 0)
    batches = job.view(0, 0).batches
    assert len(batches) == 8 and all(len(i) == 128 for i, _ in batches)
    seen = np.concatenate([job.pool.labels[i] for i, _ in batches])
    # 1,024 draws over 1,000 classes: ~640 distinct expected (a fixed rounding gives 128)
    assert len(np.unique(seen)) > 500, "different batches hold different classes"
    region = job.region
    assert region is not None and region.class_budgets.shape == (8, classes)
    assert np.all(region.class_budgets.sum(1) == 128)


def test_random_rounding_follows_the_class_shares_across_batches() -> None:
    sizes = np.array([500, 300, 150, 50])  # shares 0.5, 0.3, 0.15, 0.05 of 3 seats
    labels = np.repeat(np.arange(4), sizes)
    config = JobConfig(num_examples=len(labels), num_classes=4, batch_size=3)
    pool = JobState("j", config, labels).pool
    rows = pool.quota_rows(3, "proportional", 4000, np.random.default_rng(0))
    assert np.all(rows.sum(1) == 3)
    assert rows.mean(0) == pytest.approx(3 * sizes / sizes.sum(), abs=0.05)


def test_large_classes_are_drawn_without_touching_the_whole_class() -> None:
    """Subsets of a big class are disjoint, in the pool, and uniform over it."""
    n = 200_000
    labels = np.zeros(n, np.int64)
    labels[::2] = 1
    config = JobConfig(num_examples=n, num_classes=2, batch_size=16)
    pool = JobState("big", config, labels).pool
    pool.in_pool[: n // 2] = False  # half of each class dropped
    pool._sizes = None
    subsets = pool.draw_subsets(np.random.default_rng(0), 2, 3, np.array([40, 20]))
    drawn = np.concatenate([part for subset in subsets for part in subset])
    assert len(drawn) == 6 * 60 and len(np.unique(drawn)) == len(drawn), "disjoint"
    assert np.all(pool.in_pool[drawn]) and np.all(drawn >= n // 2)
    assert all(np.all(labels[subset[c]] == c) and len(subset[c]) == (40, 20)[c]
               for subset in subsets for c in (0, 1))  # fmt: skip
