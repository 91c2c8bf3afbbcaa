"""Benchmark models."""

from __future__ import annotations

from torch import nn


def cnn1d(length: int = 40, channels: int = 32, num_classes: int = 10) -> nn.Sequential:
    """A small 1-D CNN for MNIST-1D (about 10k parameters at 32 channels)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, length)),
        nn.Conv1d(1, channels, 5, padding=2),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * ((length + 3) // 4), num_classes),
    )
