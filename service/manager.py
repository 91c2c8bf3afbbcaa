"""The coordinator's core: many jobs, each a :class:`JobState` behind its own lock.

Async throughout, so that one event loop serves many ranks and jobs: waiting for a peer's
check report or for a selection never blocks anybody else. The gRPC servicer and the
in-process facade (:mod:`crest.service.local`) both call this class and nothing else.

Durability: every accepted change is journaled to the :class:`StateStore` before the call
returns, so a restarted manager (:meth:`JobManager.start`) resumes every job exactly. If the
store fails after the in-memory state changed, the job is marked stale, the call fails with
:class:`Unavailable`, and the job is rebuilt from the store before its next use: memory never
runs ahead of what was acknowledged. Failures that retrying cannot cure say so: a job the store
lost (a Redis restarted empty) fails with :class:`DataLoss` and is forgotten; a job whose state
is over the store's value limit fails with :class:`ResourceExhausted` and holds health at
NOT_SERVING until a write of it succeeds or it is deleted.

Lifecycle: :meth:`JobManager.delete_job` removes a job from memory and from the store; with
``finished_ttl_s`` set, finished jobs are deleted that long after they finished (the finish
time is stored, so the clock survives restarts).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

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
from crest.proto.errors import (
    CrestError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from crest.service import journal
from crest.service.codec import pack, unpack
from crest.service.job import JobState, Phase, Upload
from crest.service.store import MemoryStore, StateStore
from crest.service.telemetry import JobTelemetry, SelectionEvent
from crest.worker.selector import SelectionResult, Selector

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WAIT_S = 60.0
DEFAULT_SELECTION_TIMEOUT_S = 30.0
SNAPSHOT_EVERY = 64  # journal events between snapshots
MAX_EXPIRY_PERIOD_S = 60.0  # longest pause between two sweeps for expired jobs


@dataclass
class _Job:
    state: JobState
    labels_digest: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Condition = field(init=False)
    selecting: asyncio.Task[None] | None = None
    telemetry: JobTelemetry = field(default_factory=JobTelemetry)
    embedded_at: float = 0.0  # monotonic time the current region's last embedding arrived
    journal_length: int = 0
    stale: bool = False  # memory may hold changes the store does not: reload first
    finished_at: float | None = None  # Unix time the job was first seen finished
    gone: CrestError | None = None  # deleted or lost: what calls that still hold it raise

    def __post_init__(self) -> None:
        self.changed = asyncio.Condition(self.lock)


def _labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


class JobManager:
    """Jobs, their state machines, their storage and the selector that serves them.

    Args:
        selector: runs each region's selection problems.
        store: where jobs are journaled (default: this process's memory).
        wait_s: the longest a call waits for peers or for selection before it fails with
            :class:`Unavailable` (callers retry; every call is idempotent).
        selection_timeout_s: past this, a region gets stratified random batches instead of
            coresets (flagged in its statistics): no job ever hangs on the selector.
        snapshot_every: journal events between snapshots (bounds replay at restart).
        finished_ttl_s: delete finished jobs this long after they finished; 0 keeps them.
    """

    def __init__(
        self,
        selector: Selector,
        store: StateStore | None = None,
        *,
        wait_s: float = DEFAULT_WAIT_S,
        selection_timeout_s: float = DEFAULT_SELECTION_TIMEOUT_S,
        snapshot_every: int = SNAPSHOT_EVERY,
        finished_ttl_s: float = 0.0,
    ) -> None:
        self.selector = selector
        self.store = store if store is not None else MemoryStore()
        self.wait_s = wait_s
        self.selection_timeout_s = selection_timeout_s
        self.snapshot_every = snapshot_every
        self.finished_ttl_s = finished_ttl_s
        self._jobs: dict[str, _Job] = {}
        self._unwritable: dict[str, str] = {}  # job id -> why its state cannot be stored
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load every job the store holds (after a restart); start expiring finished jobs."""
        finished = await self.store.finished_times()
        for job_id in await self.store.job_ids():
            state, length = await self._load(job_id)
            job = _Job(state, _labels_digest(state.pool.labels), journal_length=length)
            self._jobs[job_id] = job
            job.finished_at = finished.get(job_id)
            await self._note_finished(job)  # finished before its time was recorded
            log.info("resumed job %s at step %d", job_id, state.status().step)
        if self.finished_ttl_s > 0:
            self._expiry = asyncio.create_task(self._expire_loop())

    async def _load(self, job_id: str) -> tuple[JobState, int]:
        stored = await self.store.load(job_id)
        if stored is None:
            raise NotFound(f"job {job_id!r} is not in the store")
        state = JobState.from_state(unpack(stored.snapshot))
        for event in stored.log:
            journal.replay(state, event)
        return state, len(stored.log)

    async def healthy(self) -> bool:
        """True when the store and the selector answer and every job's state can be stored."""
        store_ok, selector_ok = await asyncio.gather(self.store.ping(), self.selector.healthy())
        return bool(store_ok and selector_ok and not self._unwritable)

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        for job in self._jobs.values():
            if job.selecting is not None:
                job.selecting.cancel()
        self.selector.close()
        await self.store.close()

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
        state = JobState(job_id, config, labels)
        try:
            await self.store.create(job_id, pack(state.to_state()))
        except ResourceExhausted:  # too large to store: permanent, and nothing was created
            raise
        except Exception as err:
            raise Unavailable(f"the state store failed: {err}") from None
        self._jobs[job_id] = _Job(state, digest)
        log.info("created job %s: N=%d C=%d steps=%d", job_id, config.num_examples,
                 config.num_classes, config.total_steps)  # fmt: skip
        return job_id

    def job_ids(self) -> list[str]:
        return list(self._jobs)

    def finished_at(self, job_id: str) -> float | None:
        """Unix time the job was first seen finished (None while it runs)."""
        return self._job(job_id).finished_at

    async def delete_job(self, job_id: str) -> bool:
        """Remove a job from memory and from the store; False if there was no such job.

        Idempotent: deleting an unknown job changes nothing and returns False. Calls waiting
        on the job (for peers or for selection) fail with :class:`NotFound`.

        Raises:
            Unavailable: the store failed; the job is unchanged (retry).
        """
        job = self._jobs.get(job_id)
        if job is None:
            return False
        async with job.lock:
            if job.gone is not None:  # deleted while this call waited for the lock
                return False
            try:
                await self.store.delete(job_id)
            except Exception as err:
                raise Unavailable(f"the state store failed: {err}") from None
            self._forget(job, NotFound(f"job {job_id!r} was deleted"))
        log.info("deleted job %s", job_id)
        return True

    async def expire_finished(self, now: float | None = None) -> list[str]:
        """Delete the jobs that finished ``finished_ttl_s`` or more before ``now``."""
        if self.finished_ttl_s <= 0:
            return []
        now = time.time() if now is None else now
        due = [
            job_id
            for job_id, job in list(self._jobs.items())
            if job.finished_at is not None and now - job.finished_at >= self.finished_ttl_s
        ]
        expired = []
        for job_id in due:
            try:
                if await self.delete_job(job_id):
                    expired.append(job_id)
                    log.info("job %s expired (finished over %.0f s ago)", job_id,
                             self.finished_ttl_s)  # fmt: skip
            except Unavailable as err:  # the next sweep tries again
                log.warning("could not expire job %s: %s", job_id, err)
        return expired

    async def _expire_loop(self) -> None:
        period = min(max(self.finished_ttl_s / 4, 0.05), MAX_EXPIRY_PERIOD_S)
        while True:
            await asyncio.sleep(period)
            await self.expire_finished()

    def _forget(self, job: _Job, gone: CrestError) -> None:
        """Drop a deleted or lost job from memory (call with its lock held)."""
        job_id = job.state.job_id
        job.gone = gone
        if self._jobs.get(job_id) is job:
            del self._jobs[job_id]
        self._unwritable.pop(job_id, None)
        if job.selecting is not None and job.selecting is not asyncio.current_task():
            job.selecting.cancel()
        job.changed.notify_all()  # waiters see ``gone`` and fail

    def _job(self, job_id: str) -> _Job:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NotFound(f"unknown job {job_id!r}") from None

    async def _fresh(self, job: _Job) -> None:
        """Check the job still exists and rebuild it from the store if stale (call with the
        job's lock held)."""
        if job.gone is not None:
            raise type(job.gone)(*job.gone.args)
        if job.stale:
            try:
                job.state, job.journal_length = await self._load(job.state.job_id)
            except NotFound:
                raise self._lost(job) from None
            except Exception as err:
                raise Unavailable(f"the state store failed: {err}") from None
            job.stale = False

    def _lost(self, job: _Job) -> DataLoss:
        job_id = job.state.job_id
        error = DataLoss(
            f"the state store lost job {job_id!r} (restarted without its data?): create the "
            "job again"
        )
        log.error("%s", error)
        self._forget(job, error)
        return error

    async def _journal(self, job: _Job, event: bytes) -> None:
        """Make one applied change durable before it is acknowledged.

        When a snapshot is due it is written instead of the event (it holds the event's
        effect), so that a write that fails leaves the store exactly as it was.
        """
        job_id = job.state.job_id
        try:
            if job.journal_length + 1 >= self.snapshot_every:
                await self.store.snapshot(job_id, pack(job.state.to_state()))
                job.journal_length = 0
            else:
                job.journal_length = await self.store.append(job_id, event)
        except DataLoss:
            raise self._lost(job) from None
        except ResourceExhausted as err:  # permanent for this job: say so, and in health
            job.stale = True
            if job_id not in self._unwritable:
                log.error("%s; health is NOT_SERVING until it is deleted", err)
            self._unwritable[job_id] = str(err)
            raise
        except Exception as err:
            job.stale = True
            raise Unavailable(f"the state store failed: {err}") from None
        self._unwritable.pop(job_id, None)
        await self._note_finished(job)

    async def _note_finished(self, job: _Job) -> None:
        """Record when a job finished (its expiry clock), once."""
        if job.finished_at is not None or not job.state.finished:
            return
        job.finished_at = time.time()
        try:
            await self.store.mark_finished(job.state.job_id, job.finished_at)
        except Exception as err:  # a restart would start the clock again: harmless
            log.warning("could not store the finish time of job %s: %s",
                        job.state.job_id, err)  # fmt: skip

    async def open_session(self, job_id: str, rank: int) -> SessionInfo:
        job = self._job(job_id)
        async with job.lock:
            await self._fresh(job)
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
                committed_seq=job.state.committed_seq[rank],
            )

    async def job_status(self, job_id: str) -> JobStatus:
        job = self._job(job_id)
        async with job.lock:
            await self._fresh(job)
            return job.state.status()

    def telemetry(self, job_id: str) -> JobTelemetry:
        """The job's live telemetry (read-only by convention; owned by the manager)."""
        return self._job(job_id).telemetry

    # ------------------------------------------------------------------------- regions
    async def get_region(
        self, job_id: str, rank: int, step: int, timeout: float | None = None
    ) -> RegionView:
        """The region holding ``step``; waits (up to the timeout) while selection runs."""
        job = self._job(job_id)
        async with job.changed:
            await self._fresh(job)
            view = await self._view(job, rank, step)
            job.telemetry.rank(rank).advance(step)
            if view.status is RegionStatus.SELECTING:
                region = job.state.region
                if region is not None and region.phase is Phase.SELECTING:
                    self._ensure_selection(job)  # e.g. after a failed attempt or a restart
                await self._wait(
                    job,
                    lambda: job.state.view(rank, step).status is not RegionStatus.SELECTING,
                    "selection",
                    timeout,
                )
                view = job.state.view(rank, step)
            return view

    async def _view(self, job: _Job, rank: int, step: int) -> RegionView:
        before = None if job.state.region is None else job.state.region.region_id
        view = job.state.view(rank, step)
        after = None if job.state.region is None else job.state.region.region_id
        if after != before:
            await self._journal(job, journal.opened(rank, step))
        return view

    async def submit_embeddings(
        self,
        job_id: str,
        rank: int,
        region_id: int,
        indices: np.ndarray,
        embeddings: np.ndarray,
        losses: np.ndarray,
        seq: int | None = None,
    ) -> int:
        """Store a chunk of a rank's embeddings; returns the rank's committed sequence."""
        job = self._job(job_id)
        async with job.changed:
            await self._fresh(job)
            state = job.state
            outcome = state.receive_embeddings(rank, region_id, indices, embeddings, losses, seq)
            if outcome is not Upload.DUPLICATE:
                await self._journal(
                    job, journal.embedded(rank, region_id, seq, indices, embeddings, losses)
                )
            if outcome is Upload.COMPLETE:
                job.embedded_at = time.monotonic()
                self._ensure_selection(job)
            job.changed.notify_all()
            return state.committed_seq[rank]

    def _ensure_selection(self, job: _Job) -> None:
        """Start the region's selection unless it is already running."""
        if job.selecting is None or job.selecting.done():
            job.selecting = asyncio.create_task(self._select(job))

    async def _select(self, job: _Job) -> None:
        async with job.lock:
            region = job.state.region
            if job.stale or job.gone or region is None or region.phase is not Phase.SELECTING:
                return
            region_id = region.region_id
            request = job.state.selection_request()
        result: SelectionResult | None = None
        try:
            result = await asyncio.wait_for(self.selector.select(request), self.selection_timeout_s)
        except Exception as err:  # the region falls back to random batches; never hang
            log.warning("selection of job %s region %d failed (%s): random batches instead",
                        job.state.job_id, region_id, err or type(err).__name__)  # fmt: skip
        async with job.changed:
            region = job.state.region
            if job.stale or job.gone or region is None or region.region_id != region_id:
                return
            if region.phase is not Phase.SELECTING:
                return
            fallback = result is None
            try:
                if result is not None:
                    try:
                        job.state.complete_selection(region_id, result)
                        await self._journal(job, journal.selected(region_id, result))
                    except InvalidArgument as err:
                        log.error("selector answered region %d wrongly (%s)", region_id, err)
                        fallback = True
                if fallback:
                    job.state.complete_fallback(region_id)
                    await self._journal(job, journal.fell_back(region_id))
            except CrestError as err:  # stale, lost or unwritable: the next call says which
                log.warning("could not journal region %d: %s", region_id, err)
                return
            job.telemetry.record_selection(
                SelectionEvent(
                    region_id=region_id,
                    at=time.time(),
                    seconds=time.monotonic() - job.embedded_at,
                    problems=len(request.budgets),
                    fallback=fallback,
                )
            )
            job.changed.notify_all()

    # -------------------------------------------------------------------------- checks
    async def report_check(
        self, job_id: str, rank: int, report: CheckReport, timeout: float | None = None
    ) -> CheckDecision:
        """Record a rank's check; return the decision once every rank has reported."""
        job = self._job(job_id)
        async with job.changed:
            await self._fresh(job)
            region = job.state.region
            known = region is not None and report.step in region.decisions
            decision = job.state.record_check(rank, report)
            if not known:
                await self._journal(job, journal.checked(rank, report))
            job.telemetry.rank(rank).advance(report.step + 1)
            if decision is not None:
                job.changed.notify_all()
                return decision
            region = job.state.region
            assert region is not None
            await self._wait(job, lambda: report.step in region.decisions, "the other ranks",
                             timeout)  # fmt: skip
            return region.decisions[report.step]

    async def _wait(
        self, job: _Job, ready: Callable[[], bool], what: str, timeout: float | None
    ) -> None:
        limit = self.wait_s if timeout is None else min(timeout, self.wait_s)
        try:
            await asyncio.wait_for(job.changed.wait_for(lambda: job.gone is not None or ready()),
                                   limit)  # fmt: skip
        except TimeoutError:
            raise Unavailable(f"timed out after {limit:.1f} s waiting for {what}") from None
        if job.gone is not None:
            raise type(job.gone)(*job.gone.args)
