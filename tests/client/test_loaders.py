"""Every strategy through every loader, on one rank and on two; the loader's in-process reads.

Loaders: the tensor path (``session.batches()`` with ``tensor_fetch``) and ``CrestLoader`` over
a per-example dataset (read and collated in this process), over a ``TensorDataset`` (indexed
once per tensor) and over a per-example dataset with worker processes (a real DataLoader).
``auto`` with an unreachable ``auto_min_gain`` serves coresets, then its first test (random arms
in the middle of the job, then coresets again), then random batches: deterministically, and
never an example of its held-out probe.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from crest.client import CrestLoader, Session, WeightedBatch, tensor_fetch, weighted_loss
from crest.embedded import local_coordinator
from crest.proto.contract import Coordinator
from crest.service.job import draw_probe
from crest.service.pool import ExamplePool
from tests.client.test_data_and_resume import Blobs
from tests.training import Batch, blobs, job_config, make_model, on_threads

IN_PROCESS = ("tensor", "dataset", "tensor-dataset")  # the unit tier
WORKERS = "workers"  # DataLoader worker processes: the e2e tier
EXPECTED_MODES = {"crest": ["crest"], "random": ["random"], "auto": ["crest", "random"]}
# Selection on the service side (the selectors embed from the published model; rank 0 reads
# every input through the loader once), with and without coresets drawn by region length.
SIDES = {
    "crest-service": {"selection_side": "service", "max_staleness": 12},
    "crest-lookahead": {
        "selection_side": "service",
        "max_staleness": 12,
        "lookahead_coresets": True,
    },
}
EXPECTED_MODES.update({name: ["crest"] for name in SIDES})


def strategy_config(strategy: str, world_size: int = 1):
    side = SIDES.get(strategy, {})
    name = "crest" if side else strategy
    return job_config(
        strategy=name, world_size=world_size, auto_min_gain=1e9, auto_test_epochs=0.25, **side
    )


def pairs(
    session: Session, loader: str
) -> Iterator[tuple[tuple[torch.Tensor, ...], WeightedBatch]]:
    x, y = blobs()
    if loader == "tensor":
        session.fetch = tensor_fetch(x, y)
        return (((x[b.indices], y[b.indices]), b) for b in session.batches())
    dataset: Dataset = TensorDataset(x, y) if loader == "tensor-dataset" else Blobs()
    return iter(CrestLoader(session, dataset, num_workers=2 if loader == "workers" else 0))


def train_through(
    coordinator: Coordinator,
    job_id: str,
    loader: str,
    rank: int = 0,
    model: nn.Module | None = None,
) -> list[Batch]:
    x, y = blobs()
    model = make_model() if model is None else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    seen: list[Batch] = []
    with Session(coordinator, job_id, model=model, rank=rank) as session:
        for (xb, yb), batch in pairs(session, loader):
            assert torch.equal(xb, x[batch.indices]) and torch.equal(yb, y[batch.indices])
            seen.append(
                (batch.step, batch.indices.tolist(), batch.weights.tolist(), batch.region_id)
            )
            loss = weighted_loss(model(xb), yb, batch.weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if loader != "tensor":
            assert session.fetch is not None and hasattr(session.fetch, "iter_chunks")
    return seen


def check_job(coordinator: Coordinator, job_id: str, strategy: str, runs: list[list[Batch]]):
    config = strategy_config(strategy)
    for seen in runs:
        assert [s[0] for s in seen] == list(range(config.total_steps)), "the whole budget"
        assert {len(indices) for _, indices, _, _ in seen} == {config.batch_size}
    regions = coordinator.job_status(job_id).regions  # type: ignore[attr-defined]
    modes = [r.mode for r in regions]
    assert sorted(set(modes)) == EXPECTED_MODES[strategy]
    if strategy in SIDES:
        assert all(r.embedded_by == "service" for r in regions if r.mode == "crest")
    if strategy == "auto":  # coresets first, a test's random arms in the middle, coresets again
        assert modes[0] == "crest" and "crest" in modes[modes.index("random") :]
        assert 0 < regions[modes.index("random")].start_step < config.total_steps
        # Its probe (the seed's draw) is held out: in no batch of any rank, any region.
        pool = ExamplePool(blobs()[1].numpy(), config.num_classes, config.loss_window)
        probe = set(draw_probe(pool, config).tolist())
        trained = {i for seen in runs for _, indices, _, _ in seen for i in indices}
        assert probe and not probe & trained, "a held-out probe example was trained on"
        assert all(r.probe_loss is not None for r in regions if r.auto_test)


def one_rank(strategy: str, loaders: tuple[str, ...]) -> None:
    labels = blobs()[1].numpy()
    served: dict[str, list[Batch]] = {}
    with local_coordinator() as coordinator:
        for loader in ("tensor", *loaders):
            job_id = coordinator.create_job(strategy_config(strategy), labels)
            served[loader] = train_through(coordinator, job_id, loader)
            check_job(coordinator, job_id, strategy, [served[loader]])
    for loader in loaders:
        assert served[loader] == served["tensor"], f"{loader} served other batches"


@pytest.mark.parametrize("strategy", ["crest", "random", "auto"])
def test_every_strategy_through_every_loader_on_one_rank(strategy: str) -> None:
    one_rank(strategy, IN_PROCESS[1:])


def train_two_ranks(coordinator: Coordinator, job_id: str, loader: str) -> list[list[Batch]]:
    """Both ranks of a world_size=2 job, each on its own thread."""
    models = [make_model(), make_model()]  # here: make_model seeds torch's global RNG
    return on_threads(lambda rank: train_through(coordinator, job_id, loader, rank, models[rank]))


def two_ranks(strategy: str, loaders: tuple[str, ...]) -> None:
    labels = blobs()[1].numpy()
    served: dict[str, list[list[Batch]]] = {}
    with local_coordinator() as coordinator:
        for loader in ("tensor", *loaders):
            job_id = coordinator.create_job(strategy_config(strategy, world_size=2), labels)
            served[loader] = ranks = train_two_ranks(coordinator, job_id, loader)
            check_job(coordinator, job_id, strategy, ranks)
            for a, b in zip(*ranks, strict=True):
                assert a[0] == b[0] and a[3] == b[3], "ranks must be in the same region"
                assert not set(a[1]) & set(b[1]), "ranks' batches must be disjoint"
    for loader in loaders:
        assert served[loader] == served["tensor"], f"{loader} served other batches"


@pytest.mark.parametrize("strategy", ["crest", "random", "auto", *SIDES])
def test_every_strategy_through_every_loader_on_two_ranks(strategy: str) -> None:
    two_ranks(strategy, ("dataset",))


@pytest.mark.e2e
@pytest.mark.parametrize("strategy", ["crest", "random", "auto"])
def test_every_strategy_through_worker_processes_on_one_and_two_ranks(strategy: str) -> None:
    one_rank(strategy, (WORKERS,))
    two_ranks(strategy, (WORKERS,))


@pytest.mark.e2e
@pytest.mark.parametrize("side", SIDES)
def test_the_service_side_through_the_loaders(side: str) -> None:
    """Rank 0 publishes every input read through the loader (worker processes included)."""
    one_rank(side, ("dataset", WORKERS) if side == "crest-service" else ("dataset",))


@pytest.mark.e2e
def test_the_loader_stops_its_worker_processes_when_an_iteration_ends() -> None:
    # Persistent workers left to the garbage collector outlived their loader, and a loader
    # created meanwhile forked them into its own workers: about a minute of joins in this file.
    labels = blobs()[1].numpy()
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(strategy_config("random"), labels)
        with Session(coordinator, job_id, model=make_model()) as session:
            loader = CrestLoader(session, Blobs(), num_workers=2)
            batches = iter(loader)
            steps = [next(batches)[1].step]
            workers = list(loader.loader._iterator._workers)  # type: ignore[union-attr]
            assert len(workers) == 2 and all(w.is_alive() for w in workers)
            batches.close()  # abandoned, e.g. by a break
            assert loader.loader._iterator is None and not any(w.is_alive() for w in workers)
            steps += [batch.step for _, batch in loader]  # goes on where it stopped
            assert steps == list(range(session.total_steps)) and loader.loader._iterator is None


def test_a_second_iteration_warns_that_the_budget_is_served() -> None:
    labels = blobs()[1].numpy()
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(strategy_config("random"), labels)
        with Session(coordinator, job_id, model=make_model()) as session:
            loader = CrestLoader(session, Blobs())
            assert not session.finished
            assert sum(1 for _ in loader) == session.total_steps  # no warning the first time
            assert session.finished
            with pytest.warns(UserWarning, match="whole step budget .* span all of the job's"):
                again = list(loader)
            assert again == []
            with pytest.warns(UserWarning, match="once, not once per epoch"):
                assert list(session.batches()) == []


class BatchOnly(Dataset):
    """An in-memory dataset read a batch at a time; per-example reads are an error here."""

    def __init__(self) -> None:
        self.x, self.y = blobs()
        self.calls = 0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise AssertionError("read one example at a time")

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        self.calls += 1
        return list(zip(self.x[indices], self.y[indices], strict=True))


def test_without_workers_a_batch_is_one_getitems_call() -> None:
    dataset = BatchOnly()
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(strategy_config("crest"), dataset.y.numpy())
        with Session(coordinator, job_id, model=make_model()) as session:
            steps = 0
            loader = CrestLoader(session, dataset)
            for (x, y), batch in loader:
                assert torch.equal(x, dataset.x[batch.indices])
                assert torch.equal(y, dataset.y[batch.indices])
                steps += 1
            # Every training batch, candidate chunk and check sample in one call each.
            assert steps == session.total_steps
            assert dataset.calls >= steps + session.timings.regions
            assert loader.sampler.batches == [], "read in this process, not by the DataLoader"


def test_without_workers_a_tensor_dataset_is_indexed_not_read_per_example(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def per_example(self: TensorDataset, index: int) -> None:
        raise AssertionError("read one example at a time")

    x, y = blobs()
    monkeypatch.setattr(TensorDataset, "__getitem__", per_example)
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(strategy_config("auto"), y.numpy())
        with Session(coordinator, job_id, model=make_model()) as session:
            served = [
                (torch.equal(xb, x[b.indices]) and torch.equal(yb, y[b.indices]))
                for (xb, yb), b in CrestLoader(session, TensorDataset(x, y))
            ]
            assert session.timings.regions > 1 and session.timings.checks > 0
    assert len(served) == strategy_config("auto").total_steps and all(served)
