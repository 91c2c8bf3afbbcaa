import math

import pytest

from crest.bench.scale import (
    Case,
    ManyJobs,
    ScalePlan,
    format_table,
    quick_plan,
    run_scale,
    select_cases,
)


@pytest.mark.e2e  # a private redis-server, coordinator processes and a `crest serve`
def test_tiny_plan_measures_every_case_and_formats() -> None:
    # A smoke test only (the benchmark is never a timed test): structure and sane values.
    plan = ScalePlan(
        cases=(Case("5k", 5_000, 10, regions=6, max_s=300.0),),
        many=ManyJobs(
            jobs=2, examples=3_000, regions=2, alone_regions=2, selector="inprocess", pace_s=0.2
        ),
        stored_after=(2, 4),
    )
    result = run_scale(plan, progress=lambda _: None)
    assert result["ok"], result
    case = result["cases"]["5k"]
    assert case["regions"] == 6 and case["fallbacks"] == 0
    assert [s["region_id"] for s in case["switches"]] == list(range(6))
    assert case["candidates"] == case["subset_size"] * case["num_coresets"] > 0
    assert case["create_s"] > 0 and case["switch"]["n"] == 6
    phases = case["phases_ms"]
    assert all(value >= 0 for value in phases.values()), phases
    parts = sum(phases[p] for p in ("draw", "upload", "selector", "assemble_monitor_deliver",
                                    "journal"))  # fmt: skip
    assert math.isclose(parts, case["switch"]["mean_ms"], rel_tol=1e-6)
    assert phases["selector"] > 0 and phases["journal"] > 0  # the wrappers saw the calls
    stored = case["stored_bytes"]
    assert set(stored) == {"0", "2", "4", "end"}
    assert all(stored[k]["total"] > 0 and "snapshot" in stored[k] for k in stored)
    memory = case["memory_mb"]["end"]
    assert memory["peak_rss_mb"] >= memory["rss_mb"] > 0
    restart = case["restart"]
    assert restart["status"] == "ready" and restart["region_id"] == 5
    assert 0 < restart["load_s"] <= restart["restart_s"]
    many = result["many"]
    assert many["errors"] == [] and many["fallbacks"] == 0
    assert many["alone"]["n"] == 2 and many["concurrent"]["n"] == 4
    assert many["p99_ratio"] > 0
    paced = many["paced"]
    assert paced["errors"] == [] and paced["fallbacks"] == 0 and paced["switch"]["n"] == 4
    assert paced["pace_s"] == 0.2 and paced["p99_ratio"] > 0
    table = format_table(result)
    assert "| 5k | 5,000 | 10 |" in table
    assert "| 2 at once, back to back (3,000, inprocess) | 4 |" in table
    assert "| 2 paced, 0.2 s x U(0.5, 1.5) per region (3,000, inprocess) | 4 |" in table
    assert "5k: stored bytes after 4 regions < 2x the initial state" in table


def test_sizes_are_chosen_by_name() -> None:
    plan = select_cases(ScalePlan(), ["10M", "many"], regions=50)
    assert [c.name for c in plan.cases] == ["10M"] and plan.many is not None
    assert plan.cases[0].regions == 50
    assert select_cases(quick_plan(), ["20k"], None).many is None
    with pytest.raises(ValueError, match="unknown sizes \\['1G'\\]"):
        select_cases(ScalePlan(), ["1G"], None)
