"""Prometheus metrics: the dashboard's figures, read from the manager at scrape time.

Each app owns a :class:`MetricsCollector` and its own ``CollectorRegistry`` (no global
registry state, so several apps or tests never collide). A scrape first awaits the jobs'
details on the manager's loop and then renders them synchronously, so every figure comes
from the same :class:`~crest.service.dashboard.models.JobDetail` the JSON API serves.

Every metric carries a ``job`` label (the job id); per-rank ones add ``rank``, per-class ones
``class``, per-mode ones ``mode``. The job's human name is a label of one info metric only,
``crest_job_info{job, name, strategy}`` (one series per job, however many metrics there are):
join it where a name reads better, e.g.
``crest_pool_size * on(job) group_left(name) crest_job_info``.

Latest-value figures (k, P, the last check's error, the last region's losses and weight
quantiles, the newest monitor figures) are gauges; Prometheus keeps their history.

The gRPC server's own figures, when the app is given its
:class:`~crest.service.telemetry.RpcTelemetry`, carry a ``method`` label instead:
``crest_rpc_calls_total{method, code}`` and the histogram ``crest_rpc_latency_seconds{method}``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from crest.proto.contract import RegionStats, region_totals
from crest.service.dashboard.models import JobDetail, Mode
from crest.service.dashboard.views import all_details
from crest.service.manager import JobManager
from crest.service.telemetry import LATENCY_BUCKETS, RpcTelemetry

# Per-class series cost one time series per class and job: above this many classes they are
# left out (the JSON API still has them all).
MAX_CLASS_LABELS = 1000
END_REASONS = ("check", "bound", "budget")
QUANTILES = ("0", "0.25", "0.5", "0.75", "1")  # labels of RegionStats.weight_quantiles
MODES: tuple[Mode, ...] = get_args(Mode)

# (name, help, value) of the per-job gauges; a value of None leaves the sample out.
_JOB_GAUGES: list[tuple[str, str, Callable[[JobDetail], float | None]]] = [
    ("crest_job_step", "Steps trained by every rank.", lambda d: d.summary.step),
    ("crest_job_total_steps", "The job's step budget.", lambda d: d.summary.total_steps),
    ("crest_job_finished", "1 once the budget is spent.", lambda d: float(d.summary.finished)),
    ("crest_job_tau", "Check threshold on the relative error.", lambda d: d.summary.tau),
    ("crest_check_interval", "k of the current region.", lambda d: d.summary.check_interval),
    ("crest_coresets_per_rank", "P of the current region.", lambda d: d.summary.num_coresets),
    (
        "crest_check_relative_error",
        "|L_true - F| / L_true at the last check.",
        lambda d: d.summary.last_relative_error,
    ),
    ("crest_pool_size", "Examples in the pool.", lambda d: d.summary.pool_size),
    ("crest_dropped_examples", "Learned examples out of the pool.", lambda d: d.summary.dropped),
    (
        "crest_learned_fraction",
        "Fraction of all examples out of the pool.",
        lambda d: d.summary.learned_fraction,
    ),
    (
        "crest_batches_per_second",
        "Batches served per second, summed over ranks.",
        lambda d: d.summary.batches_per_second,
    ),
    (
        "crest_selection_last_latency_seconds",
        "Latency of the last selection.",
        lambda d: d.summary.last_selection_seconds,
    ),
    (
        "crest_candidate_loss",
        "Mean loss of the last selected region's candidates (those exclude_noisy kept from "
        "selection left out).",
        lambda d: getattr(_last_selected(d), "candidate_loss", None),
    ),
    (
        "crest_selected_loss",
        "Mean loss of the last selected region's coreset examples.",
        lambda d: getattr(_last_selected(d), "selected_loss", None),
    ),
    (
        "crest_excluded_candidates",
        "exclude_noisy, last selected region: subset members kept from selection as likely "
        "mislabelled (loss far above their class's).",
        lambda d: getattr(_last_selected(d), "excluded", None),
    ),
    (
        "crest_coreset_gradient_error",
        "Monitor, newest measured region: relative squared error of the coresets' mean "
        "embedding-gradient against their subsets' means.",
        lambda d: d.summary.coreset_error,
    ),
    (
        "crest_random_gradient_error",
        "Monitor, newest measured region: the same for equal-size stratified random batches.",
        lambda d: d.summary.random_error,
    ),
    (
        "crest_monitor_gain",
        "Monitor, newest measured region: random / coreset gradient error.",
        lambda d: d.summary.gain,
    ),
    (
        "crest_monitor_min_gain",
        "How many times faster than random batches coresets must lower auto's probe loss "
        "(auto_min_gain, before the switching margin auto_switch_margin).",
        lambda d: d.summary.auto_min_gain,
    ),
    (
        "crest_selection_time_share",
        "Share of all ranks' trainer time spent on selection work.",
        lambda d: d.summary.selection_share,
    ),
    (
        "crest_region_staleness_steps",
        "Service side, current region: steps between the weights its candidates were embedded "
        "with and its start.",
        lambda d: d.summary.staleness,
    ),
]


def _last_selected(detail: JobDetail) -> RegionStats | None:
    """The newest region whose selection finished (the current one may still be running)."""
    return next((r for r in reversed(detail.status.regions) if r.weight_quantiles), None)


class MetricsCollector(Collector):
    """Renders the manager's jobs as Prometheus metrics; one per app.

    Args:
        manager: the jobs to report; read only through :meth:`scrape`, on its loop.
        rpc: the gRPC server's calls, if it runs in this process (on the same loop).
    """

    def __init__(self, manager: JobManager, rpc: RpcTelemetry | None = None) -> None:
        self._manager = manager
        self._rpc = rpc
        self._details: list[JobDetail] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    async def scrape(self) -> bytes:
        """Read every job now and return the text exposition format."""
        # No await between the snapshot and rendering: two concurrent scrapes cannot mix.
        self._details = await all_details(self._manager, rate_series=False)
        return generate_latest(self.registry)

    def describe(self) -> list[Metric]:
        return []  # no fixed names to check at registration; families vary with the jobs

    def collect(self) -> Iterator[Metric]:
        yield from families(self._details)
        if self._rpc is not None:
            yield from rpc_families(self._rpc)


def families(details: list[JobDetail]) -> Iterator[Metric]:
    """The metric families of some jobs' details."""
    jobs = GaugeMetricFamily("crest_jobs", "Jobs known to the coordinator.")
    jobs.add_metric([], len(details))
    yield jobs
    yield from _job_gauges(details)
    yield from _counters(details)
    yield from _modes(details)
    yield from _per_rank(details)
    yield from _per_class(details)
    yield from _weights(details)


