"""Workloads of the demo, the examples and the benchmarks: data sets and the model.

MNIST-1D generated offline (W1), its redundant, noisily labelled variant (W2, at 10% label
noise, and at 0% and 30%) and its imbalanced variant (W3), cached as .npz; the small 1-D CNN
every method trains on them.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Dataset:
    name: str
    x_train: torch.Tensor  # (N, L) float32
    y_train: torch.Tensor  # (N,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int


def cache_dir() -> Path:
    root = os.environ.get("CREST_CACHE_DIR") or Path.home() / ".cache" / "crest"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def mnist1d(num_samples: int = 50_000, seed: int = 42) -> Dataset:
    """MNIST-1D from ``mnist1d.data.make_dataset`` (templates built in; never downloaded).

    ``num_samples`` is split 80/20 into train and test (50,000 -> 40,000 / 10,000).
    """
    path = cache_dir() / f"mnist1d-{num_samples}-{seed}.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed = num_samples, seed
        data = make_dataset(args)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, x=data["x"], y=data["y"], x_test=data["x_test"], y_test=data["y_test"])
        tmp.replace(path)
    with np.load(path) as data:
        return Dataset(
            name="mnist1d",
            x_train=torch.from_numpy(data["x"].astype(np.float32)),
            y_train=torch.from_numpy(data["y"].astype(np.int64)),
            x_test=torch.from_numpy(data["x_test"].astype(np.float32)),
            y_test=torch.from_numpy(data["y_test"].astype(np.int64)),
            num_classes=10,
        )


def mnist1d_redundant(
    num_samples: int = 50_000,
    copies: int = 10,
    noise: float = 0.05,
    label_noise: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """W2: a redundant, noisily labelled training set built from MNIST-1D.

    A tenth (``1 / copies``) of MNIST-1D's training examples, each repeated ``copies`` times
    with Gaussian jitter of ``noise`` (the data have unit variance): as many examples as W1,
    mostly near-duplicates. Then ``label_noise`` of all examples get a uniformly random wrong
    label. The test set is MNIST-1D's, untouched. Deterministic for ``seed``. Named
    ``mnist1d-redundant`` at the default 10% label noise, ``mnist1d-redundant-noise30`` at
    30% (results are grouped by name).
    """
    source = mnist1d(num_samples)
    base = len(source.y_train) // copies
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(source.y_train), base, replace=False)
    x = np.repeat(source.x_train.numpy()[picked], copies, axis=0)
    x += noise * rng.standard_normal(x.shape).astype(np.float32)
    y = np.repeat(source.y_train.numpy()[picked], copies)
    _flip_labels(y, label_noise, source.num_classes, rng)
    order = rng.permutation(len(y))
    return Dataset(
        name=_redundant_name(label_noise),
        x_train=torch.from_numpy(x[order]),
        y_train=torch.from_numpy(y[order]),
        x_test=source.x_test,
        y_test=source.y_test,
        num_classes=source.num_classes,
    )


def mnist1d_noisy(num_samples: int = 50_000, label_noise: float = 0.1, seed: int = 0) -> Dataset:
    """W4: MNIST-1D with ``label_noise`` of the training labels replaced by a uniformly random
    wrong one, and nothing else changed (no copies, no jitter; the test set untouched): label
    noise without W2's redundancy. Deterministic for ``seed``."""
    source = mnist1d(num_samples)
    y = source.y_train.numpy().copy()
    _flip_labels(y, label_noise, source.num_classes, np.random.default_rng(seed))
    return replace(source, name=f"mnist1d-noisy{100 * label_noise:g}", y_train=torch.from_numpy(y))


