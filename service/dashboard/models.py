"""The dashboard's JSON API: what every page, chart and metric is drawn from.

The per-region history (regions, checks, k, P, pool per class, weight quantiles, losses,
modes, decisions, the coreset-quality monitor) is the job's own
:class:`~crest.proto.contract.JobStatus`, served as is; the models here add what the page
would otherwise compute itself (per-class learned fractions, per-rank rates and selection-time
shares, selection events joined to their regions, each region's monitor gain) and a one-line
summary per job.

A monitor gain is infinite when a coreset's error is exactly 0 and a random batch's is not;
JSON has no infinity, so such a gain is sent as the string ``"Infinity"`` (``float()`` and
JavaScript's ``Number()`` read it back).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from crest.proto.contract import JobStatus

Mode = Literal["crest", "random", "fallback"]
MODE_HELP = (
    "how the region's batches were made: crest (coresets), random (random batches: strategy "
    "random, or auto's verdict) or fallback (selection failed or timed out: random batches)"
)
GAIN_HELP = (
    "random_error / coreset_error: how many times better than a random batch the coresets "
    "estimate their subset's gradient (1 when both are 0; None: not measured)"
)
QUANTILE_HELP = (
    "estimated from the latency histogram's buckets as Prometheus' histogram_quantile does "
    "(linear within a bucket); None before the first call"
)


class JobSummary(BaseModel):
    """One job at a glance: a row of the overview and the tiles of the job page."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    job_id: str
    name: str = Field(description="the job's JobConfig.name, or its job id when it has none")
    step: int = Field(description="steps known to be trained by every rank")
    total_steps: int
    finished: bool
    world_size: int
    num_examples: int
    num_classes: int
    tau: float = Field(description="check threshold on the relative error")
    regions: int = Field(description="regions opened so far")
    region_id: int | None = Field(description="the current (last opened) region")
    check_interval: int | None = Field(description="k of the current region")
    num_coresets: int | None = Field(description="P of the current region, per rank")
    last_relative_error: float | None = Field(description="|L_true - F| / L_true, last check")
    pool_size: int
    dropped: int = Field(description="learned examples currently out of the pool")
    learned_fraction: float = Field(description="dropped / num_examples")
    selections: int = Field(description="selections completed over the job's life")
    selection_seconds_total: float = Field(description="their summed latency")
    fallbacks: int = Field(description="regions served with random batches")
    last_selection_seconds: float | None
    mean_selection_seconds: float | None
    batches_per_second: float = Field(description="sum over ranks of steps per second")
    updated: float | None = Field(description="unix time of the last rank progress")
    strategy: Literal["crest", "random", "auto"]
    mode: Mode | None = Field(description="the current region's; " + MODE_HELP)
    decision: str | None = Field(description="why the current region has its mode")
    coreset_error: float | None = Field(description="the monitor's, newest measured region")
    random_error: float | None = Field(description="the monitor's, newest measured region")
    gain: float | None = Field(description="newest measured region: " + GAIN_HELP)
    auto_min_gain: float = Field(
        description="strategy auto: how many times faster than random batches coresets must "
        "lower the probe loss in a test, before the switching margin"
    )
    auto_switch_margin: float = Field(
        description="strategy auto: a test changes the mode the job serves only by this factor "
        "beyond auto_min_gain (coresets stay above auto_min_gain / it, return above "
        "auto_min_gain x it)"
    )
    selection_share: float | None = Field(
        description="share of all ranks' trainer time spent on selection work (None before "
        "the first check report)"
    )
    selection_side: Literal["trainer", "service"] = Field(
        description="who embeds the candidates now: the ranks, or the selectors from the "
        "published weights (pipelined)"
    )
    staleness: int | None = Field(
        description="the current region: steps between the weights its candidates were "
        "embedded with and its start (None: embedded by the ranks at its start)"
    )


