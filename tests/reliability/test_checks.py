"""The fault suite's own checks (fast): they can fail, kills spread over the job, bad names."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from crest.bench.faults import SCENARIOS, Context, FaultPlan, format_table, passed, run_faults
from crest.cli import main


def test_a_different_batch_or_a_fallback_breaks_the_promise() -> None:
    # The checks themselves can fail: what the scenarios above rely on.
    assert not passed("coordinator", {"identical": False})
    assert not passed("actor", {"identical": True, "fallbacks": 1})
    assert not passed("redis", {"identical": True, "reloaded_unchanged": False})
    assert not passed("fuzz", {"violations": 1, "still_serving": True})
    assert not passed("soak", {"errors": 1})
    assert not passed("coordinator", {"error": "RuntimeError: crest serve did not start"})


def test_kills_fall_inside_the_job_one_per_stretch() -> None:
    plan = FaultPlan()
    total = plan.job.config().total_steps
    steps = Context(plan, Path("."), random.Random(3)).kill_steps(10)
    assert len(steps) == 10 and steps == sorted(steps)
    assert steps[0] >= 1 and steps[-1] <= total - 2
    assert len({step * 10 // total for step in steps}) >= 9, "spread over the job"


def test_an_unknown_scenario_is_refused(capsys) -> None:
    assert main(["bench", "faults", "--scenarios", "nope"]) == 2
    assert f"valid: {' '.join(SCENARIOS)}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown scenarios"):
        run_faults(FaultPlan(scenarios=("nope",)))


def test_a_scenario_that_raised_or_broke_a_promise_shows_in_the_table() -> None:
    soak = {"sessions": 8, "seconds": 10.0, "errors": 1, "first_error": "RpcError: timed out"}
    report = {"scenarios": {"coordinator": {"error": "RuntimeError: no redis-server"},
                            "soak": {**soak, "ok": passed("soak", soak)}}}  # fmt: skip
    report["scenarios"]["coordinator"]["ok"] = False
    table = format_table(report)
    assert "| coordinator | - | error: RuntimeError: no redis-server | **no** |" in table
    assert "1 errors (RpcError: timed out) | **no** |" in table