def _job_gauges(details: list[JobDetail]) -> Iterator[Metric]:
    for name, help_text, value in _JOB_GAUGES:
        family = GaugeMetricFamily(name, help_text, labels=["job"])
        for detail in details:
            v = value(detail)
            if v is not None:
                family.add_metric([detail.summary.job_id], float(v))
        yield family


def _counters(details: list[JobDetail]) -> Iterator[Metric]:
    regions = CounterMetricFamily("crest_regions", "Regions opened.", labels=["job"])
    switches = CounterMetricFamily(
        "crest_region_switches", "Regions ended, by reason.", labels=["job", "reason"]
    )
    checks = CounterMetricFamily(
        "crest_checks",
        "Quadratic-model checks, by whether the error exceeded tau.",
        labels=["job", "outcome"],
    )
    dropped = CounterMetricFamily(
        "crest_examples_dropped", "Learned examples taken out of the pool.", labels=["job"]
    )
    readmitted = CounterMetricFamily(
        "crest_examples_readmitted", "Dropped examples returned to the pool.", labels=["job"]
    )
    selections = CounterMetricFamily("crest_selections", "Selections finished.", labels=["job"])
    fallbacks = CounterMetricFamily(
        "crest_fallbacks", "Regions served with random batches.", labels=["job"]
    )
    latency = SummaryMetricFamily(
        "crest_selection_latency_seconds",
        "From the last embedding received to coresets ready.",
        labels=["job"],
    )
    for detail in details:
        # Over the whole job: the status keeps only its last regions' statistics.
        job, summary, totals = detail.summary.job_id, detail.summary, region_totals(detail.status)
        regions.add_metric([job], totals.regions)
        for reason in END_REASONS:
            switches.add_metric([job, reason], getattr(totals, f"ended_{reason}"))
        checks.add_metric([job, "within_tau"], totals.checks - totals.checks_exceeded)
        checks.add_metric([job, "exceeded_tau"], totals.checks_exceeded)
        dropped.add_metric([job], totals.dropped)
        readmitted.add_metric([job], totals.readmitted)
        selections.add_metric([job], summary.selections)
        fallbacks.add_metric([job], summary.fallbacks)
        latency.add_metric(
            [job], count_value=summary.selections, sum_value=summary.selection_seconds_total
        )
    yield from (regions, switches, checks, dropped, readmitted, selections, fallbacks, latency)


