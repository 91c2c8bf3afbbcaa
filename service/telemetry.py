"""What the coordinator observes while it serves jobs, beyond the jobs' own state.

Job state (:class:`crest.proto.contract.JobStatus`) says what was selected; telemetry says
how the service kept up: each rank's progress (for batches per second), each selection's
latency, and fallbacks to random batches. It lives in memory, is bounded, and is rebuilt from
nothing after a restart (it is not needed to resume a job). :class:`RpcTelemetry` says the
same of the gRPC server's calls: how many, how they ended and how long they took.
"""

from __future__ import annotations

import bisect
import itertools
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


# Upper bounds (seconds) of the RPC latency buckets: 0.5 ms (a status read) to a minute (a
# GetRegion or ReportCheck may wait up to wait_s, 60 s by default, for peers or selection),
# about 2-2.5x apart. One more bucket, +Inf, takes the rest.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


@dataclass
class MethodCalls:
    """One RPC method's calls since the server started: by final status code, and a latency
    histogram over :data:`LATENCY_BUCKETS` (Prometheus' kind, so quantiles are estimates)."""

    codes: dict[str, int] = field(default_factory=dict)  # status code name -> calls
    buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    seconds: float = 0.0  # summed latency

    @property
    def calls(self) -> int:
        return sum(self.codes.values())

    @property
    def errors(self) -> int:
        """Calls that ended with any status but OK."""
        return self.calls - self.codes.get("OK", 0)

    def record(self, code: str, seconds: float) -> None:
        self.codes[code] = self.codes.get(code, 0) + 1
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.seconds += seconds

    def cumulative(self) -> list[int]:
        """Calls at or under each bound of :data:`LATENCY_BUCKETS`, then all calls (+Inf)."""
        return list(itertools.accumulate(self.buckets))

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile of the latency as Prometheus' ``histogram_quantile`` estimates
        it: linear within the bucket it falls in, the highest finite bound when it falls in
        +Inf; None before the first call."""
        total = self.calls
        if total == 0:
            return None
        rank, below, lower = q * total, 0, 0.0
        for upper, count in zip(LATENCY_BUCKETS, self.buckets, strict=False):
            if count and below + count >= rank:
                return lower + (upper - lower) * (rank - below) / count
            below, lower = below + count, upper
        return LATENCY_BUCKETS[-1]


@dataclass
class RpcTelemetry:
    """The gRPC server's calls per method (short name, e.g. ``GetRegion``).

    Filled by :class:`crest.service.server.RpcMetricsInterceptor` and read by the dashboard,
    both on the server's event loop, so it needs no lock. The in-process coordinator
    (:mod:`crest.service.local`) makes no RPCs and has none.
    """

    methods: dict[str, MethodCalls] = field(default_factory=dict)

    def method(self, name: str) -> MethodCalls:
        return self.methods.setdefault(name, MethodCalls())

    def record(self, method: str, code: str, seconds: float) -> None:
        self.method(method).record(code, seconds)
