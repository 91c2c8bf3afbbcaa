from crest.service.telemetry import JobTelemetry, RankProgress, SelectionEvent


def test_rank_progress_rate_over_a_window() -> None:
    progress = RankProgress()
    for t, step in [(0.0, 0), (1.0, 10), (2.0, 20), (3.0, 20), (3.0, 5)]:
        progress.advance(step, now=t)
    assert progress.step == 20, "progress never goes backwards"
    assert progress.steps_per_second(window_s=10, now=3.0) == 10.0
    assert progress.steps_per_second(window_s=0.5, now=3.0) == 0.0


def test_selection_events_count_fallbacks() -> None:
    telemetry = JobTelemetry()
    telemetry.record_selection(SelectionEvent(0, 1.0, 0.01, 50, fallback=False))
    telemetry.record_selection(SelectionEvent(1, 2.0, 5.0, 50, fallback=True))
    assert telemetry.fallbacks == 1
    assert [e.region_id for e in telemetry.selections] == [0, 1]
    assert telemetry.rank(3) is telemetry.rank(3)
