"""Greedy facility location on precomputed similarities, and the chosen rows' cluster sizes.

Two solvers with one decision rule, so that they pick the same rows:

* :func:`greedy_facility_location` solves a batch of small padded problems at once. Each step
  recomputes every column's value ``sum_i max(s_ij, cover_i)`` in two big tensor ops on
  preallocated buffers; the rest of a step is a handful of ``(G, n)`` ops, because for
  CREST-sized problems (about 50 rows) the cost is op dispatch, not arithmetic.
* :func:`greedy_incremental` solves one large problem. It keeps each column's marginal gain
  ``sum_i max(s_ij - cover_i, 0)`` and, after a pick, updates it from only the rows whose
  cover rose: about ``n log k`` row reads in all instead of ``n`` per step.

Rule: pick the lowest row whose value is within :func:`tie_tolerance` of the best value (the
value and the gain of a column differ by ``sum_i cover_i``, the same for every column).
"""

from __future__ import annotations

import torch
from torch import Tensor

from crest.worker.cancel import Cancellation

# Gains within this many float eps of the best (scaled by the largest possible gain) are ties.
TIE_ULPS = 16
# Rows of a large problem's similarity read at once in an incremental update (4 Mi elements).
_UPDATE_ELEMENTS = 1 << 22


def tie_tolerance(dtype: torch.dtype, rows: int) -> float:
    """Values of a problem with ``rows`` rows closer than this to the best one are ties."""
    return TIE_ULPS * torch.finfo(dtype).eps * rows


def greedy_facility_location(
    sim: Tensor, valid: Tensor, budgets: Tensor, cancel: Cancellation | None = None
) -> Tensor:
    """Greedy facility location for a batch of padded problems.

    Working memory: one more ``(G, n, n)`` buffer; callers bound ``G n^2``.

    Args:
        sim: ``(G, n, n)`` symmetric similarities, zero in padding rows and columns (read only).
        valid: ``(G, n)`` bool, ``False`` on padding rows.
        budgets: ``(G,)`` int64, how many to choose per problem.
        cancel: checked before every greedy step.

    Returns:
        ``(G, k)`` int64 chosen rows in greedy order, ``k = max(min(budget, size))``, padded
        with ``-1`` where a problem chose fewer.

    Raises:
        SelectionCancelled: ``cancel`` was cancelled or its deadline passed.
    """
    num_groups, n, _ = sim.shape
    device, dtype = sim.device, sim.dtype
    budgets = torch.minimum(budgets.to(device), valid.sum(1))
    k = int(budgets.max()) if num_groups else 0
    if k == 0:
        return torch.zeros(num_groups, 0, dtype=torch.long, device=device)
    tol = tie_tolerance(dtype, n)
    covered = torch.empty_like(sim, memory_format=torch.contiguous_format)  # max(sim, cover)
    blocked = torch.zeros(num_groups, n, dtype=dtype, device=device)  # -inf: chosen, padding
    blocked.masked_fill_(~valid, float("-inf"))
    cover = torch.zeros(num_groups, n, dtype=dtype, device=device)
    cover_column = cover.unsqueeze(2)  # (G, n, 1) view, follows cover's in-place updates
    value = torch.empty(num_groups, n, dtype=dtype, device=device)
    best = torch.empty(num_groups, 1, dtype=dtype, device=device)
    tied = torch.empty(num_groups, n, dtype=torch.uint8, device=device)
    flat = torch.empty(num_groups, dtype=torch.long, device=device)
    picked_rows = torch.empty(num_groups, n, dtype=dtype, device=device)
    row_offset = torch.arange(num_groups, device=device) * n
    flat_rows = sim.reshape(num_groups * n, n)
    picks = []
    # Greedy is a prefix process: running every problem for k steps and cutting each at its
    # own budget gives the same picks, and keeps the loop free of per-problem masks.
    for step in range(k):
        if cancel is not None:
            cancel.check()
        # F(S + j) = sum_i max(s_ij, cover_i); maximising it maximises the marginal gain.
        if step == 0:  # cover is still 0 and similarities are positive
            torch.sum(sim, 1, out=value)
        else:  # cover only grows: max(sim, new cover) = max(covered, new cover), in place
            torch.maximum(sim if step == 1 else covered, cover_column, out=covered)
            torch.sum(covered, 1, out=value)
        value.add_(blocked)
        torch.amax(value, 1, keepdim=True, out=best)
        torch.ge(value, best.sub_(tol), out=tied)
        pick = torch.argmax(tied, 1, keepdim=True)  # (G, 1) first maximum = lowest row
        picks.append(pick)
        blocked.scatter_(1, pick, float("-inf"))
        # sim is symmetric: the pick's row holds every candidate's similarity to it.
        torch.add(pick.view(-1), row_offset, out=flat)
        torch.maximum(cover, torch.index_select(flat_rows, 0, flat, out=picked_rows), out=cover)
    steps = torch.arange(k, device=device)
    return torch.cat(picks, 1).masked_fill_(steps >= budgets.unsqueeze(1), -1)  # (G, k)


