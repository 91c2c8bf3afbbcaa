"""Gradient embeddings: what a trainer sends the coordinator about each candidate.

The embedding of example ``i`` is the gradient of its loss with respect to the logits,
``softmax(z_i) - onehot(y_i)`` (C floats, one forward pass in eval mode, no backward). The
richer option is the last linear layer's per-example gradient ``(softmax(z_i) - onehot(y_i))
⊗ [h_i, 1]`` (h_i the layer's input features, 1 for its bias), reduced by a fixed random
projection before it leaves the trainer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "EmbeddingFn",
    "LastLayerEmbedding",
    "LogitEmbedding",
    "gradient_embeddings",
]


def gradient_embeddings(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Loss gradients w.r.t. the logits, and the per-example cross-entropy.

    Args:
        logits: ``(n, C)`` float. labels: ``(n,)`` int64 in ``[0, C)``.

    Returns:
        ``(embeddings, losses)``: ``(n, C)`` float32 and ``(n,)`` float32.
    """
    logits = logits.float()
    embeddings = logits.softmax(1)
    embeddings[torch.arange(len(labels), device=labels.device), labels] -= 1.0
    return embeddings, F.cross_entropy(logits, labels, reduction="none")


class EmbeddingFn(Protocol):
    """Computes ``(embeddings (n, d) float32, losses (n,) float32)`` for a batch, no grad."""

    def __call__(
        self, model: nn.Module, inputs: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]: ...


class LogitEmbedding:
    """``softmax(z) - onehot(y)``: C floats per example."""

    def __call__(self, model: nn.Module, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return gradient_embeddings(model(inputs), labels)


class LastLayerEmbedding:
    """The last linear layer's per-example gradient, randomly projected to ``dim`` floats.

    Args:
        head: the model's final ``nn.Linear`` (its input features are captured by a hook).
        dim: projected dimension.
        seed: seed of the fixed Gaussian projection (the same on every rank).
    """

    def __init__(self, head: nn.Linear, dim: int = 32, seed: int = 0) -> None:
        self.head = head
        self.dim = dim
        gen = torch.Generator().manual_seed(seed)
        rows = head.out_features * (head.in_features + 1)
        projection = torch.randn(rows, dim, generator=gen) / dim**0.5
        # (C, H + 1, dim): the projection of the outer product, one slice per class.
        self.projection = projection.view(head.out_features, head.in_features + 1, dim)

    def __call__(self, model: nn.Module, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        captured: list[Tensor] = []
        hook = self.head.register_forward_hook(lambda _m, args, _out: captured.append(args[0]))
        try:
            logits = model(inputs)
        finally:
            hook.remove()
        features = captured[-1].float().flatten(1)
        features = torch.cat([features, features.new_ones(len(features), 1)], 1)  # (n, H + 1)
        error, losses = gradient_embeddings(logits, labels)  # (n, C)
        projection = self.projection.to(features.device)
        embeddings = torch.einsum("nc,nh,chd->nd", error, features, projection)  # (n, dim)
        return embeddings, losses


EMBEDDINGS: dict[str, Callable[[], EmbeddingFn]] = {"logits": LogitEmbedding}
