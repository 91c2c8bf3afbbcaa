"""PyTorch data loading for CREST: a batch sampler and a loader over any map-style dataset.

:class:`CrestLoader` wraps a standard ``torch.utils.data.DataLoader`` (worker processes,
pinned memory, custom collation all work) and yields ``(data, batch)`` pairs, where ``data`` is
what the DataLoader collated and ``batch`` the :class:`WeightedBatch` with its weights::

    session = Session(coordinator, job_id, model=model)
    for (x, y), batch in CrestLoader(session, dataset, num_workers=2):
        loss = weighted_loss(model(x), y, batch.weights)
        ...

The loader serves the job's whole step budget, all of its epochs, in one iteration.

A DataLoader loads ahead, but a CREST batch is only certain once the previous checks are
decided. With worker processes (or pinned memory) the loader therefore iterates one *segment*
at a time, the rest of the current region, as a DataLoader epoch (workers persist across
epochs). If a failed check ends the region early, the batches loaded past its new end are
dropped unused and the next region starts a new segment. The candidate and check passes load
through the same DataLoader.

Without workers (and without pinned memory) a DataLoader would only read each batch in this
process, so the loader reads it directly, in as few calls as the dataset allows: a
``TensorDataset`` is indexed once per tensor, a dataset with ``__getitems__`` is asked once per
batch. In-memory data then costs what the tensor path (:func:`crest.client.tensor_fetch`)
costs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset
from torch.utils.data.dataloader import default_collate

from crest.client.session import Fetch, Session, WeightedBatch


def _inputs_and_labels(data: Any, device: str | torch.device | None) -> tuple[Tensor, Tensor]:
    if not isinstance(data, list | tuple) or len(data) < 2:
        raise TypeError("the dataset must yield (input, label, ...) examples")
    x, y = data[0], data[1]
    return (x, y) if device is None else (x.to(device), y.to(device))


Read = Callable[[Tensor], Any]


def _batch_reader(
    dataset: Dataset, collate_fn: Callable[[list[Any]], Any] = default_collate
) -> Read:
    """``indices -> batch`` read in this process, as a DataLoader without workers collates it.

    A plain ``TensorDataset`` with the default collation is indexed once per tensor (the same
    tensors, without building and stacking one example at a time); a dataset with
    ``__getitems__`` is asked for the whole batch in one call; any other dataset is read one
    ``dataset[i]`` at a time. Indices must not be empty (a collate function needs an example).
    """
    if type(dataset) is TensorDataset and collate_fn is default_collate:
        tensors = dataset.tensors
        # default_collate turns a batch of tuples into a list: keep that type.
        return lambda indices: [t[indices] for t in tensors]
    getitems = getattr(dataset, "__getitems__", None)
    if getitems is not None:
        return lambda indices: collate_fn(getitems(indices.tolist()))
    return lambda indices: collate_fn([dataset[i] for i in indices.tolist()])


def dataset_fetch(
    dataset: Dataset,
    collate_fn: Callable[[list[Any]], Any] = default_collate,
    device: str | torch.device | None = None,
) -> Fetch:
    """A fetch function reading the dataset in this process, as :class:`CrestLoader` does
    without workers."""
    read = _batch_reader(dataset, collate_fn)
    return lambda indices: _inputs_and_labels(read(indices), device)


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

    Iterate it once: one iteration serves the job's whole step budget, which spans all of the
    job's epochs (a second iteration warns and yields nothing).

    Args:
        session: the trainer's session (its ``fetch`` is set to this loader if unset).
        dataset: a map-style dataset yielding ``(input, label, ...)``.
        device: where candidate and check inputs go (training data is yours to move).
        **loader_args: DataLoader arguments (``num_workers``, ``pin_memory``,
            ``collate_fn``...). ``persistent_workers`` defaults to True with workers. With
            ``num_workers=0`` and no ``pin_memory``, batches are read in this process by
            one indexing call per tensor of a ``TensorDataset``, one ``__getitems__`` call, or
            ``dataset[i]`` per example (the DataLoader would do no more).
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
        self._read: Read | None = None
        if self.loader.num_workers == 0 and not self.loader.pin_memory:
            self._read = _batch_reader(dataset, self.loader.collate_fn)
        if session.fetch is None:
            session.fetch = _LoaderFetch(self)

    def _epoch(self, batches: Sequence[Tensor]) -> Iterator[Any]:
        self.sampler.batches = [b.tolist() for b in batches]
        return iter(self.loader)

    def __iter__(self) -> Iterator[tuple[Any, WeightedBatch]]:
        session = self.session
        session.warn_if_finished()
        if self._read is not None:  # nothing is loaded ahead: read each batch as it is handed out
            while (batch := session.advance()) is not None:
                yield self._read(batch.indices), batch
            return
        try:
            yield from self._loaded()
        finally:
            self.close()

    def close(self) -> None:
        """Stop the worker processes, which persist across regions; done when an iteration
        ends (the budget is served) or is abandoned. Left to the garbage collector, they stop
        only once the loader is collected, and a loader created meanwhile forks them into
        its own workers (which then report "can only test a child process" when they collect
        it). Idempotent; a later fetch through the loader starts new workers."""
        iterator = self.loader._iterator  # the persistent workers' iterator, if started
        self.loader._iterator = None
        if iterator is not None:
            iterator._shutdown_workers()  # type: ignore[attr-defined]

    def _loaded(self) -> Iterator[tuple[Any, WeightedBatch]]:
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
        owner = self.owner
        read = owner._read
        loaded = owner._epoch(chunks) if read is None else (read(c) for c in chunks)
        for data in loaded:
            yield _inputs_and_labels(data, owner.device)
