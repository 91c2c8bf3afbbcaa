"""The weighted training loss on a coreset batch."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def weighted_loss(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """``mean_i w_i · ℓ_i`` with ℓ the per-example cross-entropy.

    Args:
        logits: ``(n, C)``. targets: ``(n,)`` int64. weights: ``(n,)`` float (a coreset's
            weights average 1 over the region, so the loss scale matches an unweighted mean).
    """
    losses = F.cross_entropy(logits, targets, reduction="none")
    return (losses * weights.to(losses.dtype)).mean()
