"""``crest bench gpu``: its CPU fallback (what CI, without a GPU, can run) and its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crest.bench.gpu import CHECKS, GpuPlan, format_table, run_gpu_check
from crest.bench.selection import Region
from crest.cli import build_parser


@pytest.mark.e2e  # two short training runs and a Ray actor
@pytest.mark.integration
@pytest.mark.usefixtures("ray_session")
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without a GPU")
def test_cpu_fallback_runs_every_check_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A smoke test only (the benchmark is never a timed test).
    monkeypatch.setenv("CREST_CACHE_DIR", str(tmp_path))
    plan = GpuPlan(
        region=Region(subsets=2, classes=3, per_class=30, budget=5),
        repeats=1,
        cpus_per_actor=0.25,  # beside whatever the session's Ray holds
        num_samples=2_000,
        epochs=2,
    )
    result = run_gpu_check(plan)
    assert [row["check"] for row in result["rows"]] == list(CHECKS)
    assert result["ok"], format_table(result)
    assert {row["device"] for row in result["rows"]} == {"cpu (no GPU)"}
    actor = next(row for row in result["rows"] if row["check"] == "selector actor")
    assert actor["actor_device"] == "cpu"
    assert actor["result"] == "selection equal to cpu, embeddings equal"
    table = format_table(result)
    assert "| W1 crest, trainer | cpu (no GPU) |" in table
    json.dumps(result)  # what `crest bench gpu` writes


def test_the_command_is_wired() -> None:
    args = build_parser().parse_args(["bench", "gpu", "--no-ray", "--out", "x.json"])
    assert args.no_ray and args.out == "x.json" and args.func.__name__ == "_gpu_bench"
