"""Small trainer models and embedding requests for the exported-model tests."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from crest.worker.model import export_model, model_weights
from crest.worker.problems import EmbedRequest


def mlp(seed: int = 0, features: int = 12, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(features, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, classes)
    )


def cnn(seed: int = 0, length: int = 16, classes: int = 4) -> nn.Module:
    """A 1-D CNN with BatchNorm and dropout, trained a few steps so that its running
    statistics and weights are not their initial values."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Unflatten(1, (1, length)),
        nn.Conv1d(1, 6, 3, padding=1),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(6 * length, classes),
    )
    train_steps(model, length, classes, steps=3)
    return model


def train_steps(model: nn.Module, features: int, classes: int, steps: int, seed: int = 1) -> None:
    """A few SGD steps in train mode (moves weights and BatchNorm's running statistics)."""
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    for _ in range(steps):
        x = torch.randn(16, features, generator=gen)
        y = torch.randint(0, classes, (16,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def candidates(n: int, features: int, classes: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = rng.standard_normal((n, features)).astype(np.float32)
    return inputs, rng.integers(0, classes, n).astype(np.int64)


def embed_request(
    model: nn.Module, n: int = 50, job: str = "a", batch_size: int = 16
) -> EmbedRequest:
    """A request for ``model``'s current weights on ``n`` random candidates."""
    first = model[0]
    features = first.in_features if isinstance(first, nn.Linear) else first.unflattened_size[1]
    classes = model[-1].out_features
    artifact = export_model(model, torch.randn(4, features))
    inputs, labels = candidates(n, features, classes)
    model_id = hashlib.sha256(artifact).hexdigest()
    return EmbedRequest(job, model_id, artifact, model_weights(model), inputs, labels, batch_size)
