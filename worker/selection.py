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

"Equal" means equal up to a rounding tolerance (``TIE_ULPS`` units in the last place of the
largest possible value) so that mathematically tied gains, which float arithmetic may compute
in different summation orders, still resolve to the lowest row.

How a problem is solved depends on that problem alone, never on the rest of its batch, so a
batch gives exactly what one call per problem gives:

* problems under ``_INCREMENTAL_ROWS`` rows (every CREST region) are solved together in
  float64, in slices of similar sizes padded to the slice's largest problem and holding at
  most ``_DENSE_ELEMENTS`` similarities; problems with budget 0 are skipped;
* larger problems are solved one at a time by incremental greedy, in float64 up to
  ``_FLOAT64_LIMIT`` similarities and in float32 above (a 20,000-row problem's similarities
  take 1.6 GB in float32).

Everything runs on the device of the input embeddings, which are never written to.
"""

from __future__ import annotations

import torch
from torch import Tensor

from crest.worker.cancel import Cancellation
from crest.worker.greedy import cluster_sizes, greedy_facility_location, greedy_incremental
from crest.worker.similarity import pairwise_similarity, symmetric_similarity

__all__ = [
    "cluster_sizes",
    "greedy_facility_location",
    "greedy_incremental",
    "pairwise_similarity",
    "select_coreset",
    "select_groups",
]

# Problems with at least this many rows are solved one at a time by incremental greedy.
_INCREMENTAL_ROWS = 1024
# Similarities of one slice of small problems (64 MiB in float64; the greedy needs as much
# again for its buffer).
_DENSE_ELEMENTS = 1 << 23
# A large problem with up to this many similarities is solved in float64, which resolves
# gains to ~1e-13 (float32 cannot tell apart gains closer than ~1e-5 on 50 candidates).
_FLOAT64_LIMIT = 1 << 25


def select_groups(
    embeddings: Tensor, groups: Tensor, budgets: Tensor, cancel: Cancellation | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve many facility-location problems in one batched call.

    Args:
        embeddings: ``(M, d)`` float tensor, the candidates of all problems (read only).
        groups: ``(M,)`` int64 problem id of each row, in ``[0, G)``. A problem's rows keep
            their relative order, which decides ties (lowest first).
        budgets: ``(G,)`` int64 how many rows to choose in each problem (``>= 0``).
        cancel: checked before each slice or large problem, and inside them between greedy
            steps and distance chunks: an abandoned call stops within one of those.

    Returns:
        ``(rows, chosen_groups, weights)``: ``rows`` ``(K,)`` int64 rows of ``embeddings``,
        problem by problem in increasing id and in greedy order within a problem;
        ``chosen_groups`` ``(K,)`` their problem ids; ``weights`` ``(K,)`` float32 raw cluster
        sizes (each at least 1; a problem's weights sum to at least its size). All on the
        device of ``embeddings``.

    Raises:
        SelectionCancelled: ``cancel`` was cancelled or its deadline passed.
    """
    if cancel is not None:
        cancel.check()
    device = embeddings.device
    groups = groups.to(device=device, dtype=torch.long)
    budgets = budgets.to(device=device, dtype=torch.long)
    num_groups = budgets.shape[0]
    counts = torch.bincount(groups, minlength=num_groups)  # (G,)
    n = int(counts.max()) if groups.numel() else 0
    if n == 0 or num_groups == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.zeros(0, dtype=torch.float32, device=device)

    order = torch.sort(groups, stable=True).indices  # (M,) rows grouped, input order kept
    first = torch.cumsum(counts, 0) - counts  # (G,) where each problem starts in ``order``
    ids, parts = [torch.zeros(0, dtype=torch.long, device=device)], []
    # A problem with no budget or no rows chooses nothing: skipped (with more classes than a
    # batch has seats, most of a region's problems have budget 0).
    for problems in _problem_slices(torch.where(budgets > 0, counts, 0)):
        if cancel is not None:
            cancel.check()
        width = int(counts[problems].max())
        slots = _padded_slots(order, first[problems], counts[problems], width)
        if width >= _INCREMENTAL_ROWS:  # one large problem
            part = _solve_large(embeddings, slots[0], int(budgets[problems[0]]), cancel)
        else:
            part = _solve_dense(embeddings, slots, budgets[problems], cancel)
        ids.append(problems[part[1]])
        parts.append(part)
    chosen_groups = torch.cat(ids)
    # Slices take problems by size: back to increasing id, greedy order kept within each.
    by_id = torch.sort(chosen_groups, stable=True).indices
    empty = torch.zeros(0, dtype=torch.long, device=device)
    rows = torch.cat([empty] + [part[0] for part in parts])[by_id]
    weights = torch.cat([empty.double()] + [part[2] for part in parts])[by_id]
    return rows, chosen_groups[by_id], weights.to(torch.float32)


