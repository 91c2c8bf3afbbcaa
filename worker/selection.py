"""Facility-location coreset selection, batched over many small problems.

CREST selects, for every random subset and every class of a region, ``m`` examples by greedy
maximisation of the facility-location function

    F(S) = sum_i max_{j in S} s_ij,   s_ij = exp(-||g_i - g_j||_2 / d)

over the class's candidates (``d`` = embedding dimension, plain not squared distance). Each
selected ``j`` is weighted by its cluster size: the number of candidates whose most similar
selected element is ``j`` (at least 1).

Determinism rules (the spec's, and the oracle's in ``tests/``):

* ties between equal gains go to the lowest row index of the problem;
* each candidate counts for its most similar selected element, ties to the lowest row index;
* a problem with no more candidates than its budget selects all of them.

"Equal" means equal up to a rounding tolerance (``_TIE_ULPS`` units in the last place of the
largest possible value) so that mathematically tied gains, which float arithmetic may compute
in different summation orders, still resolve to the lowest row. Regions are computed in
float64 (large single problems in float32, see ``_FLOAT64_LIMIT``), whatever the input dtype.

The batched entry point :func:`select_groups` solves every (subset x class) problem of a
region in one vectorised torch call: candidates are padded to the largest problem and masked.
It runs on whatever device its inputs live on.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["greedy_facility_location", "pairwise_similarity", "select_coreset", "select_groups"]

# Gains within this many float eps of the best (scaled by the largest possible gain) are ties.
_TIE_ULPS = 16
# Above this many (problem x row x row x dim) elements, distances go through a matrix product
# (fast, small memory) instead of explicit differences (exact, symmetric, zero diagonal).
_EXACT_DISTANCE_LIMIT = 1 << 24
# Working memory for one chunk of the gain computation, in elements.
_CHUNK_ELEMENTS = 1 << 24
# Up to this many similarities a region is solved in float64, which resolves gains to ~1e-13
# (float32 cannot tell apart gains closer than ~1e-5 on 50 candidates); above it, float32
# halves the memory of large single problems.
_FLOAT64_LIMIT = 1 << 25


def pairwise_similarity(embeddings: Tensor) -> Tensor:
    """Similarities ``exp(-||g_i - g_j||_2 / d)`` within each problem.

    Args:
        embeddings: ``(G, n, d)`` float tensor, ``G`` problems of ``n`` rows each.

    Returns:
        ``(G, n, n)`` tensor of the same dtype, with ones on the diagonal.
    """
    num_groups, n, dim = embeddings.shape
    if num_groups * n * n * dim <= _EXACT_DISTANCE_LIMIT:
        # Explicit differences: exact duplicates get bit-identical similarity columns.
        dist = torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")
    else:
        dist = torch.empty(num_groups, n, n, dtype=embeddings.dtype, device=embeddings.device)
        rows = max(1, _CHUNK_ELEMENTS // max(1, n * dim))
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            dist[:, start:stop] = torch.cdist(
                embeddings[:, start:stop], embeddings, compute_mode="use_mm_for_euclid_dist"
            )
        dist.diagonal(dim1=1, dim2=2).zero_()
    return dist.div_(-dim).exp_()  # (G, n, n) similarity per problem


def greedy_facility_location(sim: Tensor, valid: Tensor, budgets: Tensor) -> Tensor:
    """Greedy facility location for a batch of padded problems.

    Args:
        sim: ``(G, n, n)`` symmetric similarities, zero in padding rows and columns.
        valid: ``(G, n)`` bool, ``False`` on padding rows.
        budgets: ``(G,)`` int64, how many to choose per problem.

    Returns:
        ``(G, k)`` int64 chosen rows in greedy order, ``k = max(min(budget, size))``, padded
        with ``-1`` where a problem chose fewer.
    """
    num_groups, n, _ = sim.shape
    budgets = torch.minimum(budgets.to(sim.device), valid.sum(1))
    k = int(budgets.max()) if num_groups else 0
    if k == 0:
        return torch.zeros(num_groups, 0, dtype=torch.long, device=sim.device)
    # Greedy is a prefix process: running every problem for k steps and cutting each at its
    # own budget gives the same picks, and keeps the loop free of per-problem masks.
    blocked = torch.zeros(num_groups, n, dtype=sim.dtype, device=sim.device)
    blocked.masked_fill_(~valid, float("-inf"))
    cover = torch.zeros(num_groups, n, dtype=sim.dtype, device=sim.device)
    tol = _TIE_ULPS * torch.finfo(sim.dtype).eps * n
    row_offset = torch.arange(num_groups, device=sim.device) * n
    flat_rows = sim.view(num_groups * n, n)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, num_groups * n))
    picks = []
    for _ in range(k):
        # F(S + j) = sum_i max(s_ij, cover_i); maximising it maximises the marginal gain.
        value = _covered_value(sim, cover, rows_per_chunk).add_(blocked)  # (G, n)
        tied = value >= value.max(1, keepdim=True).values - tol
        pick = tied.to(torch.uint8).argmax(1)  # first maximum = lowest row index
        picks.append(pick)
        blocked.scatter_(1, pick.unsqueeze(1), float("-inf"))
        # sim is symmetric: the pick's row holds every candidate's similarity to it.
        torch.maximum(cover, flat_rows.index_select(0, row_offset + pick), out=cover)
    chosen = torch.stack(picks, 1)  # (G, k)
    steps = torch.arange(k, device=sim.device)
    return chosen.masked_fill_(steps >= budgets.unsqueeze(1), -1)


def _covered_value(sim: Tensor, cover: Tensor, rows_per_chunk: int) -> Tensor:
    """``sum_i max(sim[g, i, j], cover[g, i])`` for every problem ``g`` and column ``j``."""
    n = sim.shape[1]
    if rows_per_chunk >= n:
        return torch.maximum(sim, cover.unsqueeze(2)).sum(1)
    total = torch.zeros(sim.shape[0], sim.shape[2], dtype=sim.dtype, device=sim.device)
    for start in range(0, n, rows_per_chunk):
        block = sim[:, start : start + rows_per_chunk]  # (G, rows, n)
        total += torch.maximum(block, cover[:, start : start + rows_per_chunk, None]).sum(1)
    return total


def cluster_sizes(sim: Tensor, valid: Tensor, picks: Tensor) -> Tensor:
    """Weights of chosen rows: how many candidates each one is most similar to (at least 1).

    Args:
        sim: ``(G, n, n)`` similarities; valid: ``(G, n)`` bool; picks: ``(G, k)`` from
            :func:`greedy_facility_location` (``-1`` = none).

    Returns:
        ``(G, k)`` float tensor aligned with ``picks`` (0 where ``picks`` is ``-1``).
    """
    num_groups, n, _ = sim.shape
    k = picks.shape[1]
    if k == 0:
        return torch.zeros(num_groups, 0, dtype=sim.dtype, device=sim.device)
    chosen = picks >= 0
    # Order candidates by row so that argmax's first maximum is the lowest row index.
    by_row = torch.where(chosen, picks, n).sort(1).values  # (G, k)
    by_row_valid = by_row < n
    columns = by_row.clamp(max=n - 1).unsqueeze(1).expand(num_groups, n, k)
    to_chosen = sim.gather(2, columns)  # (G, n, k) similarity of each row to each chosen row
    to_chosen = to_chosen.masked_fill(~by_row_valid.unsqueeze(1), float("-inf"))
    tol = _TIE_ULPS * torch.finfo(sim.dtype).eps
    tied = to_chosen >= to_chosen.max(2, keepdim=True).values - tol
    owner = tied.to(torch.int8).argmax(2)  # (G, n) position in by_row of each row's owner
    counts = torch.zeros(num_groups, k, dtype=sim.dtype, device=sim.device)
    counts.scatter_add_(1, owner, valid.to(sim.dtype))
    counts = torch.where(by_row_valid, counts.clamp(min=1), 0)
    # Map the counts from row order back to greedy order.
    rank_of_pick = torch.where(chosen, picks, n).argsort(1).argsort(1)  # (G, k)
    return counts.gather(1, rank_of_pick) * chosen


def select_groups(
    embeddings: Tensor, groups: Tensor, budgets: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve many facility-location problems in one batched call.

    Args:
        embeddings: ``(M, d)`` float tensor, the candidates of all problems.
        groups: ``(M,)`` int64 problem id of each row, in ``[0, G)``. A problem's rows keep
            their relative order, which decides ties (lowest first).
        budgets: ``(G,)`` int64 how many rows to choose in each problem (``>= 0``).

    Returns:
        ``(rows, chosen_groups, weights)``: ``rows`` ``(K,)`` int64 rows of ``embeddings``,
        problem by problem in increasing id and in greedy order within a problem;
        ``chosen_groups`` ``(K,)`` their problem ids; ``weights`` ``(K,)`` float32 raw cluster
        sizes (each at least 1; a problem's weights sum to at least its size).
    """
    device = embeddings.device
    groups = groups.to(device=device, dtype=torch.long)
    budgets = budgets.to(device=device, dtype=torch.long)
    num_groups = budgets.shape[0]
    counts = torch.bincount(groups, minlength=num_groups)  # (G,)
    n = int(counts.max()) if groups.numel() else 0
    if n == 0 or num_groups == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.zeros(0, dtype=torch.float32, device=device)

    # Stable sort keeps each problem's rows in input order; pad every problem to n rows.
    order = torch.sort(groups, stable=True).indices  # (M,)
    sorted_groups = groups[order]
    starts = torch.cumsum(counts, 0) - counts  # (G,)
    position = torch.arange(groups.numel(), device=device) - starts[sorted_groups]
    padded = torch.full((num_groups, n), -1, dtype=torch.long, device=device)
    padded[sorted_groups, position] = order  # (G, n) input row of each slot
    valid = padded >= 0
    dtype = torch.float64 if num_groups * n * n <= _FLOAT64_LIMIT else torch.float32
    padded_emb = embeddings.to(dtype)[padded.clamp(min=0)] * valid.unsqueeze(2)  # (G, n, d)

    sim = pairwise_similarity(padded_emb)  # (G, n, n)
    if not bool(valid.all()):  # padding rows and columns must neither cover nor be chosen
        sim.masked_fill_(~valid.unsqueeze(2), 0).masked_fill_(~valid.unsqueeze(1), 0)
    picks = greedy_facility_location(sim, valid, budgets)  # (G, k)
    weights = cluster_sizes(sim, valid, picks)  # (G, k)

    chosen = picks >= 0
    rows = padded.gather(1, picks.clamp(min=0))[chosen]
    chosen_groups = torch.arange(num_groups, device=device).unsqueeze(1).expand_as(picks)
    return rows, chosen_groups[chosen], weights[chosen].to(torch.float32)


