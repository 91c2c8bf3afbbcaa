"""The coordinator's core: many jobs, each a :class:`JobState` behind its own lock.

Async throughout, so that one event loop serves many ranks and jobs: waiting for a peer's
check report or for a selection never blocks anybody else. The gRPC servicer and the
in-process facade (:mod:`crest.service.local`) both call this class and nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
from pydantic import ValidationError

from crest.proto.contract import (
    CheckDecision,
    CheckReport,
    JobConfig,
    JobStatus,
    RegionStatus,
    RegionView,
    SessionInfo,
)
from crest.proto.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from crest.service.job import JobState, Phase
from crest.service.telemetry import JobTelemetry, SelectionEvent
from crest.worker.selector import Selector

log = logging.getLogger(__name__)

DEFAULT_WAIT_S = 60.0


@dataclass
class _Job:
    state: JobState
    labels_digest: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Condition = field(init=False)
    selecting: asyncio.Task[None] | None = None
    telemetry: JobTelemetry = field(default_factory=JobTelemetry)
    embedded_at: float = 0.0  # monotonic time the current region's last embedding arrived

    def __post_init__(self) -> None:
        self.changed = asyncio.Condition(self.lock)


def _labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


class JobManager:
    """Jobs, their state machines, and the selector that serves them.

    Args:
        selector: runs each region's selection problems.
        wait_s: how long a call may wait for peers or for selection before it fails with
            :class:`Unavailable` (the caller retries; every call is idempotent).
    """

    def __init__(self, selector: Selector, *, wait_s: float = DEFAULT_WAIT_S) -> None:
        self.selector = selector
        self.wait_s = wait_s
        self._jobs: dict[str, _Job] = {}

    # ---------------------------------------------------------------------------- jobs
    async def create_job(
        self, config: JobConfig | dict, labels: np.ndarray, job_id: str | None = None
    ) -> str:
        """Create a job, or return ``job_id`` if it exists with the same config and labels."""
        try:
            config = config if isinstance(config, JobConfig) else JobConfig.model_validate(config)
        except ValidationError as err:
            raise InvalidArgument(f"invalid job config: {err}") from None
        if job_id is not None and not (0 < len(job_id) <= 128 and job_id.isprintable()):
            raise InvalidArgument("job_id must be 1-128 printable characters")
        labels = np.asarray(labels)
        digest = _labels_digest(labels) if np.issubdtype(labels.dtype, np.integer) else ""
        if job_id is not None and job_id in self._jobs:
            existing = self._jobs[job_id]
            if existing.state.config != config or existing.labels_digest != digest:
                raise FailedPrecondition(f"job {job_id!r} exists with another config or labels")
            return job_id
        job_id = job_id or uuid.uuid4().hex[:16]
        self._jobs[job_id] = _Job(JobState(job_id, config, labels), digest)
        log.info(
            "created job %s: N=%d C=%d steps=%d",
            job_id,
            config.num_examples,
            config.num_classes,
            config.total_steps,
        )
        return job_id

    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def _job(self, job_id: str) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"unknown job {job_id!r}") from None

    async def open_session(self, job_id: str, rank: int) -> SessionInfo:
        job = self._job(job_id)
        cfg = job.state.config
        if not 0 <= rank < cfg.world_size:
            raise InvalidArgument(f"rank must lie in [0, {cfg.world_size}), got {rank}")
        return SessionInfo(
            job_id=job_id,
            rank=rank,
            world_size=cfg.world_size,
            total_steps=cfg.total_steps,
            steps_per_virtual_epoch=cfg.steps_per_virtual_epoch,
            num_classes=cfg.num_classes,
            batch_size=cfg.batch_size,
        )

    async def job_status(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        async with job.lock:
            return job.state.status()

    def telemetry(self, job_id: str) -> JobTelemetry:
        """The job's live telemetry (read-only by convention; owned by the manager)."""
        return self._job(job_id).telemetry

    # ------------------------------------------------------------------------- regions
    async def get_region(self, job_id: str, rank: int, step: int) -> RegionView:
        """The region holding ``step``; waits (up to ``wait_s``) while selection runs."""
        job = self._job(job_id)
        async with job.changed:
            view = job.state.view(rank, step)
            job.telemetry.rank(rank).advance(step)
            if view.status is RegionStatus.SELECTING:
                region = job.state.region
                if region is not None and region.phase is Phase.SELECTING:
                    self._ensure_selection(job)  # e.g. after a failed attempt or a restart
                await self._wait(
                    job,
                    lambda: job.state.view(rank, step).status is not RegionStatus.SELECTING,
                    "selection",
                )
                view = job.state.view(rank, step)
            return view

    async def submit_embeddings(
        self,
        job_id: str,
        rank: int,
        region_id: int,
        indices: np.ndarray,
        embeddings: np.ndarray,
        losses: np.ndarray,
    ) -> None:
        job = self._job(job_id)
        async with job.changed:
            if job.state.receive_embeddings(rank, region_id, indices, embeddings, losses):
                job.embedded_at = time.monotonic()
                self._ensure_selection(job)
            job.changed.notify_all()

    def _ensure_selection(self, job: _Job) -> None:
        """Start the region's selection unless it is already running."""
        if job.selecting is None or job.selecting.done():
            job.selecting = asyncio.create_task(self._select(job))

    async def _select(self, job: _Job) -> None:
        async with job.lock:
            region = job.state.region
            if region is None or region.phase is not Phase.SELECTING:
                return
            region_id = region.region_id
            request = job.state.selection_request()
        try:
            result = await self.selector.select(request)
        except Exception:
            log.exception("selection of job %s region %d failed", job.state.job_id, region_id)
            return  # the next waiter starts it again
        async with job.changed:
            region = job.state.region
            if region is not None and region.region_id == region_id:
                job.state.complete_selection(region_id, result)
                job.telemetry.record_selection(SelectionEvent(
                    region_id=region_id, at=time.time(),
                    seconds=time.monotonic() - job.embedded_at,
                    problems=len(request.budgets), fallback=False,
                ))  # fmt: skip
                job.changed.notify_all()

    # -------------------------------------------------------------------------- checks
    async def report_check(self, job_id: str, rank: int, report: CheckReport) -> CheckDecision:
        """Record a rank's check; return the decision once every rank has reported."""
        job = self._job(job_id)
        async with job.changed:
            decision = job.state.record_check(rank, report)
            job.telemetry.rank(rank).advance(report.step + 1)
            if decision is not None:
                job.changed.notify_all()
                return decision
            region = job.state.region
            assert region is not None
            await self._wait(job, lambda: report.step in region.decisions, "the other ranks")
            return region.decisions[report.step]

    async def _wait(self, job: _Job, ready, what: str) -> None:
        try:
            await asyncio.wait_for(job.changed.wait_for(ready), self.wait_s)
        except TimeoutError:
            raise Unavailable(f"timed out after {self.wait_s:.0f} s waiting for {what}") from None

    async def close(self) -> None:
        for job in self._jobs.values():
            if job.selecting is not None:
                job.selecting.cancel()
        self.selector.close()
