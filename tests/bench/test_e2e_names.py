"""The benchmark's (and ``crest demo``'s) jobs carry names the dashboard lists."""

from __future__ import annotations

import torch

from crest.compare import CrestSetup, TrainSetup
from crest.workloads import Dataset


def test_crest_jobs_are_named_by_workload_strategy_fraction_and_seed() -> None:
    y = torch.arange(40) % 4
    data = Dataset("mnist1d", torch.zeros(40, 8), y, torch.zeros(4, 8), y[:4], num_classes=4)
    train = TrainSetup(epochs=1, batch_size=8)
    config = CrestSetup(strategy="auto").job_config(data, train, 0.1, seed=2)
    assert config.name == "mnist1d auto 10% seed 2"
