"""A tiny real training job for tests: blobs data, an MLP, and a loop that records batches."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from crest.client import JobConfig, Session, tensor_fetch, weighted_loss
from crest.proto.contract import Coordinator

N, CLASSES = 1200, 4

T = TypeVar("T")


def blobs(n: int = N, classes: int = CLASSES, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, 8, generator=gen) * 2
    y = torch.randint(0, classes, (n,), generator=gen)
    return centers[y] + torch.randn(n, 8, generator=gen), y


def make_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, CLASSES))


def job_config(**overrides) -> JobConfig:
    fields = dict(num_examples=N, num_classes=CLASSES, batch_size=32, epochs=4, train_frac=0.5)
    return JobConfig(**(fields | overrides))


Batch = tuple[int, list[int], list[float], int]  # step, indices, weights, region


def train(
    coordinator: Coordinator,
    job_id: str,
    rank: int = 0,
    on_step: Callable[[int], None] | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    data: tuple[torch.Tensor, torch.Tensor] | None = None,
    **session_args,
) -> tuple[Session, list[Batch]]:
    """Train the MLP through a session on ``data`` (default :func:`blobs`); ``on_step(step)``
    runs after each optimizer step; ``wrap`` wraps the model for training (e.g. in
    ``DistributedDataParallel``)."""
    x, y = blobs() if data is None else data
    model = make_model()
    net = model if wrap is None else wrap(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen: list[Batch] = []
    with Session(coordinator, job_id, model=net, fetch=tensor_fetch(x, y), rank=rank,
                 **session_args) as session:  # fmt: skip
        for batch in session.batches():
            seen.append(
                (batch.step, batch.indices.tolist(), batch.weights.tolist(), batch.region_id)
            )
            loss = weighted_loss(net(x[batch.indices]), y[batch.indices], batch.weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step(batch.step)
    return session, seen


def train_with_checkpoint(
    coordinator: Coordinator,
    job_id: str,
    checkpoint: Path,
    save_at: int,
    stop_at: int | None,
    on_step: Callable[[int], None] | None = None,
    rank: int = 0,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    **session_args,
) -> list[Batch]:
    """Train, resuming from ``checkpoint`` if it exists; save one after step ``save_at``;
    stop (as if killed) after step ``stop_at``; ``rank``, ``wrap`` and ``session_args`` as
    for :func:`train`."""
    x, y = blobs()
    model = make_model()
    net = model if wrap is None else wrap(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    session = Session(coordinator, job_id, model=net, fetch=tensor_fetch(x, y), rank=rank,
                      **session_args)  # fmt: skip
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        session.load_state_dict(state["crest"])
    seen: list[Batch] = []
    for batch in session.batches():
        seen.append((batch.step, batch.indices.tolist(), batch.weights.tolist(), batch.region_id))
        loss = weighted_loss(net(x[batch.indices]), y[batch.indices], batch.weights)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if batch.step == save_at and not checkpoint.exists():
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "crest": session.state_dict()}  # fmt: skip
            torch.save(state, checkpoint)
        if on_step is not None:
            on_step(batch.step)
        if batch.step == stop_at:
            break
    session.close()
    return seen


def on_threads(rank_main: Callable[[int], T], ranks: int = 2, timeout_s: float = 300) -> list[T]:
    """``rank_main(rank)`` for each rank on its own thread; the results in rank order, or the
    first error any rank raised (a rank that hangs fails the test)."""
    results: dict[int, T] = {}
    errors: list[BaseException] = []

    def run(rank: int) -> None:
        try:
            results[rank] = rank_main(rank)
        except BaseException as err:  # surfaced in the main thread below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(r,)) for r in range(ranks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=timeout_s)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "a rank hung"
    return [results[r] for r in range(ranks)]