def _problem_slices(counts: Tensor) -> list[Tensor]:
    """Problem ids solved together, slice by slice (those of size 0 in none): each large
    problem alone; small ones in
    slices of similar sizes (rows rounded up to a power of two), each slice padded to its own
    largest problem and holding at most ``_DENSE_ELEMENTS`` similarities, so that neither a
    few large problems nor many classes make the small ones pay for padding."""
    device = counts.device
    sizes = counts.cpu()
    large = torch.nonzero(sizes >= _INCREMENTAL_ROWS).squeeze(1)
    slices = [large[i : i + 1].to(device) for i in range(len(large))]
    small = torch.nonzero((sizes > 0) & (sizes < _INCREMENTAL_ROWS)).squeeze(1)
    bucket = torch.ceil(torch.log2(sizes[small].double())).long()  # 2^(b-1) < size <= 2^b
    for b in torch.unique(bucket).tolist():
        members = small[bucket == b]  # increasing id
        width = int(sizes[members].max())
        step = max(1, _DENSE_ELEMENTS // (width * width))
        slices += [members[i : i + step].to(device) for i in range(0, len(members), step)]
    return slices


def _padded_slots(order: Tensor, first: Tensor, counts: Tensor, width: int) -> Tensor:
    """``(g, width)`` int64: the input rows of ``g`` problems in their slots, in input order,
    ``-1`` after; problem ``i``'s rows are ``order[first[i] : first[i] + counts[i]]``."""
    position = torch.arange(width, device=order.device)  # (width,)
    index = first.unsqueeze(1) + position  # (g, width)
    inside = position < counts.unsqueeze(1)
    return torch.where(inside, order[index.clamp(max=len(order) - 1)], -1)


def _solve_dense(
    embeddings: Tensor, slots: Tensor, budgets: Tensor, cancel: Cancellation | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve a slice of small problems together; returns (rows, problem in slice, weights)."""
    budgets = budgets[: len(slots)]
    valid = slots >= 0
    padded = not bool(valid.all())
    # (G, n, d) float64 candidates; padding slots repeat row 0 and are masked out below.
    flat_slots = (slots.clamp(min=0) if padded else slots).reshape(-1)
    points = embeddings.index_select(0, flat_slots).view(*slots.shape, -1).to(torch.float64)
    sim = pairwise_similarity(points, cancel)  # (G, n, n)
    if padded:  # padding rows and columns must neither cover nor be chosen
        sim.masked_fill_(~valid.unsqueeze(2), 0).masked_fill_(~valid.unsqueeze(1), 0)
    picks = greedy_facility_location(sim, valid, budgets, cancel)  # (G, k) slots, -1 = none
    weights = cluster_sizes(sim, valid, picks)  # (G, k)
    problem = torch.arange(len(slots), device=slots.device).unsqueeze(1).expand_as(picks)
    rows = slots.gather(1, picks.clamp(min=0))
    chosen = picks >= 0
    if bool(chosen.all()):
        return rows.reshape(-1), problem.reshape(-1), weights.reshape(-1)
    return rows[chosen], problem[chosen], weights[chosen]


def _solve_large(
    embeddings: Tensor, members: Tensor, budget: int, cancel: Cancellation | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Solve one problem, its input rows ``members`` in order; returns (rows, 0s, weights)."""
    n = len(members)
    dtype = torch.float64 if n * n <= _FLOAT64_LIMIT else torch.float32
    start = int(members[0])
    if bool((members == torch.arange(start, start + n, device=members.device)).all()):
        points = embeddings[start : start + n]  # a view: no copy of a large input
    else:
        points = embeddings[members]
    sim = torch.empty(n, n, dtype=dtype, device=embeddings.device)
    symmetric_similarity(points.to(dtype), out=sim, cancel=cancel)
    picks = greedy_incremental(sim, budget, cancel)  # (k,)
    valid = torch.ones(1, n, dtype=torch.bool, device=sim.device)
    weights = cluster_sizes(sim.unsqueeze(0), valid, picks.unsqueeze(0)).squeeze(0)
    return members[picks], torch.zeros_like(picks), weights


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
