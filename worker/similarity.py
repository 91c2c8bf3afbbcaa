"""Similarities ``s_ij = exp(-||g_i - g_j||_2 / d)`` for facility location.

Two layouts: :func:`pairwise_similarity` for a batch of small padded problems (one tensor op
per step, exact differences while they are cheap), and :func:`symmetric_similarity` for one
large problem, filled block by block into a caller's buffer so that no second ``(n, n)``
tensor ever exists and the result is exactly symmetric (the greedy reads rows as columns).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Problems with at most this many (row x row x dim) elements get distances from explicit
# differences (exact, symmetric, zero diagonal, bit-identical columns for duplicate rows);
# larger ones from a matrix product (fast, small memory, not exact for near-duplicates).
# Decided per problem, so that a problem's result never depends on the rest of its batch.
EXACT_DISTANCE_LIMIT = 1 << 20
# Working memory for one chunk of a distance computation, in elements.
_CHUNK_ELEMENTS = 1 << 24
# Rows of one block of a large problem's similarity (a block is at most 2048^2 elements).
_BLOCK_ROWS = 2048


def pairwise_similarity(embeddings: Tensor) -> Tensor:
    """Similarities within each problem of a batch.

    Args:
        embeddings: ``(G, n, d)`` float tensor, ``G`` problems of ``n`` rows each.

    Returns:
        ``(G, n, n)`` tensor of the same dtype and device, with ones on the diagonal.
    """
    num_groups, n, dim = embeddings.shape
    if n * n * dim <= EXACT_DISTANCE_LIMIT:
        # Explicit differences: exact duplicates get bit-identical similarity columns.
        dist = torch.cdist(embeddings, embeddings, compute_mode="donot_use_mm_for_euclid_dist")
    else:
        dist = torch.empty(num_groups, n, n, dtype=embeddings.dtype, device=embeddings.device)
        rows = max(1, _CHUNK_ELEMENTS // max(1, num_groups * n * dim))
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            dist[:, start:stop] = torch.cdist(
                embeddings[:, start:stop], embeddings, compute_mode="use_mm_for_euclid_dist"
            )
        dist.diagonal(dim1=1, dim2=2).zero_()
    return dist.div_(-dim).exp_()  # (G, n, n) similarity per problem


def symmetric_similarity(embeddings: Tensor, out: Tensor) -> Tensor:
    """Similarities of one problem, written into ``out`` block by block.

    Only blocks on and above the diagonal are computed; each is mirrored below it, so ``out``
    is exactly symmetric with ones on the diagonal whatever the distance method. Extra memory
    is one block (at most ``2048 x 2048`` elements) plus ``torch.cdist``'s own temporaries.

    Args:
        embeddings: ``(n, d)`` float tensor (read only), the dtype the result is computed in.
        out: ``(n, n)`` tensor of that dtype and device, overwritten.

    Returns:
        ``out``.
    """
    n, dim = embeddings.shape
    exact = n * n * dim <= EXACT_DISTANCE_LIMIT
    mode = "donot_use_mm_for_euclid_dist" if exact else "use_mm_for_euclid_dist"
    for start in range(0, n, _BLOCK_ROWS):
        rows = embeddings[start : start + _BLOCK_ROWS]
        for other in range(start, n, _BLOCK_ROWS):
            block = torch.cdist(rows, embeddings[other : other + _BLOCK_ROWS], compute_mode=mode)
            if other == start:  # matrix-product distances are not symmetric to the last bit
                block = block.triu_(1)
                block += block.T.clone()
            block = block.div_(-dim).exp_()  # (rows, cols) similarity
            out[start : start + len(block), other : other + block.shape[1]] = block
            if other != start:
                out[other : other + block.shape[1], start : start + len(block)] = block.T
    return out
