import pytest

from crest.service.telemetry import (
    LATENCY_BUCKETS,
    JobTelemetry,
    MethodCalls,
    RankProgress,
    RpcTelemetry,
    SelectionEvent,
)


def test_rank_progress_rate_over_a_window() -> None:
    progress = RankProgress()
    for t, step in [(0.0, 0), (1.0, 10), (2.0, 20), (3.0, 20), (3.0, 5)]:
        progress.advance(step, now=t)
    assert progress.step == 20, "progress never goes backwards"
    assert progress.steps_per_second(window_s=10, now=2.0) == 10.0
    assert progress.steps_per_second(window_s=10, now=4.0) == 5.0, "a stalled rank slows down"
    assert progress.steps_per_second(window_s=0.5, now=3.0) == 0.0


def test_selection_events_count_fallbacks() -> None:
    telemetry = JobTelemetry()
    telemetry.record_selection(SelectionEvent(0, 1.0, 0.01, 50, fallback=False))
    telemetry.record_selection(SelectionEvent(1, 2.0, 5.0, 50, fallback=True))
    assert telemetry.fallbacks == 1
    assert [e.region_id for e in telemetry.selections] == [0, 1]
    assert telemetry.rank(3) is telemetry.rank(3)


def test_rate_series_matches_steps_per_second_at_each_point() -> None:
    progress = RankProgress()
    for t, step in [(0.0, 0), (1.0, 4), (2.0, 10), (5.0, 16)]:
        progress.advance(step, now=t)
    series = progress.rate_series(window_s=2.5)
    assert [t for t, _ in series] == [0.0, 1.0, 2.0, 5.0]
    for count, (t, rate) in enumerate(series, 1):
        prefix = RankProgress()
        for u, s in list(progress.history)[:count]:
            prefix.advance(s, now=u)
        assert rate == prefix.steps_per_second(window_s=2.5, now=t)
    assert series[2][1] == 5.0 and series[3][1] == 0.0  # alone in its window


def test_cumulative_selection_counters_outlive_the_bounded_history() -> None:
    telemetry = JobTelemetry()
    for region in range(600):
        telemetry.record_selection(SelectionEvent(region, float(region), 0.5, 8, fallback=False))
    assert len(telemetry.selections) < 600
    assert telemetry.selections_total == 600
    assert telemetry.selection_seconds_total == 300.0


def test_rpc_calls_count_codes_and_fill_latency_buckets() -> None:
    rpc = RpcTelemetry()
    for seconds in (0.0003, 0.0005, 0.0015, 0.0015, 120.0):  # a bound is in its own bucket
        rpc.record("GetRegion", "OK", seconds)
    rpc.record("GetRegion", "NOT_FOUND", 0.004)
    calls = rpc.method("GetRegion")
    assert (calls.calls, calls.errors, calls.codes) == (6, 1, {"OK": 5, "NOT_FOUND": 1})
    assert calls.seconds == pytest.approx(120.0078)
    cumulative = calls.cumulative()
    assert len(cumulative) == len(LATENCY_BUCKETS) + 1
    assert cumulative[:4] == [2, 2, 4, 5]  # <= 0.5 ms, 1 ms, 2 ms, 5 ms
    assert cumulative[-2:] == [5, 6]  # <= 60 s, +Inf
    assert rpc.methods.keys() == {"GetRegion"}


def test_rpc_latency_quantiles_interpolate_within_buckets() -> None:
    calls = MethodCalls()
    assert calls.quantile(0.5) is None
    for _ in range(100):
        calls.record("OK", 0.0015)  # all in (1 ms, 2 ms]
    assert calls.quantile(0.5) == pytest.approx(0.0015)
    assert calls.quantile(0.99) == pytest.approx(0.00199)
    calls.record("OK", 1e3)  # beyond the last bound: estimated at that bound
    assert calls.quantile(1.0) == LATENCY_BUCKETS[-1]