class ClassPool(BaseModel):
    """One class's share of the pool now."""

    label: int
    size: int = Field(description="examples of this class in the training set")
    in_pool: int
    learned_fraction: float = Field(description="1 - in_pool / size: learned, excluded")


class SelectionRecord(BaseModel):
    """One finished selection (the newest events; the telemetry keeps a bounded history)."""

    region_id: int
    start_step: int | None = Field(description="first step of the region it served")
    at: float = Field(description="unix time the selection finished")
    seconds: float = Field(description="last embedding received -> coresets ready")
    problems: int = Field(description="(subset x class) problems solved")
    fallback: bool = Field(description="served with random batches instead")


class RatePoint(BaseModel):
    t: float = Field(description="unix time")
    steps_per_second: float


class RankRate(BaseModel):
    """A trainer rank's progress: the batches it was served per second."""

    rank: int
    step: int = Field(description="highest step asked for or reported")
    updated: float = Field(description="unix time of the last progress")
    steps_per_second: float = Field(description="over the trailing rate window, now")
    series: list[RatePoint] = Field(
        description="rate at each progress observation; only for the lowest-numbered ranks"
    )


class RegionMonitor(BaseModel):
    """One region's mode, why (strategy auto's test and verdict), and the embedding monitor."""

    model_config = ConfigDict(ser_json_inf_nan="strings")

    region_id: int
    start_step: int
    end_step: int | None = Field(description="exclusive; None while the region runs")
    mode: Mode = Field(description=MODE_HELP)
    decision: str = Field(description="why: strategy auto's verdict, or the strategy")
    coreset_error: float | None = Field(
        description="relative squared error of the weighted coresets' mean embedding-gradient "
        "against their random subsets' means"
    )
    random_error: float | None = Field(
        description="the same for equal-size stratified random batches from those subsets"
    )
    gain: float | None = Field(description=GAIN_HELP)
    auto_test: str = Field(
        "", description="strategy auto's test: coresets, random, measure (its end point) or none"
    )
    probe_loss: float | None = Field(
        None, description="auto's test: the held-out probe's mean clipped loss at the region start"
    )
    loss_rate_coresets: float | None = Field(
        None, description="auto's verdict (measure region): probe-loss decrease per coreset step"
    )
    loss_rate_random: float | None = Field(
        None, description="auto's verdict (measure region): probe-loss decrease per random step"
    )
    loss_excess_coresets: float | None = Field(
        None,
        description="auto's verdict (measure region, or the coreset region that ended a test "
        "early): the test's coreset regions' mean loss of "
        "selected examples minus their candidates' (outside auto_min_loss_excess and "
        "auto_max_loss_excess, times ln C: coresets lose)",
    )


class TrainerShare(BaseModel):
    """Where a trainer rank's time went, from its last check report."""

    rank: int
    train_seconds: float = Field(description="in the training loop between batches")
    selection_seconds: float = Field(
        description="candidate passes, uploads and waiting, gradient/Hessian, checks"
    )
    selection_share: float = Field(description="selection / (train + selection)")


class JobDetail(BaseModel):
    """Everything the job page shows; each server-sent event carries one."""

    summary: JobSummary
    status: JobStatus
    classes: list[ClassPool]
    selections: list[SelectionRecord]
    ranks: list[RankRate]
    monitor: list[RegionMonitor] = Field(description="one per region, in order")
    trainers: list[TrainerShare] = Field(description="ranks that have reported a check")


class RpcMethod(BaseModel):
    """One gRPC method's calls since the coordinator started (the overview's RPC table)."""

    method: str = Field(description="the Coordinator RPC, e.g. GetRegion")
    calls: int
    errors: int = Field(description="calls that ended with any status but OK")
    codes: dict[str, int] = Field(description="calls by final status code, e.g. NOT_FOUND")
    mean_seconds: float | None = Field(description="mean latency; None before the first call")
    p50_seconds: float | None = Field(description="median latency, " + QUANTILE_HELP)
    p99_seconds: float | None = Field(description="99th percentile latency, " + QUANTILE_HELP)
