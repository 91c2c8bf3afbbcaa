"""Read a :class:`JobManager` into the dashboard's models.

Everything here runs on the manager's event loop: ``job_status`` takes the job's lock, and
the telemetry is read right after it without an ``await`` in between, so status and
telemetry describe the same moment.
"""

from __future__ import annotations

import time

from crest.proto.contract import JobStatus, RegionStats, TrainerTime, region_totals
from crest.proto.errors import NotFound
from crest.service.dashboard.models import (
    ClassPool,
    JobDetail,
    JobSummary,
    Mode,
    RankRate,
    RatePoint,
    RegionMonitor,
    RpcMethod,
    SelectionRecord,
    TrainerShare,
)
from crest.service.manager import JobManager
from crest.service.strategy import monitor_gain
from crest.service.telemetry import JobTelemetry, RpcTelemetry

RATE_WINDOW_S = 10.0  # trailing window of the steps-per-second figures
MAX_RANK_SERIES = 16  # ranks whose rate history is served (a chart of more is unreadable)


async def job_detail(manager: JobManager, job_id: str, *, rate_series: bool = True) -> JobDetail:
    """The job page's data; ``rate_series=False`` leaves out the ranks' rate histories.

    Raises:
        NotFound: unknown job.
    """
    status = await manager.job_status(job_id)
    return _detail(status, manager.telemetry(job_id), time.time(), rate_series)


async def all_details(manager: JobManager, *, rate_series: bool = True) -> list[JobDetail]:
    """Every job's detail, skipping jobs that vanish while we read."""
    details = []
    for job_id in manager.job_ids():
        try:
            details.append(await job_detail(manager, job_id, rate_series=rate_series))
        except NotFound:
            continue
    return details


async def all_summaries(manager: JobManager) -> list[JobSummary]:
    """The overview: one summary per job."""
    summaries = []
    for job_id in manager.job_ids():
        try:
            status = await manager.job_status(job_id)
        except NotFound:
            continue
        summaries.append(_summary(status, manager.telemetry(job_id), time.time()))
    return summaries


def rpc_methods(rpc: RpcTelemetry | None) -> list[RpcMethod]:
    """The gRPC server's calls per method, by name; none without a server."""
    if rpc is None:
        return []
    return [
        RpcMethod(
            method=name,
            calls=calls.calls,
            errors=calls.errors,
            codes=dict(sorted(calls.codes.items())),
            mean_seconds=calls.seconds / calls.calls if calls.calls else None,
            p50_seconds=calls.quantile(0.5),
            p99_seconds=calls.quantile(0.99),
        )
        for name, calls in sorted(rpc.methods.items())
    ]


def region_mode(region: RegionStats) -> Mode:
    """crest or random as the strategy made the region; fallback where selection failed."""
    return "fallback" if region.fallback else region.mode


def region_monitor(region: RegionStats) -> RegionMonitor:
    return RegionMonitor(
        region_id=region.region_id,
        start_step=region.start_step,
        end_step=region.end_step,
        mode=region_mode(region),
        decision=region.decision,
        coreset_error=region.coreset_error,
        random_error=region.random_error,
        gain=monitor_gain(region.coreset_error, region.random_error),
        auto_test=region.auto_test,
        probe_loss=region.probe_loss,
        loss_rate_coresets=region.loss_rate_coresets,
        loss_rate_random=region.loss_rate_random,
        loss_excess_coresets=region.loss_excess_coresets,
    )


def _total_share(trainers: list[TrainerTime]) -> float | None:
    """The share of all ranks' trainer time spent on selection work."""
    if not trainers:
        return None
    return TrainerTime(
        rank=-1,
        train_seconds=sum(t.train_seconds for t in trainers),
        selection_seconds=sum(t.selection_seconds for t in trainers),
    ).selection_share


def _summary(status: JobStatus, telemetry: JobTelemetry, now: float) -> JobSummary:
    cfg = status.config
    current = status.regions[-1] if status.regions else None
    last_check = next((r.checks[-1] for r in reversed(status.regions) if r.checks), None)
    measured = next(
        (region_monitor(r) for r in reversed(status.regions) if r.coreset_error is not None),
        None,
    )
    selections = telemetry.selections
    total = telemetry.selections_total
    ranks = telemetry.ranks.values()
    return JobSummary(
        job_id=status.job_id,
        name=cfg.name or status.job_id,
        step=status.step,
        total_steps=status.total_steps,
        finished=status.finished,
        world_size=cfg.world_size,
        num_examples=cfg.num_examples,
        num_classes=cfg.num_classes,
        tau=cfg.tau,
        regions=region_totals(status).regions,  # the status keeps only the last ones
        region_id=None if current is None else current.region_id,
        check_interval=None if current is None else current.check_interval,
        num_coresets=None if current is None else current.num_coresets,
        last_relative_error=None if last_check is None else last_check.relative_error,
        pool_size=status.pool_size,
        dropped=status.dropped,
        learned_fraction=status.dropped / cfg.num_examples,
        selections=total,
        selection_seconds_total=telemetry.selection_seconds_total,
        fallbacks=telemetry.fallbacks,
        last_selection_seconds=selections[-1].seconds if selections else None,
        mean_selection_seconds=telemetry.selection_seconds_total / total if total else None,
        batches_per_second=sum(p.steps_per_second(RATE_WINDOW_S, now) for p in ranks),
        updated=max((p.updated for p in ranks), default=None),
        strategy=cfg.strategy,
        mode=None if current is None else region_mode(current),
        decision=None if current is None else current.decision,
        coreset_error=None if measured is None else measured.coreset_error,
        random_error=None if measured is None else measured.random_error,
        gain=None if measured is None else measured.gain,
        auto_min_gain=cfg.auto_min_gain,
        auto_switch_margin=cfg.auto_switch_margin,
        selection_share=_total_share(status.trainers),
        selection_side=status.selection_side,
        staleness=None if current is None else current.staleness,
    )


def _detail(status: JobStatus, telemetry: JobTelemetry, now: float, rate_series: bool) -> JobDetail:
    starts = {r.region_id: r.start_step for r in status.regions}
    classes = [
        ClassPool(
            label=label,
            size=size,
            in_pool=in_pool,
            learned_fraction=1.0 - in_pool / size if size else 0.0,
        )
        for label, (size, in_pool) in enumerate(
            zip(status.class_sizes, status.pool_per_class, strict=True)
        )
    ]
    selections = [
        SelectionRecord(
            region_id=e.region_id,
            start_step=starts.get(e.region_id),
            at=e.at,
            seconds=e.seconds,
            problems=e.problems,
            fallback=e.fallback,
        )
        for e in telemetry.selections
    ]
    ranks = [
        RankRate(
            rank=rank,
            step=progress.step,
            updated=progress.updated,
            steps_per_second=progress.steps_per_second(RATE_WINDOW_S, now),
            series=[
                RatePoint(t=t, steps_per_second=rate)
                for t, rate in progress.rate_series(RATE_WINDOW_S)
            ]
            if rate_series and index < MAX_RANK_SERIES
            else [],
        )
        for index, (rank, progress) in enumerate(sorted(telemetry.ranks.items()))
    ]
    return JobDetail(
        summary=_summary(status, telemetry, now),
        status=status,
        classes=classes,
        selections=selections,
        ranks=ranks,
        monitor=[region_monitor(r) for r in status.regions],
        trainers=[
            TrainerShare(
                rank=t.rank,
                train_seconds=t.train_seconds,
                selection_seconds=t.selection_seconds,
                selection_share=t.selection_share,
            )
            for t in status.trainers
        ],
    )
