"""``crest bench service --ranks``: simulated ranks against a real ``crest serve`` (and two
replicas on a private redis-server)."""

import pytest

from crest.bench.ranks import format_table, run_ranks_bench

pytestmark = pytest.mark.integration


def test_combined_checks_and_shared_fetches_cut_the_rpcs_with_the_same_decisions() -> None:
    result = run_ranks_bench([3], steps_=12, steps_per_s=10.0, replica_steps=12)
    per_rank, combined, shared, uploads, service = result["rows"]
    assert [r["mode"] for r in result["rows"]] == [
        "per-rank", "combined", "shared", "shared-upload", "shared-service",
    ]  # fmt: skip
    assert per_rank["checks"] > 0
    assert per_rank["decisions"] == combined["decisions"] == shared["decisions"]
    assert per_rank["decisions"] == uploads["decisions"]
    assert per_rank["rpcs"]["ReportCheck"] == 3 * per_rank["checks"]
    for row in (combined, shared, uploads, service):
        assert row["rpcs"]["ReportCheck"] == row["checks"]
    for row in (per_rank, combined):  # every rank fetches twice and uploads once per region
        assert row["rpcs"]["GetRegion"] == 2 * 3 * row["regions"]
    for row in (per_rank, combined, shared):
        assert row["rpcs"]["UploadEmbeddings"] == 3 * row["regions"]
    # Rank 0 fetches for all: twice per region (candidates, batches), one page each.
    assert shared["rpcs"]["GetRegion"] == 2 * shared["regions"] and shared["region_pages"] == 1
    # ... and uploads for all: one stream per region (small regions).
    assert uploads["rpcs"]["GetRegion"] == 2 * uploads["regions"]
    assert uploads["rpcs"]["UploadEmbeddings"] == uploads["regions"]
    # The service side: no uploads; the model once, weights about once per region.
    assert "UploadEmbeddings" not in service["rpcs"] and service["rpcs"]["PublishModel"] == 1
    assert service["regions"] <= service["rpcs"]["PublishWeights"] <= service["regions"] + 2
    assert service["rpcs"]["GetRegion"] <= 3 + service["regions"]
    assert all(row["steps"] == 12 for row in result["rows"])
    ((one, two),) = result["replicas"]
    assert (one["replicas"], one["jobs"], two["replicas"], two["jobs"]) == (1, 1, 2, 2)
    assert one["steps"] == [12] and two["steps"] == [12, 12]
    assert len(two["coordinator_cpu_s_per_step"]) == 2
    table = format_table(result)
    assert "| 3 | combined | 12 |" in table and "| 2 | 2 (3) | shared-service | 12, " in table
