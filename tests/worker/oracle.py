"""Brute-force float64 facility location, written from the spec and nothing else.

Independent of the kernel on purpose: Python lists, ``math.dist`` and ``math.fsum`` (an exactly
rounded sum, so values that are mathematically equal compare equal whatever the order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def oracle_coreset(
    embeddings: Sequence[Sequence[float]], labels: Sequence[int], per_class: int
) -> tuple[list[int], list[float]]:
    """Greedy facility location per class; returns (indices, cluster-size weights)."""
    dim = len(embeddings[0])
    indices: list[int] = []
    weights: list[float] = []
    for label in sorted(set(labels)):
        rows = [i for i, y in enumerate(labels) if y == label]
        sim = [
            [math.exp(-math.dist(embeddings[i], embeddings[j]) / dim) for j in rows] for i in rows
        ]
        cover = [0.0] * len(rows)
        chosen: list[int] = []  # positions within rows
        for _ in range(min(per_class, len(rows))):
            best, best_value = -1, -math.inf
            for j in range(len(rows)):
                if j in chosen:
                    continue
                value = math.fsum(max(sim[i][j], cover[i]) for i in range(len(rows)))
                if value > best_value:  # strict: ties keep the lowest row
                    best, best_value = j, value
            chosen.append(best)
            cover = [max(cover[i], sim[i][best]) for i in range(len(rows))]
        counts = dict.fromkeys(chosen, 0)
        for i in range(len(rows)):
            owner = max(sorted(chosen), key=lambda j: (sim[i][j], -j))
            counts[owner] += 1
        indices += [rows[j] for j in chosen]
        weights += [float(max(1, counts[j])) for j in chosen]
    return indices, weights
