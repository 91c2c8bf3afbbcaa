"""``crest bench service --ranks``: simulated ranks against a real ``crest serve``."""

import pytest

from crest.bench.ranks import format_table, run_ranks_bench

pytestmark = pytest.mark.integration


def test_combined_checks_send_one_report_per_check_and_get_the_same_decisions() -> None:
    result = run_ranks_bench([3], steps_=12, steps_per_s=10.0)
    per_rank, combined = result["rows"]
    assert (per_rank["mode"], combined["mode"]) == ("per-rank", "combined")
    assert per_rank["checks"] > 0 and per_rank["decisions"] == combined["decisions"]
    assert per_rank["rpcs"]["ReportCheck"] == 3 * per_rank["checks"]
    assert combined["rpcs"]["ReportCheck"] == combined["checks"]
    for row in result["rows"]:  # every rank fetches twice and uploads once per region
        assert row["rpcs"]["GetRegion"] == 2 * 3 * row["regions"]
        assert row["rpcs"]["UploadEmbeddings"] == 3 * row["regions"]
        assert row["steps"] == 12
    assert "| 3 | combined | 12 |" in format_table(result)