def select_coreset(embeddings: Tensor, labels: Tensor, per_class: int) -> tuple[Tensor, Tensor]:
    """Select a weighted coreset: greedy facility location within each class.

    This is the stable public entry point; other parts of crest and users call it.

    Args:
        embeddings: ``(n, d)`` float tensor of gradient embeddings, finite.
        labels: ``(n,)`` int64 class of each row (any non-negative integers).
        per_class: examples to select per class (``>= 1``); a class with no more candidates
            selects all of them.

    Returns:
        ``(indices, weights)``: ``indices`` ``(K,)`` int64 rows of the input, class by class in
        increasing label order and in greedy order within a class; ``weights`` ``(K,)`` float32
        raw cluster sizes.

    Raises:
        ValueError: on wrong shapes, dtypes, non-finite values or a budget below 1.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be (n, d), got shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise ValueError(f"embeddings must be a float tensor, got {embeddings.dtype}")
    if labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"labels must be ({embeddings.shape[0]},), got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be integers, got {labels.dtype}")
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    if not bool(torch.isfinite(embeddings).all()):
        raise ValueError("embeddings contain NaN or Inf")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError("labels must be non-negative")
    classes, groups = torch.unique(labels.to(embeddings.device), return_inverse=True)
    budgets = torch.full((classes.numel(),), per_class, dtype=torch.long)
    rows, _, weights = select_groups(embeddings, groups, budgets)
    return rows, weights
