from dataclasses import replace

from crest.bench.selection import Region, SelectionPlan, format_tables, run_selection_bench


def test_tiny_plan_runs_and_formats() -> None:
    # A smoke test only (the benchmark is never a timed test): every table renders.
    plan = SelectionPlan(
        region=Region(subsets=2, classes=3, per_class=12, budget=4),
        sweeps=(("dim", (4,)),),
        threads=(1,),
        repeats=1,
        baselines=False,
        large=None,
    )
    result = run_selection_bench(plan, ray_pool=False)
    table = format_tables(result)
    assert "| batched | 1 |" in table
    assert "| dim | 4 | 6 x 12 |" in table
    assert result["default"]["1_threads"]["per_problem"]["median_ms"] > 0
    big = run_selection_bench(replace(plan, large=(1100, 8, 20)), ray_pool=False)["large"]
    assert big["peak_mib"] >= big["before_mib"] > 0
