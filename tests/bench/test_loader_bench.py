import pytest

from crest.bench.loader import VARIANTS, LoaderPlan, format_table, run_loader_bench
from crest.workloads import Dataset
from tests.training import blobs


@pytest.mark.e2e  # trains the job four ways, one with worker processes
def test_tiny_plan_runs_every_variant_on_the_same_batches() -> None:
    # A smoke test only (the benchmark is never a timed test).
    x, y = blobs()
    data = Dataset("blobs", x, y, x[:100], y[:100], num_classes=4)
    plan = LoaderPlan(epochs=2, train_frac=0.5, batch_size=32, repeats=1, workers=1)
    result = run_loader_bench(plan, data)
    assert [row["variant"] for row in result["summary"]] == list(VARIANTS)
    assert all(row["same_batches"] and row["steps"] == 38 for row in result["summary"])
    table = format_table(result)
    assert "| loader lazy + workers | 1 | 38 |" in table
