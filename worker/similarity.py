"""Similarities ``s_ij = exp(-||g_i - g_j||_2 / d)`` for facility location.

Two layouts: :func:`pairwise_similarity` for a batch of small padded problems (one tensor op
per step, exact differences while they are cheap), and :func:`symmetric_similarity` for one
large problem, filled block by block into a caller's buffer so that no second ``(n, n)``
tensor ever exists and the result is exactly symmetric (the greedy reads rows as columns).
"""

from __future__ import annotations

import torch
from torch import Tensor

from crest.worker.cancel import Cancellation

# Problems with at most this many (row x row x dim) elements get distances from explicit
# differences (exact, symmetric, zero diagonal, bit-identical columns for duplicate rows);
# larger ones from a matrix product (fast, small memory, not exact for near-duplicates).
# Decided per problem, so that a problem's result never depends on the rest of its batch.
EXACT_DISTANCE_LIMIT = 1 << 20
# Working memory for one chunk of a distance computation, in elements.
_CHUNK_ELEMENTS = 1 << 24
# Rows of one block of a large problem's similarity (a block is at most 2048^2 elements).
_BLOCK_ROWS = 2048


def pairwise_similarity(embeddings: Tensor, cancel: Cancellation | None = None) -> Tensor:
    """Similarities within each problem of a batch.

    Matrix-product distances are computed in chunks of whole problems, or of rows of one
    problem when a problem alone exceeds the chunk, each of about ``_CHUNK_ELEMENTS``
    (rows x n x dim): memory and work per chunk stay bounded however many problems there are
    (chunking rows across every problem at once would fall to one row per chunk at 1,000
    classes). The chunking depends on ``(n, dim)`` only, never on the number of problems.

    Args:
        embeddings: ``(G, n, d)`` float tensor, ``G`` problems of ``n`` rows each.
        cancel: checked between chunks (:class:`~crest.worker.cancel.Cancellation`).

    Returns:
        ``(G, n, n)`` tensor of the same dtype and device, with ones on the diagonal.

    Raises:
        SelectionCancelled: ``cancel`` was cancelled or its deadline passed.
    """
    num_groups, n, dim = embeddings.shape
    if n * n * dim <= EXACT_DISTANCE_LIMIT:
        # Explicit differences: exact duplicates get bit-identical similarity columns.
        dist = torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")
    else:
        dist = torch.empty(num_groups, n, n, dtype=embeddings.dtype, device=embeddings.device)
        rows, groups = similarity_chunk(n, dim)
        for first in range(0, num_groups, groups):
            problems = embeddings[first : first + groups]
            for start in range(0, n, rows):
                if cancel is not None:
                    cancel.check()
                dist[first : first + groups, start : start + rows] = torch.cdist(
                    problems[:, start : start + rows],
                    problems,
                    compute_mode="use_mm_for_euclid_dist",
                )
        dist.diagonal(dim1=1, dim2=2).zero_()
    return dist.div_(-dim).exp_()  # (G, n, n) similarity per problem


def similarity_chunk(n: int, dim: int) -> tuple[int, int]:
    """``(rows, problems)`` of one matrix-product distance chunk for problems of ``n`` rows
    in ``dim`` dimensions: whole problems while one fits ``_CHUNK_ELEMENTS``, else rows of
    one problem (at least one)."""
    per_row = max(1, n * dim)
    rows = min(n, max(1, _CHUNK_ELEMENTS // per_row))
    return rows, max(1, _CHUNK_ELEMENTS // (rows * per_row)) if rows == n else 1


def symmetric_similarity(
    embeddings: Tensor, out: Tensor, cancel: Cancellation | None = None
) -> Tensor:
    """Similarities of one problem, written into ``out`` block by block.

    Only blocks on and above the diagonal are computed; each is mirrored below it, so ``out``
    is exactly symmetric with ones on the diagonal whatever the distance method. Extra memory
    is one block (at most ``2048 x 2048`` elements) plus ``torch.cdist``'s own temporaries.

    Args:
        embeddings: ``(n, d)`` float tensor (read only), the dtype the result is computed in.
        out: ``(n, n)`` tensor of that dtype and device, overwritten.
        cancel: checked between blocks.

    Returns:
        ``out``.

    Raises:
        SelectionCancelled: ``cancel`` was cancelled or its deadline passed.
    """
    n, dim = embeddings.shape
    exact = n * n * dim <= EXACT_DISTANCE_LIMIT
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist"
    for start in range(0, n, _BLOCK_ROWS):
        rows = embeddings[start : start + _BLOCK_ROWS]
        for other in range(start, n, _BLOCK_ROWS):
            if cancel is not None:
                cancel.check()
            block = torch.cdist(rows, embeddings[other : other + _BLOCK_ROWS], compute_mode=mode)
            if other == start:  # matrix-product distances are not symmetric to the last bit
                block = block.triu_(1)
                block += block.T.clone()
            block = block.div_(-dim).exp_()  # (rows, cols) similarity
            out[start : start + len(block), other : other + block.shape[1]] = block
            if other != start:
                out[other : other + block.shape[1], start : start + len(block)] = block.T
    return out