def many_classes(
    num_samples: int = 50_000,
    num_classes: int = 100,
    label_noise: float = 0.0,
    noise: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """W5: a synthetic task with many classes, for what depends on C (MNIST-1D has 10).

    Each class is a random smooth template of 40 samples; an example is its class's template,
    circularly shifted by up to 3 samples, plus Gaussian noise of ``noise`` (templates have
    unit variance). ``num_samples`` examples in balanced classes, split 80/20 into training
    and test sets like MNIST-1D's; then ``label_noise`` of the training labels are replaced by
    a random wrong one. Named ``many{C}`` (``many{C}-noisy{p}`` with label noise).
    Deterministic for ``seed``.
    """
    rng = np.random.default_rng(seed)
    kernel = np.hanning(9) / np.hanning(9).sum()
    raw = rng.standard_normal((num_classes, 40 + 8))
    templates = np.stack([np.convolve(t, kernel, mode="valid") for t in raw])  # (C, 40)
    templates /= templates.std(axis=1, keepdims=True)
    y = np.arange(num_samples) % num_classes
    rng.shuffle(y)
    shifts = rng.integers(-3, 4, num_samples)
    x = np.stack([np.roll(templates[c], k) for c, k in zip(y, shifts, strict=True)])
    x = (x + noise * rng.standard_normal(x.shape)).astype(np.float32)
    split = num_samples * 4 // 5
    y_train = y[:split].copy()
    _flip_labels(y_train, label_noise, num_classes, rng)
    name = f"many{num_classes}" + (f"-noisy{100 * label_noise:g}" if label_noise else "")
    return Dataset(
        name=name,
        x_train=torch.from_numpy(x[:split]),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(x[split:]),
        y_test=torch.from_numpy(y[split:].copy()),
        num_classes=num_classes,
    )


def _flip_labels(y: np.ndarray, share: float, num_classes: int, rng: np.random.Generator) -> None:
    """Replace about ``share`` of the labels ``y`` (in place) by a uniformly random wrong one.

    Raises:
        ValueError: ``share`` outside [0, 1].
    """
    if not 0 <= share <= 1:
        raise ValueError(f"label_noise must lie in [0, 1], got {share}")
    flip = rng.random(len(y)) < share
    y[flip] = (y[flip] + rng.integers(1, num_classes, flip.sum())) % num_classes


def _redundant_name(label_noise: float) -> str:
    """W2's name keeps its 10% form; other noise levels say theirs (``-noise30``)."""
    return "mnist1d-redundant" + ("" if label_noise == 0.1 else f"-noise{100 * label_noise:g}")


W3_SHARES = (0.40, 0.15, 0.10, 0.08, 0.07, 0.06, 0.05, 0.04, 0.03, 0.02)
"""W3's class mix: class ``c`` makes up ``W3_SHARES[c]`` of the training and the test set."""


def mnist1d_imbalanced(
    num_samples: int = 50_000, shares: tuple[float, ...] = W3_SHARES, seed: int = 0
) -> Dataset:
    """W3: MNIST-1D subsampled to an imbalanced class mix (one class at 40%, one at 2%).

    Class ``c`` keeps ``shares[c]`` of the examples, in the training and in the test set alike
    (so plain accuracy is measured on the training mix). Each split is as large as its
    scarcest class allows: the 40% class keeps all its examples, the others a random subset
    (50,000 samples: 10,012 train / 2,487 test, the 2% class 200 / 50). Deterministic for
    ``seed``.
    """
    if len(shares) != 10 or min(shares) <= 0 or not math.isclose(sum(shares), 1.0):
        raise ValueError(f"shares must be 10 positive class shares summing to 1, got {shares}")
    source = mnist1d(num_samples)
    rng = np.random.default_rng(seed)
    x_train, y_train = _subsample(source.x_train, source.y_train, shares, rng)
    x_test, y_test = _subsample(source.x_test, source.y_test, shares, rng)
    return Dataset(
        name="mnist1d-imbalanced",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=source.num_classes,
    )


def _subsample(
    x: torch.Tensor, y: torch.Tensor, shares: tuple[float, ...], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest random subset of ``(x, y)`` whose class ``c`` is ``shares[c]`` of it
    (within rounding), in random order."""
    labels = y.numpy()
    share = np.asarray(shares)
    available = np.bincount(labels, minlength=len(share))
    total = int(np.floor((available / share).min()))
    counts = np.minimum(np.round(share * total).astype(np.int64), available)
    picked = np.concatenate(
        [rng.choice(np.flatnonzero(labels == c), n, replace=False) for c, n in enumerate(counts)]
    )
    order = torch.from_numpy(rng.permutation(picked))
    return x[order], y[order]


WORKLOADS: dict[str, Callable[..., Dataset]] = {
    "w1": mnist1d,
    "w2": mnist1d_redundant,  # 10% label noise
    "w2-0": functools.partial(mnist1d_redundant, label_noise=0.0),
    "w2-30": functools.partial(mnist1d_redundant, label_noise=0.3),
    "w3": mnist1d_imbalanced,
    "w4": mnist1d_noisy,  # W1 with 10% label noise, not redundant
    "w5": many_classes,  # 100 synthetic classes
    "w5-10": functools.partial(many_classes, label_noise=0.1),
    "w5-c16": functools.partial(many_classes, num_classes=16),
    "w5-c30": functools.partial(many_classes, num_classes=30),
    "w5-c300": functools.partial(many_classes, num_classes=300),
}
"""The benchmark's workloads by name: W2 at 10% label noise (``w2``), 0% and 30%."""


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
