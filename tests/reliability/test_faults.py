"""The reliability tier: ``crest bench faults --quick`` run as a test, one assertion per promise.

Real processes: ``crest serve`` killed with SIGKILL and restarted, a redis-server killed and
restarted from its AOF, Ray selector actors killed, the coordinator replica owning a job
killed, a soak and a fuzzer against a live coordinator. About a minute on an idle
2-core machine; ``pytest -m reliability`` runs it alone.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from crest.bench.faults import format_table, quick_plan, run_faults

pytestmark = [pytest.mark.reliability, pytest.mark.e2e]


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    return run_faults(quick_plan(), progress=lambda _: None)


def details(result: dict[str, Any]) -> str:
    return json.dumps(result, indent=1)[:4000]


def test_a_killed_coordinator_changes_no_batch(report) -> None:
    result = report["scenarios"]["coordinator"]
    assert result.get("kills") == 2, details(result)
    assert result["identical"], details(result)
    assert result["batches"] == quick_plan().job.config().total_steps


def test_a_killed_redis_loses_no_acknowledged_state(report) -> None:
    result = report["scenarios"]["redis"]
    assert result.get("kills") == 1, details(result)
    assert result["identical"], details(result)
    assert result["reloaded_unchanged"], details(result)


def test_killed_selector_actors_change_no_batch(report) -> None:
    result = report["scenarios"]["actor"]
    assert result.get("kills") == 1, details(result)
    assert result["fallbacks"] == 0, details(result)
    assert result["identical"], details(result)


def test_a_killed_replicas_job_is_taken_over_with_the_same_batches(report) -> None:
    result = report["scenarios"]["replica"]
    assert result.get("kills") == 1, details(result)
    assert result["redirected"], "the other replica sent the trainer to the owner"
    assert result["mid_job"], details(result)
    assert result["identical"], details(result)
    assert result["batches"] == quick_plan().job.config().total_steps


def test_a_soak_has_no_error(report) -> None:
    result = report["scenarios"]["soak"]
    assert result["errors"] == 0, details(result)
    assert result["calls"] > 0


def test_fuzzed_requests_get_honest_codes_and_change_nothing(report) -> None:
    result = report["scenarios"]["fuzz"]
    assert result.get("requests") == quick_plan().fuzz_n, details(result)
    assert result["violations"] == 0, details(result)
    assert "UNKNOWN" not in result["codes"] and "INTERNAL" not in result["codes"]
    assert result["still_serving"]


def test_the_report_is_a_table_with_every_scenario(report) -> None:
    assert report["ok"] and report["logs"] is None, "logs are kept only when a promise broke"
    table = format_table(report)
    for row in ("coordinator SIGKILL loop", "Redis SIGKILL", "selector actor SIGKILL",
                "coordinator replica SIGKILL", "soak", "fuzzing"):  # fmt: skip
        assert row in table
    assert "**no**" not in table
