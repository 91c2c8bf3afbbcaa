import numpy as np

from crest.service.pool import ExamplePool


def make_pool(n: int = 100, classes: int = 2, window: int = 2) -> ExamplePool:
    return ExamplePool(np.arange(n) % classes, classes, window)


def test_subsets_are_stratified_sorted_and_disjoint_when_possible() -> None:
    pool = make_pool(100, 2)
    subsets = pool.draw_subsets(np.random.default_rng(0), 1, 4, 10)
    seen = np.concatenate([part for subset in subsets for part in subset])
    assert len(np.unique(seen)) == len(seen) == 80
    for subset in subsets:
        for label, part in enumerate(subset):
            assert np.all(pool.labels[part] == label)
            assert np.all(np.diff(part) > 0)


def test_small_classes_are_sampled_inside_each_subset() -> None:
    labels = np.array([0] * 50 + [1] * 3)
    pool = ExamplePool(labels, 2, 1)
    subsets = pool.draw_subsets(np.random.default_rng(1), 1, 3, 5)
    for subset in subsets:
        assert len(subset[1]) == 3  # the whole class, without repeats
        assert len(np.unique(subset[1])) == 3


def test_learned_needs_a_full_window_of_low_losses() -> None:
    pool = make_pool(window=2)
    pool.record_losses(np.array([0, 1, 2]), np.array([0.01, 0.01, 0.5]))
    assert not pool.learned(0.1).any(), "one observation is not a full window"
    pool.record_losses(np.array([0, 1, 2]), np.array([0.01, 0.3, 0.01]))
    assert np.flatnonzero(pool.learned(0.1)).tolist() == [0]
    pool.record_losses(np.array([0]), np.array([0.5]))  # ring buffer: the oldest goes
    assert not pool.learned(0.1).any()


def test_drops_respect_floor_and_cap_and_prefer_the_most_learned() -> None:
    pool = make_pool(n=100, classes=2, window=1)
    losses = np.linspace(0.0, 0.09, 100)
    pool.record_losses(np.arange(100), losses)  # everything learned; 0 most of all
    outcome = pool.evaluate_drops(0, 0.1, floor_per_class=45, max_dropped=100, readmit_after=0)
    assert outcome.dropped == 10
    assert pool.sizes_per_class().tolist() == [45, 45]
    assert sorted(np.flatnonzero(~pool.in_pool).tolist()) == list(range(10))
    capped = make_pool(n=100, classes=2, window=1)
    capped.record_losses(np.arange(100), losses)
    assert capped.evaluate_drops(0, 0.1, 0, max_dropped=7, readmit_after=0).dropped == 7


def test_dropped_examples_are_readmitted_with_an_empty_history() -> None:
    pool = make_pool(n=10, classes=2, window=1)
    pool.record_losses(np.arange(10), np.zeros(10))
    assert pool.evaluate_drops(0, 0.1, 2, 10, readmit_after=2).dropped == 6
    first_dropped = set(np.flatnonzero(~pool.in_pool).tolist())
    assert pool.evaluate_drops(1, 0.1, 2, 10, readmit_after=2).readmitted == 0
    outcome = pool.evaluate_drops(2, 0.1, 2, 10, readmit_after=2)
    assert outcome.readmitted == 6
    # Only the four kept at the floor last time can go now: the readmitted ones have no
    # history and must be observed again before they can leave.
    assert outcome.dropped == 4
    assert first_dropped.isdisjoint(np.flatnonzero(~pool.in_pool).tolist())


def test_ranks_never_share_examples_even_when_subsets_must_overlap() -> None:
    pool = make_pool(n=60, classes=2)  # 30 per class: far fewer than 2 ranks x 4 x 10
    subsets = pool.draw_subsets(np.random.default_rng(2), 2, 4, 10)
    rank_members = [
        np.concatenate([part for subset in subsets[r * 4 : (r + 1) * 4] for part in subset])
        for r in range(2)
    ]
    assert not set(rank_members[0]) & set(rank_members[1])
    assert all(len(part) == 10 for subset in subsets for part in subset)
