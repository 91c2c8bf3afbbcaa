"""PyTorch data loading for CREST: a batch sampler and a loader over any map-style dataset.

:class:`CrestLoader` wraps a standard ``torch.utils.data.DataLoader`` (worker processes,
pinned memory, custom collation all work) and yields ``(data, batch)`` pairs, where ``data`` is
what the DataLoader collated and ``batch`` the :class:`WeightedBatch` with its weights::

    session = Session(coordinator, job_id, model=model)
    for (x, y), batch in CrestLoader(session, dataset, num_workers=2):
        loss = weighted_loss(model(x), y, batch.weights)
        ...

A DataLoader loads ahead, but a CREST batch is only certain once the previous checks are
decided. The loader therefore iterates one *segment* at a time, the rest of the current
region, as a DataLoader epoch (workers persist across epochs). If a failed check ends the
region early, the batches loaded past its new end are dropped unused and the next region
starts a new segment. The candidate and check passes load through the same DataLoader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.dataloader import default_collate

from crest.client.session import Fetch, Session, WeightedBatch


def _inputs_and_labels(data: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(data, list | tuple) or len(data) < 2:
        raise TypeError("the dataset must yield (input, label, ...) examples")
    return data[0], data[1]


def dataset_fetch(
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    device: str | torch.device | None = None,
) -> Fetch:
    """A fetch function reading ``dataset[i]`` in this process (no workers)."""

    def fetch(indices: Tensor) -> tuple[Tensor, Tensor]:
        x, y = _inputs_and_labels(collate_fn([dataset[int(i)] for i in indices]))
        return (x, y) if device is None else (x.to(device), y.to(device))

    return fetch


class CrestBatchSampler(Sampler[list[int]]):
    """A batch sampler whose batches are set from outside, one DataLoader epoch at a time."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []

    def __iter__(self) -> Iterator[list[int]]:
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


class CrestLoader:
    """CREST's batches, loaded by a DataLoader.

    Args:
        session: the trainer's session (its ``fetch`` is set to this loader if unset).
        dataset: a map-style dataset yielding ``(input, label, ...)``.
        device: where candidate and check inputs go (training data is yours to move).
        **loader_args: DataLoader arguments (``num_workers``, ``pin_memory``,
            ``collate_fn``...). ``persistent_workers`` defaults to True with workers.
    """

    def __init__(
        self,
        session: Session,
        dataset: Dataset,
        device: str | torch.device | None = None,
        **loader_args: Any,
    ) -> None:
        for name in ("batch_size", "shuffle", "sampler", "batch_sampler", "drop_last"):
            if name in loader_args:
                raise ValueError(f"{name} is decided by the coordinator; do not pass it")
        if loader_args.get("num_workers", 0) > 0:
            loader_args.setdefault("persistent_workers", True)
        self.session = session
        self.device = device
        self.sampler = CrestBatchSampler()
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, **loader_args)
        if session.fetch is None:
            session.fetch = _LoaderFetch(self)

    def _epoch(self, batches: Sequence[Tensor]) -> Iterator[Any]:
        self.sampler.batches = [b.tolist() for b in batches]
        return iter(self.loader)

    def __iter__(self) -> Iterator[tuple[Any, WeightedBatch]]:
        session = self.session
        first = session.advance()
        while first is not None:
            segment = [first, *session.upcoming()]
            following: WeightedBatch | None = None
            for position, data in enumerate(self._epoch([b.indices for b in segment])):
                batch = first if position == 0 else session.advance()
                if batch is None:
                    return
                planned = segment[position]
                if (batch.step, batch.region_id) != (planned.step, planned.region_id):
                    following = batch  # a check ended the region early: drop what was loaded
                    break
                yield data, batch
            first = following if following is not None else session.advance()

    def __len__(self) -> int:
        return self.session.total_steps


class _LoaderFetch:
    """The session's fetch through the loader (so candidate passes use its workers too)."""

    def __init__(self, owner: CrestLoader) -> None:
        self.owner = owner

    def __call__(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        (pair,) = self.iter_chunks([indices])
        return pair

    def iter_chunks(self, chunks: list[Tensor]) -> Iterator[tuple[Tensor, Tensor]]:
        device = self.owner.device
        for data in self.owner._epoch(chunks):
            x, y = _inputs_and_labels(data)
            yield (x, y) if device is None else (x.to(device), y.to(device))
