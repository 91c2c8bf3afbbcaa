"""What the coordinator observes while it serves jobs, beyond the jobs' own state.

Job state (:class:`crest.proto.contract.JobStatus`) says what was selected; telemetry says
how the service kept up: each rank's progress (for batches per second), each selection's
latency, and fallbacks to random batches. It lives in memory, is bounded, and is rebuilt from
nothing after a restart (it is not needed to resume a job).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

HISTORY = 512  # events kept per kind and job


@dataclass(frozen=True)
class SelectionEvent:
    region_id: int
    at: float  # time.time() when the selection finished
    seconds: float  # from the last embedding received to coresets ready
    problems: int  # (subset x class) problems solved
    fallback: bool  # True: the region got random batches because selection failed or timed out


@dataclass
class RankProgress:
    step: int = 0  # the highest step this rank has asked for or reported
    updated: float = 0.0  # time.time() of the last change
    history: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def advance(self, step: int, now: float | None = None) -> None:
        if step > self.step or not self.history:
            now = time.time() if now is None else now
            self.step, self.updated = step, now
            self.history.append((now, step))

    def steps_per_second(self, window_s: float = 30.0, now: float | None = None) -> float:
        """Steps per second from the first observation in the last ``window_s`` seconds up to
        ``now`` (so a stalled rank's rate decays), 0 with fewer than two observations."""
        now = time.time() if now is None else now
        recent = [(t, s) for t, s in self.history if now - t <= window_s]
        if len(recent) < 2 or now <= recent[0][0]:
            return 0.0
        return (recent[-1][1] - recent[0][1]) / (now - recent[0][0])

    def rate_series(self, window_s: float = 30.0) -> list[tuple[float, float]]:
        """``(time, steps_per_second(window_s, now=time))`` at each recorded observation.

        One pass with a trailing pointer, so a dashboard can chart the rate over time
        without re-scanning the history per point.
        """
        points = list(self.history)
        series: list[tuple[float, float]] = []
        first = 0
        for t, step in points:
            while t - points[first][0] > window_s:
                first += 1
            t0, s0 = points[first]
            series.append((t, (step - s0) / (t - t0) if t > t0 else 0.0))
        return series


@dataclass
class JobTelemetry:
    ranks: dict[int, RankProgress] = field(default_factory=dict)
    selections: deque[SelectionEvent] = field(default_factory=lambda: deque(maxlen=HISTORY))
    fallbacks: int = 0  # regions served with random batches
    # Cumulative over the job's life (``selections`` keeps only the last HISTORY events), so
    # Prometheus gets proper counters.
    selections_total: int = 0
    selection_seconds_total: float = 0.0
    # Selections that failed with an unexpected error (a bug), by exception type.
    selection_errors: dict[str, int] = field(default_factory=dict)

    def rank(self, rank: int) -> RankProgress:
        return self.ranks.setdefault(rank, RankProgress())

    def record_error(self, error: BaseException) -> None:
        kind = type(error).__name__
        self.selection_errors[kind] = self.selection_errors.get(kind, 0) + 1

    def record_selection(self, event: SelectionEvent) -> None:
        self.selections.append(event)
        self.fallbacks += event.fallback
        self.selections_total += 1
        self.selection_seconds_total += event.seconds