def greedy_incremental(sim: Tensor, budget: int, cancel: Cancellation | None = None) -> Tensor:
    """Greedy facility location for one problem, with incremental gain updates.

    Picks exactly what :func:`greedy_facility_location` picks on ``sim[None]`` (same rule;
    sums differ only by rounding, far inside the tie tolerance). Extra memory: ``O(n)`` plus
    one chunk of ``_UPDATE_ELEMENTS`` elements; ``sim`` is read, never copied or written.

    Args:
        sim: ``(n, n)`` symmetric similarities, float32 or float64.
        budget: how many rows to choose (capped at ``n``).
        cancel: checked before every greedy step.

    Returns:
        ``(min(budget, n),)`` int64 chosen rows in greedy order.

    Raises:
        SelectionCancelled: ``cancel`` was cancelled or its deadline passed.
    """
    n = sim.shape[0]
    device, dtype = sim.device, sim.dtype
    k = max(0, min(budget, n))
    tol = tie_tolerance(dtype, n)
    chunk_rows = max(1, _UPDATE_ELEMENTS // max(1, n))
    # Gains accumulate in float64: ~n log k chunk updates must not drift into the tolerance.
    gain = torch.zeros(n, dtype=torch.float64, device=device)
    for start in range(0, n, chunk_rows):  # with an empty cover, gain_j = sum_i s_ij
        gain += sim[start : start + chunk_rows].sum(0, dtype=torch.float64)
    cover = torch.zeros(n, dtype=dtype, device=device)
    picks = torch.empty(k, dtype=torch.long, device=device)
    for step in range(k):
        if cancel is not None:
            cancel.check()
        pick = int(torch.argmax((gain >= gain.max() - tol).to(torch.uint8)))
        picks[step] = pick
        row = sim[pick]  # (n,) similarity of every row to the pick (sim is symmetric)
        changed = torch.nonzero(row > cover).squeeze(1)
        for rows in changed.split(chunk_rows):
            old, new = cover[rows].unsqueeze(1), row[rows].unsqueeze(1)  # (r, 1) each
            # Row i's part of gain_j, max(s_ij - cover_i, 0), falls by clamp(s_ij, old, new) - old.
            block = sim.index_select(0, rows).clamp_(min=old, max=new)  # (r, n)
            # Chunk sums in sim's dtype (a float64 sum would first copy the block to float64).
            gain -= block.sum(0).to(torch.float64).sub_(old.sum(dtype=torch.float64))
        torch.maximum(cover, row, out=cover)
        gain[pick] = float("-inf")
    return picks


def cluster_sizes(sim: Tensor, valid: Tensor, picks: Tensor) -> Tensor:
    """Weights of chosen rows: how many candidates each one is most similar to (at least 1).

    A candidate belongs to its most similar chosen row, ties to the lowest row index.

    Args:
        sim: ``(G, n, n)`` similarities (read only); valid: ``(G, n)`` bool; picks: ``(G, k)``
            int64 chosen rows (``-1`` = none).

    Returns:
        ``(G, k)`` tensor of ``sim``'s dtype aligned with ``picks`` (0 where ``picks`` is -1).
    """
    num_groups, n, _ = sim.shape
    k = picks.shape[1]
    device, dtype = sim.device, sim.dtype
    if k == 0:
        return torch.zeros(num_groups, 0, dtype=dtype, device=device)
    chosen = picks >= 0
    # Chosen rows in increasing row order, so that argmax's first maximum is the lowest row.
    by_row, order = torch.where(chosen, picks, n).sort(1)  # (G, k); n = none
    columns = by_row.clamp(max=n - 1).unsqueeze(1)  # (G, 1, k)
    none = (by_row == n).unsqueeze(1)  # (G, 1, k)
    tol = TIE_ULPS * torch.finfo(dtype).eps
    counts = torch.zeros(num_groups, k, dtype=dtype, device=device)  # in row order
    chunk_rows = max(1, _UPDATE_ELEMENTS // max(1, num_groups * k))
    for start in range(0, n, chunk_rows):
        block = sim[:, start : start + chunk_rows]  # (G, r, n)
        to_chosen = block.gather(2, columns.expand(-1, block.shape[1], -1))  # (G, r, k)
        to_chosen.masked_fill_(none, float("-inf"))
        best = to_chosen.amax(2, keepdim=True).sub_(tol)
        owner = (to_chosen >= best).to(torch.uint8).argmax(2)  # (G, r) position in by_row
        counts.scatter_add_(1, owner, valid[:, start : start + chunk_rows].to(dtype))
    weights = torch.empty_like(counts).scatter_(1, order, counts.clamp_(min=1))
    return weights.masked_fill_(~chosen, 0)
