import warnings

import numpy as np
import pytest
import torch

from crest.worker import selection
from crest.worker.cancel import Cancellation, SelectionCancelled
from crest.worker.greedy import cluster_sizes, greedy_facility_location, greedy_incremental
from crest.worker.selection import select_coreset, select_groups
from crest.worker.similarity import pairwise_similarity, symmetric_similarity
from tests.worker.oracle import oracle_coreset


def assert_matches_oracle(embeddings: torch.Tensor, labels: torch.Tensor, per_class: int) -> None:
    indices, weights = select_coreset(embeddings, labels, per_class)
    expected_indices, expected_weights = oracle_coreset(
        embeddings.double().tolist(), labels.tolist(), per_class
    )
    assert indices.dtype == torch.long
    assert weights.dtype == torch.float32
    assert indices.tolist() == expected_indices
    assert weights.tolist() == expected_weights


@pytest.mark.parametrize("seed", range(6))
def test_random_problems_match_oracle(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n, dim, classes = 90, int(torch.randint(2, 12, (1,), generator=gen)), 4
    embeddings = torch.randn(n, dim, generator=gen)
    labels = torch.randint(0, classes, (n,), generator=gen)
    assert_matches_oracle(
        embeddings, labels, per_class=int(torch.randint(1, 9, (1,), generator=gen))
    )


def test_softmax_minus_onehot_embeddings_match_oracle() -> None:
    # The embeddings CREST actually sends: similarities all lie in a narrow band near 1.
    gen = torch.Generator().manual_seed(7)
    labels = torch.randint(0, 10, (200,), generator=gen)
    probs = torch.randn(200, 10, generator=gen).mul(3).softmax(1)
    embeddings = probs - torch.nn.functional.one_hot(labels, 10)
    assert_matches_oracle(embeddings.float(), labels, per_class=5)


def test_exact_duplicates_resolve_to_lowest_row() -> None:
    gen = torch.Generator().manual_seed(3)
    base = torch.randn(6, 4, generator=gen)
    embeddings = torch.cat([base, base, base[:2]])  # rows 6-13 duplicate rows 0-7 mod 6
    labels = torch.zeros(len(embeddings), dtype=torch.long)
    indices, _ = select_coreset(embeddings, labels, per_class=3)
    assert indices.tolist() == oracle_coreset(embeddings.tolist(), labels.tolist(), 3)[0]
    assert all(i < 6 for i in indices.tolist()), "a duplicate must lose to its lower original"
    assert_matches_oracle(embeddings, labels, per_class=8)  # beyond the distinct rows


def test_all_identical_class_gives_first_rows_and_one_cluster() -> None:
    embeddings = torch.ones(7, 3)
    labels = torch.zeros(7, dtype=torch.long)
    indices, weights = select_coreset(embeddings, labels, per_class=3)
    assert indices.tolist() == [0, 1, 2]
    assert weights.tolist() == [7.0, 1.0, 1.0]  # the lowest selected owns every row; min 1


def test_symmetric_ties_go_to_lowest_row() -> None:
    # Equally spaced points on a line, listed out of order: mathematically tied gains are
    # summed in different orders by float arithmetic and must still resolve to the lowest row.
    points = [3.0, 0.0, 2.0, 1.0, 4.0, 5.0]
    embeddings = torch.tensor(points).unsqueeze(1)
    labels = torch.zeros(len(points), dtype=torch.long)
    assert_matches_oracle(embeddings, labels, per_class=2)
    assert_matches_oracle(embeddings, labels, per_class=4)


def test_class_not_larger_than_budget_selects_all() -> None:
    gen = torch.Generator().manual_seed(11)
    embeddings = torch.randn(12, 5, generator=gen)
    labels = torch.tensor([0] * 3 + [1] * 8 + [2])  # class 2 has a single example
    indices, weights = select_coreset(embeddings, labels, per_class=3)
    assert sorted(indices[:3].tolist()) == [0, 1, 2]
    assert indices[-1].item() == 11
    assert weights[-1].item() == 1.0
    assert_matches_oracle(embeddings, labels, per_class=3)
    assert_matches_oracle(embeddings, labels, per_class=50)


def test_weights_cover_every_candidate() -> None:
    gen = torch.Generator().manual_seed(5)
    embeddings = torch.randn(60, 6, generator=gen)
    labels = torch.randint(0, 3, (60,), generator=gen)
    indices, weights = select_coreset(embeddings, labels, per_class=4)
    for label in range(3):
        in_class = labels[indices] == label
        assert weights[in_class].sum().item() == (labels == label).sum().item()


def test_sparse_labels_and_float16_input() -> None:
    gen = torch.Generator().manual_seed(2)
    embeddings = torch.randn(40, 3, generator=gen)
    labels = torch.randint(0, 2, (40,), generator=gen) * 7 + 3  # labels 3 and 10
    expected = select_coreset(embeddings, labels, per_class=4)
    assert_matches_oracle(embeddings, labels, per_class=4)
    half = embeddings.half()
    assert_matches_oracle(half, labels, per_class=4)
    assert expected[0].shape == (8,)


def test_batched_equals_one_problem_at_a_time() -> None:
    gen = torch.Generator().manual_seed(9)
    sizes = [5, 50, 1, 17, 33, 2]
    budgets = torch.tensor([3, 13, 13, 0, 13, 5])
    embeddings = torch.randn(sum(sizes), 8, generator=gen)
    groups = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    shuffle = torch.randperm(len(groups), generator=gen)
    embeddings, groups = embeddings[shuffle], groups[shuffle]
    rows, chosen_groups, weights = select_groups(embeddings, groups, budgets)
    for g, budget in enumerate(budgets.tolist()):
        members = (groups == g).nonzero().squeeze(1)
        alone_rows, _, alone_weights = select_groups(
            embeddings[members], torch.zeros(len(members), dtype=torch.long), torch.tensor([budget])
        )
        assert rows[chosen_groups == g].tolist() == members[alone_rows].tolist()
        assert weights[chosen_groups == g].tolist() == alone_weights.tolist()


def test_large_problems_take_the_float32_matmul_path_and_agree() -> None:
    # Above the float64 limit the kernel switches to float32 and matmul distances; on
    # well-separated data it must still agree with the float64 path's choices.
    gen = torch.Generator().manual_seed(4)
    centers = torch.randn(12, 16, generator=gen) * 10
    embeddings = centers.repeat_interleave(500, 0) + 0.01 * torch.randn(6000, 16, generator=gen)
    groups = torch.zeros(6000, dtype=torch.long)
    rows, _, weights = select_groups(embeddings, groups, torch.tensor([12]))
    assert sorted((rows // 500).tolist()) == list(range(12))  # one per cluster
    assert weights.sum().item() == 6000


@pytest.mark.parametrize(
    ("embeddings", "labels", "per_class", "message"),
    [
        (torch.randn(4), torch.zeros(4, dtype=torch.long), 1, "must be \\(n, d\\)"),
        (torch.randn(4, 2), torch.zeros(3, dtype=torch.long), 1, "labels must be \\(4,\\)"),
        (torch.randn(4, 2), torch.zeros(4), 1, "labels must be integers"),
        (torch.randint(0, 3, (4, 2)), torch.zeros(4, dtype=torch.long), 1, "float tensor"),
        (torch.randn(4, 2), torch.zeros(4, dtype=torch.long), 0, "per_class must be >= 1"),
        (torch.tensor([[0.0, float("nan")]] * 2), torch.zeros(2, dtype=torch.long), 1, "NaN"),
        (torch.tensor([[0.0, float("inf")]] * 2), torch.zeros(2, dtype=torch.long), 1, "Inf"),
        (torch.randn(2, 2), torch.tensor([0, -1]), 1, "non-negative"),
    ],
)
def test_bad_input_is_rejected(embeddings, labels, per_class, message) -> None:
    with pytest.raises(ValueError, match=message):
        select_coreset(embeddings, labels, per_class)


def test_deterministic() -> None:
    gen = torch.Generator().manual_seed(1)
    embeddings = torch.randn(300, 10, generator=gen)
    labels = torch.randint(0, 10, (300,), generator=gen)
    first = select_coreset(embeddings, labels, 7)
    second = select_coreset(embeddings.clone(), labels.clone(), 7)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


def test_empty_input() -> None:
    indices, weights = select_coreset(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long), 2)
    assert indices.shape == (0,)
    assert weights.shape == (0,)


@pytest.mark.parametrize("seed", range(4))
def test_incremental_greedy_picks_what_dense_greedy_picks(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n, dim = (
        int(torch.randint(20, 120, (1,), generator=gen)),
        int(torch.randint(2, 12, (1,), generator=gen)),
    )
    points = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    if seed % 2:  # duplicates and exact ties
        points = torch.cat([points[: n // 2], points[: n - n // 2]])
    sim = pairwise_similarity(points.unsqueeze(0))
    budget = int(torch.randint(1, n, (1,), generator=gen))
    dense = greedy_facility_location(
        sim, torch.ones(1, n, dtype=torch.bool), torch.tensor([budget])
    )
    assert greedy_incremental(sim[0], budget).tolist() == dense[0].tolist()


def test_symmetric_similarity_equals_batched_similarity() -> None:
    gen = torch.Generator().manual_seed(8)
    points = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    out = symmetric_similarity(points, torch.empty(50, 50, dtype=torch.float64))
    assert torch.equal(out, pairwise_similarity(points.unsqueeze(0))[0])
    assert torch.equal(out, out.T)


def _mixed_problems(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    sizes = [30, 7, 45, 1, 30, 12]
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    labels = labels[torch.randperm(len(labels), generator=gen)]
    embeddings = torch.randn(len(labels), 5, generator=gen)
    embeddings[labels == 2] = embeddings[labels == 2][torch.arange(45) % 15]  # duplicates
    return embeddings, labels, torch.tensor(sizes)


@pytest.mark.parametrize("seed", range(3))
def test_incremental_path_matches_oracle(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # Route every problem through the one-at-a-time incremental path.
    monkeypatch.setattr(selection, "_INCREMENTAL_ROWS", 1)
    embeddings, labels, _ = _mixed_problems(seed)
    assert_matches_oracle(embeddings, labels, per_class=6)
    assert_matches_oracle(embeddings, labels, per_class=20)


def test_dense_slices_give_what_one_slice_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    embeddings, labels, _ = _mixed_problems(5)
    whole = select_coreset(embeddings, labels, 6)
    monkeypatch.setattr(selection, "_DENSE_ELEMENTS", 45 * 45 * 2)  # two problems per slice
    sliced = select_coreset(embeddings, labels, 6)
    assert torch.equal(whole[0], sliced[0])
    assert torch.equal(whole[1], sliced[1])
    assert_matches_oracle(embeddings, labels, per_class=6)


def test_incremental_and_dense_paths_agree_above_the_threshold() -> None:
    # 1,100 rows take the incremental path; the dense solver on the same similarities must
    # pick the same rows and give the same weights.
    gen = torch.Generator().manual_seed(12)
    n = selection._INCREMENTAL_ROWS + 76
    points = torch.randn(n, 4, generator=gen)
    rows, _, weights = select_groups(points, torch.zeros(n, dtype=torch.long), torch.tensor([40]))
    sim = symmetric_similarity(points.double(), torch.empty(n, n, dtype=torch.float64))
    valid = torch.ones(1, n, dtype=torch.bool)
    dense = greedy_facility_location(sim.unsqueeze(0), valid, torch.tensor([40]))
    assert rows.tolist() == dense[0].tolist()
    assert weights.tolist() == cluster_sizes(sim.unsqueeze(0), valid, dense)[0].tolist()
    assert weights.sum().item() == n


def test_read_only_input_is_not_written() -> None:
    gen = torch.Generator().manual_seed(13)
    embeddings = torch.randn(120, 4, generator=gen)
    labels = torch.randint(0, 3, (120,), generator=gen)
    frozen = embeddings.numpy().copy()
    frozen.flags.writeable = False  # like an array from Ray's object store
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns on non-writable arrays
        view = torch.from_numpy(frozen)
    result = select_coreset(view, labels, 5)
    assert torch.equal(result[0], select_coreset(embeddings, labels, 5)[0])
    assert np.array_equal(frozen, embeddings.numpy())


def test_many_small_problems_match_oracle() -> None:
    # 1,000 classes' problems of 1-9 rows, budgets 0-3 (with more classes than batch seats,
    # most budgets are 0 or 1): every problem as the brute-force greedy picks it alone.
    rng = np.random.default_rng(21)
    sizes = rng.integers(1, 10, 1000)
    budgets = rng.integers(0, 4, 1000)
    groups = rng.permutation(np.repeat(np.arange(1000), sizes))
    embeddings = rng.standard_normal((len(groups), 6))
    rows, chosen_groups, weights = select_groups(
        torch.from_numpy(embeddings).float(), torch.from_numpy(groups), torch.from_numpy(budgets)
    )
    assert np.all(np.diff(chosen_groups.numpy()) >= 0)
    for g in range(1000):
        members = np.flatnonzero(groups == g)
        mine = chosen_groups == g
        if budgets[g] == 0:
            assert not bool(mine.any())
            continue
        points = embeddings[members].astype(np.float32).astype(np.float64).tolist()
        want_rows, want_weights = oracle_coreset(points, [0] * len(members), int(budgets[g]))
        assert rows[mine].tolist() == members[want_rows].tolist()
        assert weights[mine].tolist() == want_weights


def test_mixed_large_and_small_problems_give_what_each_gives_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Problems of 40 rows and more take the incremental path one by one; the small ones are
    # still solved together, and every problem gets what it gets alone and what the oracle says.
    monkeypatch.setattr(selection, "_INCREMENTAL_ROWS", 40)
    sizes = [5, 50, 1, 17, 41, 2, 33]
    labels = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    gen = torch.Generator().manual_seed(22)
    labels = labels[torch.randperm(len(labels), generator=gen)]
    embeddings = torch.randn(len(labels), 5, generator=gen)
    assert_matches_oracle(embeddings, labels, per_class=6)
    budgets = torch.tensor([3, 13, 1, 0, 13, 5, 7])
    rows, chosen_groups, weights = select_groups(embeddings, labels, budgets)
    for g, budget in enumerate(budgets.tolist()):
        members = (labels == g).nonzero().squeeze(1)
        alone_rows, _, alone_weights = select_groups(
            embeddings[members], torch.zeros(len(members), dtype=torch.long), torch.tensor([budget])
        )
        assert rows[chosen_groups == g].tolist() == members[alone_rows].tolist()
        assert weights[chosen_groups == g].tolist() == alone_weights.tolist()


def _unchunked_similarity(points: torch.Tensor) -> torch.Tensor:
    """The matrix-product similarity in one ``torch.cdist`` call, no chunks."""
    dist = torch.cdist(points, points, compute_mode="use_mm_for_euclid_dist")
    dist.diagonal(dim1=1, dim2=2).zero_()
    return dist.div_(-points.shape[2]).exp_()


@pytest.mark.parametrize(("groups", "n", "chunk"), [(300, 8, 4096), (3, 64, 4096)])
def test_chunked_similarity_bounds_each_chunk_and_equals_one_call(
    groups: int, n: int, chunk: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The matrix-product path with a small chunk: 300 problems (the old row chunking over
    # all problems at once would have fallen to one row at a time, each chunk 2.3x the
    # limit), and problems larger than a chunk (rows of one problem).
    from crest.worker import similarity

    dim = 4
    monkeypatch.setattr(similarity, "EXACT_DISTANCE_LIMIT", 0)
    monkeypatch.setattr(similarity, "_CHUNK_ELEMENTS", chunk)
    work: list[int] = []
    cdist = torch.cdist

    def counting_cdist(a: torch.Tensor, b: torch.Tensor, **kwargs: str) -> torch.Tensor:
        work.append(a.shape[0] * a.shape[1] * b.shape[1] * dim)
        return cdist(a, b, **kwargs)

    points = torch.randn(groups, n, dim, generator=torch.Generator().manual_seed(23)).double()
    monkeypatch.setattr(torch, "cdist", counting_cdist)
    sim = pairwise_similarity(points)
    monkeypatch.setattr(torch, "cdist", cdist)
    rows, per_chunk = similarity.similarity_chunk(n, dim)
    assert max(work) <= chunk and len(work) == -(-groups // per_chunk) * -(-n // rows)
    torch.testing.assert_close(sim, _unchunked_similarity(points), rtol=1e-14, atol=0)


class CancelAt(Cancellation):
    """Cancelled by the work's ``at``-th check: counts how far the work went after it."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at = at

    def check(self) -> None:
        if self.checks + 1 >= self.at:
            self.cancel()
        super().check()


def test_cancelled_kernel_stops_at_its_next_check() -> None:
    gen = torch.Generator().manual_seed(24)
    embeddings = torch.randn(3000, 4, generator=gen)
    groups = torch.arange(3000) % 100
    budgets = torch.full((100,), 20)
    full = CancelAt(10**9)  # never fires: how many checks a whole call makes
    select_groups(embeddings, groups, budgets, full)
    assert full.checks > 20  # one per greedy step at least
    cancel = CancelAt(3)
    with pytest.raises(SelectionCancelled, match="cancelled"):
        select_groups(embeddings, groups, budgets, cancel)
    assert cancel.checks == 3  # no work past the check that saw the cancel

    expired = Cancellation(deadline=0.0)  # time.monotonic() is past it
    with pytest.raises(SelectionCancelled, match="deadline"):
        select_groups(embeddings, groups, budgets, expired)
    assert expired.checks == 1


def test_cancelled_greedy_stops_between_steps() -> None:
    points = torch.randn(300, 4, generator=torch.Generator().manual_seed(25)).double()
    sim = pairwise_similarity(points.unsqueeze(0))
    valid = torch.ones(1, 300, dtype=torch.bool)
    for solve in (
        lambda cancel: greedy_incremental(sim[0], 50, cancel),
        lambda cancel: greedy_facility_location(sim, valid, torch.tensor([50]), cancel),
    ):
        cancel = CancelAt(5)
        with pytest.raises(SelectionCancelled):
            solve(cancel)
        assert cancel.checks == 5  # stopped at step 5 of 50
