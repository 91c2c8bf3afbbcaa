"""The dashboard's JSON API: what every page, chart and metric is drawn from.

The per-region history (regions, checks, k, P, pool per class, weight quantiles, losses) is
the job's own :class:`~crest.proto.contract.JobStatus`, served as is; the models here add
what the page would otherwise compute itself (per-class learned fractions, per-rank rates,
selection events joined to their regions) and a one-line summary per job.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from crest.proto.contract import JobStatus


class JobSummary(BaseModel):
    """One job at a glance: a row of the overview and the tiles of the job page."""

    job_id: str
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


class JobDetail(BaseModel):
    """Everything the job page shows; each server-sent event carries one."""

    summary: JobSummary
    status: JobStatus
    classes: list[ClassPool]
    selections: list[SelectionRecord]
    ranks: list[RankRate]