def _modes(details: list[JobDetail]) -> Iterator[Metric]:
    info = InfoMetricFamily(
        "crest_job", "The job's name (its id when unnamed) and selection strategy.", labels=["job"]
    )
    current = GaugeMetricFamily(
        "crest_region_mode", "1 for the current region's mode, else 0.", labels=["job", "mode"]
    )
    regions = CounterMetricFamily(
        "crest_regions_by_mode",
        "Regions opened, by how their batches were made.",
        labels=["job", "mode"],
    )
    switches = CounterMetricFamily(
        "crest_mode_switches",
        "Regions whose batches changed between coresets and random batches (strategy auto's "
        "decisions; a fallback region counts as coresets).",
        labels=["job", "to"],
    )
    for detail in details:
        job, totals = detail.summary.job_id, region_totals(detail.status)
        info.add_metric([job], {"name": detail.summary.name, "strategy": detail.summary.strategy})
        for mode in MODES:
            current.add_metric([job, mode], float(detail.summary.mode == mode))
            regions.add_metric([job, mode], getattr(totals, mode))
        for to in ("crest", "random"):
            switches.add_metric([job, to], getattr(totals, f"to_{to}"))
    yield from (info, current, regions, switches)


def _per_rank(details: list[JobDetail]) -> Iterator[Metric]:
    steps = CounterMetricFamily(
        "crest_rank_steps", "Highest step a rank asked for or reported.", labels=["job", "rank"]
    )
    rate = GaugeMetricFamily(
        "crest_rank_steps_per_second",
        "Batches served per second to a rank.",
        labels=["job", "rank"],
    )
    share = GaugeMetricFamily(
        "crest_rank_selection_time_share",
        "Share of a rank's trainer time spent on selection work (its last check report).",
        labels=["job", "rank"],
    )
    train = CounterMetricFamily(
        "crest_rank_train_seconds",
        "A rank's time in the training loop between batches (its last check report).",
        labels=["job", "rank"],
    )
    selection = CounterMetricFamily(
        "crest_rank_selection_seconds",
        "A rank's time in selection work: candidate passes, uploads and waiting, "
        "gradient/Hessian, checks (its last check report).",
        labels=["job", "rank"],
    )
    for detail in details:
        job = detail.summary.job_id
        for r in detail.ranks:
            labels = [job, str(r.rank)]
            steps.add_metric(labels, r.step)
            rate.add_metric(labels, r.steps_per_second)
        for t in detail.trainers:
            labels = [job, str(t.rank)]
            share.add_metric(labels, t.selection_share)
            train.add_metric(labels, t.train_seconds)
            selection.add_metric(labels, t.selection_seconds)
    yield from (steps, rate, share, train, selection)


def _per_class(details: list[JobDetail]) -> Iterator[Metric]:
    size = GaugeMetricFamily(
        "crest_class_examples", "Examples of a class in the training set.", labels=["job", "class"]
    )
    pool = GaugeMetricFamily(
        "crest_class_pool_examples", "Examples of a class in the pool.", labels=["job", "class"]
    )
    learned = GaugeMetricFamily(
        "crest_class_learned_fraction",
        "Fraction of a class out of the pool (learned).",
        labels=["job", "class"],
    )
    for detail in details:
        if len(detail.classes) > MAX_CLASS_LABELS:
            continue
        for c in detail.classes:
            labels = [detail.summary.job_id, str(c.label)]
            size.add_metric(labels, c.size)
            pool.add_metric(labels, c.in_pool)
            learned.add_metric(labels, c.learned_fraction)
    yield from (size, pool, learned)


def _weights(details: list[JobDetail]) -> Iterator[Metric]:
    weight = GaugeMetricFamily(
        "crest_coreset_weight",
        "Quantiles of the last selected region's coreset weights (mean 1).",
        labels=["job", "quantile"],
    )
    for detail in details:
        region = _last_selected(detail)
        if region is not None:
            for q, value in zip(QUANTILES, region.weight_quantiles, strict=True):
                weight.add_metric([detail.summary.job_id, q], value)
    yield weight


def rpc_families(rpc: RpcTelemetry) -> Iterator[Metric]:
    """The gRPC server's calls per method: by final status code, and their latency."""
    calls = CounterMetricFamily(
        "crest_rpc_calls",
        "Coordinator RPCs finished, by method and final status code.",
        labels=["method", "code"],
    )
    latency = HistogramMetricFamily(
        "crest_rpc_latency_seconds",
        "Coordinator RPC latency, from the handler's start to its reply or error.",
        labels=["method"],
    )
    bounds = [*(f"{b:g}" for b in LATENCY_BUCKETS), "+Inf"]
    for method, stats in sorted(rpc.methods.items()):
        for code, count in sorted(stats.codes.items()):
            calls.add_metric([method, code], count)
        buckets = list(zip(bounds, stats.cumulative(), strict=True))
        latency.add_metric([method], buckets, sum_value=stats.seconds)
    yield from (calls, latency)
