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
from torch import Tensor, nn

from crest.proto.errors import InvalidArgument
from crest.worker.model import logit_gradients

__all__ = [
    "EmbeddingFn",
    "LastLayerEmbedding",
    "LogitEmbedding",
    "gradient_embeddings",
]


def gradient_embeddings(
    logits: Tensor, labels: Tensor, num_classes: int | None = None
) -> tuple[Tensor, Tensor]:
    """Loss gradients w.r.t. the logits, and the per-example cross-entropy
    (:func:`~crest.worker.model.logit_gradients`, which selector workers use too).

    Args:
        logits: ``(n, C)`` float. labels: ``(n,)`` int64 in ``[0, C)``.
        num_classes: the job's C, if known: the model must have exactly C outputs.

    Returns:
        ``(embeddings, losses)``: ``(n, C)`` float32 and ``(n,)`` float32.

    Raises:
        InvalidArgument: the model's output size is not the job's C (or, with C unknown,
        is too small for the labels).
    """
    check_outputs(logits, labels, num_classes)
    return logit_gradients(logits, labels)


def check_outputs(logits: Tensor, labels: Tensor, num_classes: int | None = None) -> None:
    """Raise :class:`InvalidArgument` unless ``logits`` is ``(n, C)`` for the job's C.

    A model with too few outputs would fail on a label index; one with too many would train
    extra outputs silently. Either way the model does not fit the job: say so plainly.
    """
    if logits.ndim != 2 or logits.shape[0] != len(labels):
        raise InvalidArgument(
            f"the model's output must have shape ({len(labels)}, C), got {tuple(logits.shape)}"
        )
    outputs = logits.shape[1]
    if num_classes is not None and outputs != num_classes:
        raise InvalidArgument(
            f"the model has {outputs} outputs, but the job has num_classes={num_classes}: "
            f"its last layer must have {num_classes} outputs"
        )
    if len(labels) and int(labels.max()) >= outputs:
        raise InvalidArgument(
            f"the model has {outputs} outputs, too few for label {int(labels.max())}: "
            "its last layer must have one output per class"
        )


class EmbeddingFn(Protocol):
    """Computes ``(embeddings (n, d) float32, losses (n,) float32)`` for a batch, no grad."""

    def __call__(
        self, model: nn.Module, inputs: Tensor, labels: Tensor
    ) -> tuple[Tensor, Tensor]: ...


class LogitEmbedding:
    """``softmax(z) - onehot(y)``: C floats per example.

    Args:
        num_classes: the job's C, to check the model's output size against (a
            :class:`~crest.client.Session` passes it for ``embedding="logits"``).
    """

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes

    def __call__(self, model: nn.Module, inputs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        return gradient_embeddings(model(inputs), labels, self.num_classes)


class LastLayerEmbedding:
    """The last linear layer's per-example gradient, randomly projected to ``dim`` floats.

    Args:
        head: the model's final ``nn.Linear`` (its input features are captured by a hook).
        dim: projected dimension.
        seed: seed of the fixed Gaussian projection (the same on every rank).
        num_classes: the job's C, to check the head's output size against.

    Raises:
        InvalidArgument: ``head`` does not have ``num_classes`` outputs.
    """

    def __init__(
        self, head: nn.Linear, dim: int = 32, seed: int = 0, num_classes: int | None = None
    ) -> None:
        if num_classes is not None and head.out_features != num_classes:
            raise InvalidArgument(
                f"the head has {head.out_features} outputs, but the job has "
                f"num_classes={num_classes}: it must have {num_classes} outputs"
            )
        self.num_classes = num_classes
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
        error, losses = gradient_embeddings(logits, labels, self.num_classes)  # (n, C)
        projection = self.projection.to(features.device)
        embeddings = torch.einsum("nc,nh,chd->nd", error, features, projection)  # (n, dim)
        return embeddings, losses


# Embeddings by name, each made for a job's number of classes.
EMBEDDINGS: dict[str, Callable[[int], EmbeddingFn]] = {"logits": LogitEmbedding}
