"""Loader benchmark: ``CrestLoader`` against the tensor path on the same CREST job.

Every variant trains the same 1-D CNN on MNIST-1D (W1) through the same job (same config and
seed, in-process coordinator), so all serve the same batches (checked and reported); only the
way a batch's data reaches the model differs:

* ``tensor``: ``session.batches()`` with ``tensor_fetch``, ``x[batch.indices]`` in the loop;
* ``loader TensorDataset``: ``CrestLoader`` over an in-memory ``TensorDataset``, no workers;
* ``loader lazy``: ``CrestLoader`` over a dataset that reads one example at a time from ``.npy``
  memory maps (as a dataset too large for memory would), without workers and with workers.

Reported per variant: steps/s of the whole trainer loop as the user sees it (CREST's
trainer-side work included; it is the same for every variant), the median over repeats run
round-robin so that a busy machine slows all variants alike; the ratio to the tensor path; and
the session's split into training-loop and selection seconds.

Usage: ``crest bench loader [--quick]``; prints a markdown table, writes JSON. Timings on a
shared machine are indicative only.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from crest.client import CrestLoader, JobConfig, Session, tensor_fetch, weighted_loss
from crest.compare import TrainSetup, machine, warm_up
from crest.embedded import local_coordinator
from crest.workloads import Dataset as Workload
from crest.workloads import cnn1d, mnist1d


@dataclass(frozen=True)
class LoaderPlan:
    num_samples: int = 50_000  # MNIST-1D samples (80% train)
    epochs: float = 10.0
    train_frac: float = 0.1
    batch_size: int = 128
    strategy: str = "crest"
    workers: int = 2  # of the lazy dataset's worker variant
    repeats: int = 3
    seed: int = 0


def quick_plan(plan: LoaderPlan = LoaderPlan()) -> LoaderPlan:
    """A short version (well under a minute): fewer steps, one repeat."""
    return replace(plan, epochs=3.0, repeats=1)


class NpyExamples(Dataset):
    """``(input, label)`` examples read one at a time from ``.npy`` memory maps, opened lazily
    in each process that reads (the DataLoader's workers included)."""

    def __init__(self, inputs: Path, labels: Path) -> None:
        self.paths = (inputs, labels)
        self.length = len(np.load(labels, mmap_mode="r"))
        self.arrays: tuple[np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.arrays is None:
            self.arrays = (np.load(self.paths[0], mmap_mode="r"),
                           np.load(self.paths[1], mmap_mode="r"))  # fmt: skip
        x, y = self.arrays
        return torch.from_numpy(np.array(x[index])), torch.tensor(int(y[index]))


VARIANTS = ("tensor", "loader TensorDataset", "loader lazy", "loader lazy + workers")


def _pairs(
    variant: str, session: Session, data: Workload, lazy: NpyExamples, workers: int
) -> Iterable[tuple[Any, Any]]:
    x, y = data.x_train, data.y_train
    if variant == "tensor":
        session.fetch = tensor_fetch(x, y)
        return (((x[b.indices], y[b.indices]), b) for b in session.batches())
    if variant == "loader TensorDataset":
        return CrestLoader(session, TensorDataset(x, y))
    return CrestLoader(session, lazy, num_workers=workers if variant.endswith("workers") else 0)


def run_variant(
    variant: str, data: Workload, plan: LoaderPlan, lazy: NpyExamples
) -> tuple[dict[str, Any], list[tuple[int, ...]]]:
    """One training run; returns its timings and the batches it served."""
    setup = TrainSetup()
    config = JobConfig(
        num_examples=len(data.y_train), num_classes=data.num_classes,
        batch_size=plan.batch_size, epochs=plan.epochs, train_frac=plan.train_frac,
        seed=plan.seed, strategy=plan.strategy,
    )  # fmt: skip
    torch.manual_seed(plan.seed)
    model = cnn1d(data.x_train.shape[1], setup.channels, data.num_classes)
    optimizer = torch.optim.SGD(model.parameters(), lr=setup.lr, momentum=setup.momentum)
    served: list[tuple[int, ...]] = []
    with local_coordinator() as coordinator:
        job_id = coordinator.create_job(config, data.y_train.numpy())
        with Session(coordinator, job_id, model=model, seed=plan.seed) as session:
            started = time.perf_counter()
            for (x, y), batch in _pairs(variant, session, data, lazy, plan.workers):
                loss = weighted_loss(model(x), y, batch.weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                served.append(tuple(batch.indices.tolist()))
            seconds = time.perf_counter() - started
            timings = session.timings
    return {
        "steps": len(served),
        "seconds": seconds,
        "steps_per_s": len(served) / seconds,
        "train_s": timings.train,
        "selection_s": timings.total,
        "regions": timings.regions,
    }, served


def run_loader_bench(plan: LoaderPlan, data: Workload | None = None) -> dict[str, Any]:
    """Every variant ``plan.repeats`` times, round-robin; ``data`` defaults to MNIST-1D."""
    data = mnist1d(plan.num_samples) if data is None else data
    warm_up(data, TrainSetup())
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    reference: list[tuple[int, ...]] | None = None
    same: dict[str, bool] = dict.fromkeys(VARIANTS, True)
    with tempfile.TemporaryDirectory(prefix="crest-loader-bench-") as folder:
        paths = Path(folder) / "x.npy", Path(folder) / "y.npy"
        np.save(paths[0], data.x_train.numpy())
        np.save(paths[1], data.y_train.numpy())
        lazy = NpyExamples(*paths)
        for _ in range(plan.repeats):
            for variant in VARIANTS:
                result, served = run_variant(variant, data, plan, lazy)
                runs[variant].append(result)
                reference = served if reference is None else reference
                same[variant] = same[variant] and served == reference
    tensor_rate = statistics.median(r["steps_per_s"] for r in runs["tensor"])
    summary = []
    for variant, results in runs.items():
        rate = statistics.median(r["steps_per_s"] for r in results)
        summary.append({
            "variant": variant,
            "workers": plan.workers if variant.endswith("workers") else 0,
            "steps": results[0]["steps"],
            "steps_per_s": rate,
            "vs_tensor": rate / tensor_rate,
            "train_s": statistics.median(r["train_s"] for r in results),
            "selection_s": statistics.median(r["selection_s"] for r in results),
            "same_batches": same[variant],
        })  # fmt: skip
    return {
        "benchmark": "loader",
        "workload": data.name,
        "plan": asdict(plan),
        "machine": machine(),
        "runs": runs,
        "summary": summary,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | workers | steps | steps/s | vs tensor | train s | selection s "
        "| same batches |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['variant']} | {row['workers']} | {row['steps']} | {row['steps_per_s']:.1f} "
            f"| {row['vs_tensor']:.2f}x | {row['train_s']:.2f} | {row['selection_s']:.2f} "
            f"| {'yes' if row['same_batches'] else 'NO'} |"
        )
    return "\n".join(lines)
