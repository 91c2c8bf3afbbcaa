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

The event loop only waits: a job's heavy steps (building it, rebuilding it from the store,
opening a region, receiving an upload, assembling a selection, packing a snapshot) run on a
worker thread while the caller holds that job's lock (:func:`_off_loop`), so the job's
transitions stay serial and journaled in order while other jobs' calls are answered. A
transition and its journal write finish together even if the caller is cancelled meanwhile
(:func:`_to_the_end`): a retry after a deadline finds the change made, not half made. numpy
releases the GIL for large array work; the Python loops left between (per subset and class,
bounded by the config's region limits, :data:`crest.proto.contract.MAX_REGION_PROBLEMS`) give
the loop the GIL back every switch interval.

Bounded state: a job's live state keeps its last few closed regions
(:data:`crest.service.job.LIVE_CLOSED_REGIONS`); older ones go to the store's archive, one
value each, before the change that closed them is journaled, and the archive keeps the last
``archived_regions`` of them. A trainer resuming into an archived region (its view, or a
check it reports again) is answered from the archive; into an expired one, with
:class:`FailedPrecondition`. So snapshots and the stored bytes of a job stay O(N).

Replicas: with ``leases`` (:class:`crest.service.leases.RedisLeases`), several managers share
one Redis and each job is served by the replica holding its lease. :meth:`JobManager.start`
then loads nothing: :meth:`JobManager.claim` (called by the gRPC servicer before every call
naming a job) takes a free or expired lease and loads the job from the store, or fails with
:class:`NotOwner` naming the replica that holds it. A background task renews the leases of
the jobs in memory every third of the TTL and drops a job whose lease it lost; the store is
fenced, so a job's state is written only while its lease is held. Without leases nothing
changes: one manager owns every job in the store.

Lifecycle: :meth:`JobManager.delete_job` removes a job from memory and from the store; with
``finished_ttl_s`` set, finished jobs are deleted that long after they finished (the finish
time is stored, so the clock survives restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

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
    NotOwner,
    ResourceExhausted,
    SelectionCrashed,
    Unavailable,
)
from crest.service import journal
from crest.service.codec import Pieces, join, pack, split, unpack
from crest.service.job import ArchivedRegion, JobState, Phase, Region, Upload, UploadChunk
from crest.service.leases import RedisLeases
from crest.service.region import region_from_state, region_to_state
from crest.service.store import MemoryStore, StateStore, StoredJob, StoredRegion
from crest.service.telemetry import JobTelemetry, SelectionEvent
from crest.worker.problems import EmbedRequest, EmbedResult, SelectionResult, Selector

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WAIT_S = 60.0
DEFAULT_SELECTION_TIMEOUT_S = 30.0
SNAPSHOT_EVERY = 64  # journal events between snapshots
# Stored snapshots cut arrays into pieces of about this size: every value stays small (well
# under a 1 MiB CREST_STORE_MAX_VALUE_MB), and a snapshot rewrites only the pieces that changed.
PIECE_BYTES = 512 * 2**10
ARCHIVED_REGIONS = 256  # closed regions a job's archive keeps (resumes into older ones fail)
MAX_JOB_ID_LENGTH = 128


def check_job_id(job_id: str) -> str:
    """``job_id`` if it is 1-128 printable characters, else :class:`InvalidArgument`.

    Every path by which a job id enters checks it before anything else, so a huge id is
    refused early and never echoed into an error message (gRPC carries the message in
    metadata of 8 KiB at most: an 8 KiB id would come back as RESOURCE_EXHAUSTED).
    """
    if not 0 < len(job_id) <= MAX_JOB_ID_LENGTH or not job_id.isprintable():
        shown = job_id if len(job_id) <= 40 else f"{job_id[:20]}... ({len(job_id)} characters)"
        raise InvalidArgument(
            f"job_id must be 1-{MAX_JOB_ID_LENGTH} printable characters, got {shown!r}"
        )
    return job_id


MAX_EXPIRY_PERIOD_S = 60.0  # longest pause between two sweeps for expired jobs


@dataclass
class _Job:
    state: JobState
    labels_digest: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Condition = field(init=False)
    work: dict[int, asyncio.Task[None]] = field(default_factory=dict)  # region id -> its
    # embedding (service side) and selection
    telemetry: JobTelemetry = field(default_factory=JobTelemetry)
    embedded_at: dict[int, float] = field(default_factory=dict)  # region id -> monotonic time
    # its last embedding arrived
    model: ServedModel | None = None  # service side: published by the trainer, in memory only
    weights: dict[int, np.ndarray] = field(default_factory=dict)  # step -> flat float32
    journal_length: int = 0
    archived: Region | None = None  # the archived region read last (a resuming rank's)
    stale: bool = False  # memory may hold changes the store does not: reload first
    finished_at: float | None = None  # Unix time the job was first seen finished
    gone: CrestError | None = None  # deleted, lost, or (strict mode) hit a selection bug: what
    # calls that still hold it raise

    def __post_init__(self) -> None:
        self.changed = asyncio.Condition(self.lock)

    def cancel_work(self) -> None:
        """Stop the job's embedding and selection tasks (not the caller's own)."""
        for task in self.work.values():
            if task is not asyncio.current_task():
                task.cancel()
        self.work.clear()


@dataclass(frozen=True)
class ServedModel:
    """A service-side job's model: the artifact the selectors run and every example's inputs."""

    model_id: str
    artifact: bytes
    inputs: np.ndarray  # (N, ...) float32
    num_weights: int


KEPT_WEIGHT_VERSIONS = 4  # published weight versions a job keeps (only the latest are used)


def _labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).data).hexdigest()


async def _to_the_end(work: Awaitable[T]) -> T:
    """Await ``work`` to its end even if the caller is cancelled meanwhile.

    A worker thread cannot be stopped, and a change must not stop between the state machine
    and the journal: a cancelled caller (a client's deadline, a retry) waits for ``work``
    while it keeps holding the job's lock, so nobody sees half a transition and a retry finds
    the change made and journaled; then the cancellation goes on.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):  # cancelled again: still wait
                await asyncio.wait([task])
        raise


async def _off_loop(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` on a worker thread, while the event loop serves everybody else.

    Call it with the lock of the job that ``fn`` reads or changes held: the lock is what keeps
    the job's transitions serial and in journal order.
    """
    return await _to_the_end(asyncio.to_thread(fn, *args))


def _rebuild(stored: StoredJob) -> JobState:
    """A job's state from its snapshot and journal (heavy: regions are drawn again).

    Consumes ``stored.pieces``: once joined they are dropped, before the state copies the
    joined arrays, so that a restart holds two copies of the per-example state at most.
    """
    tree = join(unpack(stored.snapshot), stored.pieces)
    stored.pieces = {}
    state = JobState.from_state(tree)
    del tree
    for event in stored.log:
        journal.replay(state, event)
    state.leaving.clear()  # archived before their events were journaled
    return state


def _new_job(
    job_id: str, config: JobConfig, labels: np.ndarray
) -> tuple[JobState, tuple[bytes, Pieces]]:
    """A new job's state and its first snapshot."""
    state = JobState(job_id, config, labels)
    return state, _stored_snapshot(state)


def _checked_upload(
    state: JobState, rank: int, region_id: int, chunks: list[UploadChunk]
) -> tuple[Upload, bytes | None]:
    """Receive an upload and encode its journal event (None for a duplicate)."""
    outcome = state.receive_upload(rank, region_id, chunks)
    if outcome is Upload.DUPLICATE:
        return outcome, None
    return outcome, journal.uploaded(rank, region_id, chunks)


class JobManager:
    """Jobs, their state machines, their storage and the selector that serves them.

    Args:
        selector: runs each region's selection problems.
        store: where jobs are journaled (default: this process's memory).
        wait_s: the longest a call waits for peers or for selection before it fails with
            :class:`Unavailable` (callers retry; every call is idempotent).
        selection_timeout_s: the deadline of each selection, passed to the selector; past it,
            a region gets stratified random batches instead of coresets (flagged in its
            statistics): no job ever hangs on the selector.
        strict: an unexpected selection error (a bug, not a timeout or a lost worker) fails
            the job's waiting calls with :class:`SelectionCrashed` instead of falling back.
            Either way it is logged with its type and counted in the job's telemetry.
        snapshot_every: journal events between snapshots (bounds replay at restart).
        archived_regions: closed regions each job's archive keeps for trainers that resume
            from a checkpoint; a resume into an older region fails with
            :class:`FailedPrecondition`.
        finished_ttl_s: delete finished jobs this long after they finished; 0 keeps them.
        leases: one of several replicas sharing a Redis store (fenced by these leases): serve
            only the jobs whose lease this replica holds (see :meth:`claim`).
    """

    def __init__(
        self,
        selector: Selector,
        store: StateStore | None = None,
        *,
        wait_s: float = DEFAULT_WAIT_S,
        selection_timeout_s: float = DEFAULT_SELECTION_TIMEOUT_S,
        snapshot_every: int = SNAPSHOT_EVERY,
        archived_regions: int = ARCHIVED_REGIONS,
        strict: bool = False,
        finished_ttl_s: float = 0.0,
        leases: RedisLeases | None = None,
    ) -> None:
        self.selector = selector
        self.store = store if store is not None else MemoryStore()
        self.wait_s = wait_s
        self.selection_timeout_s = selection_timeout_s
        self.snapshot_every = snapshot_every
        if archived_regions < 1:
            raise ValueError(f"archived_regions must be >= 1, got {archived_regions}")
        self.archived_regions = archived_regions
        self.strict = strict
        self.finished_ttl_s = finished_ttl_s
        self._jobs: dict[str, _Job] = {}
        self._unwritable: dict[str, str] = {}  # job id -> why its state cannot be stored
        self._expiry: asyncio.Task[None] | None = None
        # Held from "is the id free?" to "registered": a retried CreateJob that overtakes its
        # own first attempt (which is still storing the job) must find it, not create it twice.
        self._creating = asyncio.Lock()
        self.leases = leases
        self._claims: dict[str, asyncio.Lock] = {}  # job id -> held while it is being claimed
        self._renewal: asyncio.Task[None] | None = None
        self._drops: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Load every job the store holds (after a restart); start expiring finished jobs.

        With leases, load nothing (each job is loaded by the replica that claims it) and start
        renewing the leases of the jobs claimed."""
        if self.finished_ttl_s > 0:
            self._expiry = asyncio.create_task(self._expire_loop())
        if self.leases is not None:
            self._renewal = asyncio.create_task(self._renew_loop(self.leases))
            return
        finished = await self.store.finished_times()
        for job_id in await self.store.job_ids():
            state, length = await self._load(job_id)
            digest = await _off_loop(_labels_digest, state.pool.labels)
            job = _Job(state, digest, journal_length=length)
            self._jobs[job_id] = job
            job.finished_at = finished.get(job_id)
            await self._note_finished(job)  # finished before its time was recorded
            log.info("resumed job %s at step %d", job_id, state.status().step)

    async def _load(self, job_id: str) -> tuple[JobState, int]:
        stored = await self.store.load(job_id)
        if stored is None:
            raise NotFound(f"job {job_id!r} is not in the store")
        return await _off_loop(_rebuild, stored), len(stored.log)

    async def healthy(self) -> bool:
        """True when the store and the selector answer and every job's state can be stored."""
        store_ok, selector_ok = await asyncio.gather(self.store.ping(), self.selector.healthy())
        return bool(store_ok and selector_ok and not self._unwritable)

    async def close(self) -> None:
        """Stop; with leases, give the jobs' leases up first, so that other replicas take the
        jobs over at once (every acknowledged change is stored already)."""
        for task in (self._expiry, self._renewal, *self._drops):
            if task is not None:
                task.cancel()
        for job in self._jobs.values():
            job.cancel_work()
        if self.leases is not None and self._jobs:
            try:
                await self.leases.release(list(self._jobs))
            except Exception as err:  # they expire after the TTL instead
                log.warning("could not release the leases of %d jobs: %s", len(self._jobs), err)
        self.selector.close()
        await self.store.close()

    # ------------------------------------------------------------------------ replicas
    async def claim(self, job_id: str) -> None:
        """With leases, make this replica the owner of ``job_id`` before a call serves it.

        A job in memory is held (the renewal drops a job whose lease was lost). Otherwise take
        its lease if it is free or expired, and load the job from the store if it is there:
        a dead replica's job is taken over exactly where its journal ends. A job the store
        does not hold keeps the fresh lease for :meth:`create_job` (an unknown job's call
        fails with :class:`NotFound` as usual; the unrenewed lease expires). Without leases,
        nothing to do.

        Raises:
            NotOwner: another live replica holds the lease (its address in ``owner``).
            Unavailable: the store failed.
        """
        if self.leases is None or check_job_id(job_id) in self._jobs:
            return
        lock = self._claims.setdefault(job_id, asyncio.Lock())
        try:
            async with lock:
                if job_id not in self._jobs:
                    await self._take_over(self.leases, job_id)
        finally:
            self._claims.pop(job_id, None)  # a later claim finds the job, or tries again

    async def _take_over(self, leases: RedisLeases, job_id: str) -> None:
        try:
            holder = await leases.acquire(job_id)
            if holder is not None:
                raise NotOwner(
                    f"job {job_id!r} is owned by the coordinator replica at {holder.address} "
                    f"({holder.token.split('/')[0]}; its lease runs {holder.expires_in_s:.1f} s "
                    "more unless renewed)",
                    holder.address,
                )
            stored = await self.store.load(job_id)
            if stored is None:
                return
            state = await _off_loop(_rebuild, stored)
            digest = await _off_loop(_labels_digest, state.pool.labels)
            finished = (await self.store.finished_times()).get(job_id)
        except CrestError:
            raise
        except Exception as err:
            raise Unavailable(f"the state store failed: {err}") from None
        if job_id in self._jobs:  # registered by a claim that overlapped this one
            return
        job = _Job(state, digest, journal_length=len(stored.log))
        job.finished_at = finished
        self._jobs[job_id] = job
        log.info("replica %s took job %s over at step %d", leases.replica_id, job_id,
                 state.status().step)  # fmt: skip

    async def _renew_loop(self, leases: RedisLeases) -> None:
        """Renew the leases of the jobs in memory every third of the TTL; drop the jobs whose
        lease was lost, and all of them once renewal has failed for a whole TTL (their leases
        have expired: another replica may own them)."""
        period = leases.ttl_s / 3
        renewed = time.monotonic()  # when the last successful renewal was sent
        while True:
            await asyncio.sleep(period)
            job_ids, sent = list(self._jobs), time.monotonic()
            try:
                kept = await leases.renew(job_ids)
                renewed = sent
            except Exception as err:
                log.warning("could not renew the leases of %d jobs: %s", len(job_ids), err)
                if time.monotonic() - renewed < leases.ttl_s:
                    continue
                kept = set()
            for job_id in job_ids:
                if job_id not in kept:
                    self._drop(job_id)

    def _drop(self, job_id: str) -> None:
        """Forget a job whose lease this replica lost: new calls claim it again (and are
        redirected to its owner); calls in progress fail once they hold its lock."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        log.warning("replica lost the lease of job %s: dropped", job_id)
        error = NotOwner(f"this coordinator replica lost the lease of job {job_id!r}")

        async def forget() -> None:
            async with job.lock:  # not in the renewal loop: a long call would hold it up
                self._forget(job, error)

        task = asyncio.create_task(forget())
        self._drops.add(task)
        task.add_done_callback(self._drops.discard)

    # ---------------------------------------------------------------------------- jobs
    async def create_job(
        self, config: JobConfig | dict[str, Any], labels: np.ndarray, job_id: str | None = None
    ) -> str:
        """Create a job, or return ``job_id`` if it exists with the same config and labels.

        Creation is idempotent only for a named job: without ``job_id`` every call creates a
        new job (the remote client therefore names every job it creates).

        Raises:
            InvalidArgument: a bad job id, config (listing the fields at fault) or labels.
            FailedPrecondition: ``job_id`` exists with another config or labels.
        """
        if job_id is not None:
            check_job_id(job_id)
        # Validated again even when it is a JobConfig: model_copy(update=...) skips validation.
        raw = config.model_dump() if isinstance(config, JobConfig) else config
        config = JobConfig.model_validate(raw)  # raises InvalidArgument, not ValidationError
        labels = np.asarray(labels)
        integers = np.issubdtype(labels.dtype, np.integer)
        digest = await _off_loop(_labels_digest, labels) if integers else ""
        if self.leases is not None:  # the lease, and the job if another replica created it
            job_id = job_id or uuid.uuid4().hex[:16]
            await self.claim(job_id)
        async with self._creating:
            if job_id is not None and job_id in self._jobs:
                existing = self._jobs[job_id]
                if existing.state.config != config or existing.labels_digest != digest:
                    raise FailedPrecondition(f"job {job_id!r} exists with another config or labels")
                return job_id
            job_id = job_id or uuid.uuid4().hex[:16]
            state, (head, pieces) = await _off_loop(_new_job, job_id, config, labels)
            try:
                await self.store.create(job_id, head, pieces)
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
        for job_id in due + await self._unowned_due(now):
            try:
                if await self.delete_job(job_id) or await self._delete_unowned(job_id):
                    expired.append(job_id)
                    log.info("job %s expired (finished over %.0f s ago)", job_id,
                             self.finished_ttl_s)  # fmt: skip
            except Unavailable as err:  # the next sweep tries again
                log.warning("could not expire job %s: %s", job_id, err)
        return expired

    async def _unowned_due(self, now: float) -> list[str]:
        """With leases: the stored jobs due to expire that this replica does not hold (their
        owner died after they finished, and no trainer came back to them)."""
        if self.leases is None:
            return []
        try:
            finished = await self.store.finished_times()
        except Exception as err:
            log.warning("could not read the finish times: %s", err)
            return []
        return [job_id for job_id, at in finished.items()
                if job_id not in self._jobs and now - at >= self.finished_ttl_s]  # fmt: skip

    async def _delete_unowned(self, job_id: str) -> bool:
        """Delete a stored job this replica does not hold, if its lease is free (taken for the
        deletion, which the store fences); False if another replica holds it."""
        if self.leases is None or job_id in self._jobs:
            return False
        try:
            if await self.leases.acquire(job_id) is not None:
                return False  # its owner is alive: its own sweep expires it
            return await self.store.delete(job_id)
        except Exception as err:
            raise Unavailable(f"the state store failed: {err}") from None

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
        job.cancel_work()
        job.changed.notify_all()  # waiters see ``gone`` and fail

    def _job(self, job_id: str) -> _Job:
        try:
            return self._jobs[check_job_id(job_id)]
        except KeyError:
            raise NotFound(f"unknown job {job_id!r}") from None

    async def _fresh(self, job: _Job) -> None:
        """Check the job still exists (and is not stopped on a selection bug in strict mode)
        and rebuild it from the store if stale (call with the job's lock held)."""
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
        effect), so that a write that fails leaves the store exactly as it was. Closed
        regions the change moved out of the live state are archived first, so that the
        stored state never lacks one (a retried archive write stores the same bytes).
        """
        job_id = job.state.job_id
        try:
            await self._archive(job)
            if job.journal_length + 1 >= self.snapshot_every:
                head, pieces = await _off_loop(_stored_snapshot, job.state)
                await self.store.snapshot(job_id, head, pieces)
                job.journal_length = 0
            else:
                job.journal_length = await self.store.append(job_id, event)
        except asyncio.CancelledError:  # the change may or may not be stored: reload it
            job.stale = True
            raise
        except DataLoss:
            raise self._lost(job) from None
        except NotOwner as err:  # fenced: another replica owns the job now
            log.warning("%s: dropped", err)
            self._forget(job, err)
            raise
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

    async def _archive(self, job: _Job) -> None:
        """Write the closed regions that left the job's live state to the archive."""
        leaving = job.state.leaving
        while leaving:
            stored = await _off_loop(_pack_region, leaving[0])
            await self.store.archive(
                job.state.job_id, leaving[0].region_id, stored, self.archived_regions
            )
            leaving.pop(0)

    async def _archived(self, job: _Job, region_id: int) -> Region:
        """Closed region ``region_id`` from the archive (call with the job's lock held).

        Raises:
            FailedPrecondition: it expired: the trainer resumes from too old a checkpoint.
            Unavailable: the store failed.
        """
        if job.archived is not None and job.archived.region_id == region_id:
            return job.archived
        job_id = job.state.job_id
        try:
            stored = await self.store.archived(job_id, region_id)
        except Exception as err:
            raise Unavailable(f"the state store failed: {err}") from None
        if stored is None:
            raise FailedPrecondition(
                f"region {region_id} of job {job_id!r} has expired: the coordinator keeps the "
                f"last {self.archived_regions} closed regions of a job (archived_regions), and "
                f"the job is in region {job.state.regions_opened - 1}. The checkpoint is too "
                "old to resume from: use a more recent one"
            )
        job.archived = await _off_loop(_unpack_region, stored)
        return job.archived

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
                selection_side=job.state.side,
                num_examples=cfg.num_examples,
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
        self, job_id: str, rank: int, step: int, timeout: float | None = None, wait: bool = True
    ) -> RegionView:
        """The region holding ``step``; waits (up to the timeout) while selection runs, unless
        not ``wait`` (a later page of a region whose first page the caller has).

        On the service side it answers at once, with ``wants_model``/``wants_weights`` set,
        when the region waits for a model or weights this coordinator does not have (at the
        job's start, or after a restart): the trainer publishes them and asks again.
        """
        (view,) = await self.get_regions(job_id, rank, 1, step, timeout, wait)
        return view

    async def get_regions(
        self,
        job_id: str,
        first_rank: int,
        num_ranks: int,
        step: int,
        timeout: float | None = None,
        wait: bool = True,
    ) -> list[RegionView]:
        """:meth:`get_region` for ranks ``first_rank .. first_rank + num_ranks - 1`` at once
        (ranks that share one fetch): waits while any of them selects and none must embed.

        Raises:
            InvalidArgument: ``num_ranks < 1`` or a range outside the job's ranks.
            NotFound: no job ``job_id``.
        """
        job = self._job(job_id)
        world = job.state.config.world_size
        if num_ranks < 1 or first_rank < 0 or first_rank + num_ranks > world:
            raise InvalidArgument(
                f"ranks {first_rank} to {first_rank + num_ranks - 1} ({num_ranks} from "
                f"{first_rank}) are not within job {job_id!r}'s ranks 0 to {world - 1}"
            )
        ranks = range(first_rank, first_rank + num_ranks)
        async with job.changed:
            await self._fresh(job)
            views = await self._views(job, ranks, step)
            for rank in ranks:
                job.telemetry.rank(rank).advance(step)
            self._ensure_work(job)  # e.g. after opening a region, a failed attempt, a restart
            if _selecting(views) and wait:
                wants = self._wants(job)
                if wants is not None:
                    return [dataclasses.replace(v, wants_model=wants[0], wants_weights=wants[1])
                            for v in views]  # fmt: skip
                await self._wait(
                    job,
                    lambda: (
                        not _selecting([job.state.view(rank, step) for rank in ranks])
                        or self._wants(job) is not None
                    ),
                    lambda: _awaited_by_region(job.state),
                    timeout,
                )
                views = [job.state.view(rank, step) for rank in ranks]
            return views

    def _wants(self, job: _Job) -> tuple[bool, int] | None:
        """What the current region waits for and the job lacks: ``(model?, weights step)``
        (-1: no weights), or None."""
        region = job.state.region
        if region is None or region.phase is not Phase.EMBED or region.embedded_by != "service":
            return None
        version = region.weights_version
        missing = -1 if version in job.weights else version
        if job.model is None or missing >= 0:
            return job.model is None, missing
        return None

    async def _views(self, job: _Job, ranks: range, step: int) -> list[RegionView]:
        """The ranks' views of ``step``, opening (and journaling) its region first when it is
        due."""
        await _to_the_end(self._open(job, ranks[0], step))
        try:
            return [job.state.view(rank, step) for rank in ranks]
        except ArchivedRegion as archived:  # ranks resuming from a checkpoint
            region = await self._archived(job, archived.region_id)
            return [region.view(rank) for rank in ranks]

    async def _open(self, job: _Job, rank: int, step: int) -> None:
        if await _off_loop(job.state.open_region, rank, step):
            await self._journal(job, journal.opened(rank, step))

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
        """Store one chunk of a rank's embeddings; returns the rank's committed sequence."""
        chunk = UploadChunk(indices, embeddings, losses, seq)
        return await self.submit_upload(job_id, rank, region_id, [chunk])

    async def submit_upload(
        self, job_id: str, rank: int, region_id: int, chunks: list[UploadChunk]
    ) -> int:
        """Store an upload (a stream's chunks) all or nothing, journaled as one event; returns
        the rank's committed sequence (see :meth:`JobState.receive_upload`)."""
        job = self._job(job_id)
        async with job.changed:
            await self._fresh(job)
            await _to_the_end(self._receive(job, rank, region_id, chunks))
            return job.state.committed_seq[rank]

    async def _receive(
        self, job: _Job, rank: int, region_id: int, chunks: list[UploadChunk]
    ) -> None:
        """Apply and journal an upload; start selection when it completes the region."""
        outcome, event = await _off_loop(_checked_upload, job.state, rank, region_id, chunks)
        if event is not None:
            await self._journal(job, event)
        if outcome is Upload.COMPLETE:
            job.embedded_at[region_id] = time.monotonic()
            self._ensure_work(job)
        job.changed.notify_all()

    # ---------------------------------------------------------------------- service side
    async def publish_model(
        self,
        job_id: str,
        artifact: bytes,
        inputs: np.ndarray,
        num_weights: int,
        trainer_side: str = "",
    ) -> None:
        """A service-side job's model (a ``torch.export`` artifact of ``num_weights`` weights)
        and the inputs of all its examples; or, with ``trainer_side`` (the reason), none: the
        ranks embed from now on. Held in memory (a restart asks for it again). Idempotent.

        Raises:
            InvalidArgument: inputs that are not ``(N, ...)`` finite floats, an empty artifact.
            FailedPrecondition: the job embeds on the trainer side.
        """
        job = self._job(job_id)
        async with job.changed:
            await self._fresh(job)
            if trainer_side:
                if job.state.side == "service":
                    await _to_the_end(self._use_trainer_side(job, trainer_side))
                job.changed.notify_all()
                return
            if job.state.side != "service":
                raise FailedPrecondition(
                    f"job {job_id!r} embeds on the trainer side "
                    f"({job.state.side_reason or 'its config'}): it takes no model"
                )
            model = await _off_loop(_served_model, job.state.config, artifact, inputs, num_weights)
            if job.model is None or job.model.model_id != model.model_id:
                job.model = model
                log.info("job %s: model %s published (%d weights, inputs %s)", job_id,
                         model.model_id, num_weights, inputs.shape)  # fmt: skip
            self._ensure_work(job)
            job.changed.notify_all()

    async def _use_trainer_side(self, job: _Job, reason: str) -> None:
        await _off_loop(job.state.use_trainer_side, reason)
        job.cancel_work()
        await self._journal(job, journal.trainer_side(reason))
        log.warning("job %s: the trainer embeds from now on: %s", job.state.job_id, reason)

    async def publish_weights(self, job_id: str, version: int, weights: np.ndarray) -> None:
        """The model's weights before step ``version`` (flat float32). The first publication
        of a version counts; a repeat changes nothing.

        Raises:
            InvalidArgument: a step out of range, or weights that are not a finite vector of
                the model's size.
            FailedPrecondition: the job embeds on the trainer side.
        """
        job = self._job(job_id)
        async with job.changed:
            await self._fresh(job)
            total = job.state.config.total_steps
            if not 0 <= version <= total:
                raise InvalidArgument(f"weights version must lie in [0, {total}], got {version}")
            if job.state.side != "service":
                raise FailedPrecondition(f"job {job_id!r} embeds on the trainer side")
            if version in job.weights:
                return
            weights = np.asarray(weights)
            if weights.ndim != 1 or weights.dtype != np.float32:
                raise InvalidArgument(f"weights must be a float32 vector, got {weights.dtype}"
                                      f"{weights.shape}")  # fmt: skip
            if job.model is not None and len(weights) != job.model.num_weights:
                raise InvalidArgument(
                    f"the model has {job.model.num_weights} weights, got {len(weights)}"
                )
            if not await _off_loop(_all_finite, weights):
                raise InvalidArgument("weights contain NaN or Inf")
            job.weights[version] = weights
            for old in sorted(job.weights)[:-KEPT_WEIGHT_VERSIONS]:
                del job.weights[old]
            self._ensure_work(job)
            job.changed.notify_all()

    # --------------------------------------------------------------------------- selection
    def _ensure_work(self, job: _Job) -> None:
        """Start what the job's unfinished regions can have done now: the selectors'
        embeddings (service side, once the model and the weights are in) and selection."""
        if job.stale or job.gone is not None:
            return
        unfinished = {r.region_id: r for r in job.state.unfinished()}
        for region_id in [i for i in job.work if i not in unfinished]:
            del job.work[region_id]
        for region_id, region in unfinished.items():
            task = job.work.get(region_id)
            if task is not None and not task.done():
                continue
            if region.phase is Phase.SELECTING:
                job.work[region_id] = asyncio.create_task(self._select(job, region_id))
            elif (
                region.embedded_by == "service"
                and job.model is not None
                and region.weights_version in job.weights
            ):
                job.work[region_id] = asyncio.create_task(self._serve(job, region_id))

    async def _serve(self, job: _Job, region_id: int) -> None:
        """Embed a service-side region on the selectors, then select its coresets."""
        async with job.lock:
            region = job.state.unfinished_region(region_id)
            if job.stale or job.gone or region is None or region.phase is not Phase.EMBED:
                return
            model, version = job.model, region.weights_version
            weights = job.weights.get(version)
            if model is None or weights is None:  # dropped meanwhile: GetRegion asks again
                return
            request = await _off_loop(_embed_request, job.state, region, model, weights)
        result: EmbedResult | None = None
        limit = self.selection_timeout_s
        try:
            async with asyncio.timeout(limit):
                result = await self.selector.embed(request, timeout_s=limit)
        except (TimeoutError, Unavailable) as err:
            reason = f"{type(err).__name__}: {err}" if str(err) else f"no answer in {limit:g} s"
            log.warning("embedding job %s region %d failed (%s): random batches instead",
                        job.state.job_id, region_id, reason)  # fmt: skip
        except Exception as err:
            if await self._selection_bug(job, region_id, err, "raised while embedding"):
                return
        async with job.changed:
            region = job.state.unfinished_region(region_id)
            if job.stale or job.gone or region is None or region.phase is not Phase.EMBED:
                return
            try:
                served = await _to_the_end(self._served(job, region_id, version, result))
            except CrestError as err:  # stale, lost or unwritable: the next call says which
                log.warning("could not journal region %d: %s", region_id, err)
                return
            job.changed.notify_all()
        if served:
            await self._select(job, region_id)

    async def _served(
        self, job: _Job, region_id: int, version: int, result: EmbedResult | None
    ) -> bool:
        """Store the selectors' embeddings, journaled; without them (or with an answer that
        does not fit) complete the region with random batches. True: stored."""
        if result is not None:
            try:
                await _off_loop(
                    job.state.receive_service_embeddings,
                    region_id, version, result.embeddings, result.losses,
                )  # fmt: skip
                await self._journal(
                    job, journal.served(region_id, version, result.embeddings, result.losses)
                )
                job.embedded_at[region_id] = time.monotonic()
                return True
            except InvalidArgument as err:
                if self._crash(job, region_id, err, "embedded wrongly"):
                    return False
        await _off_loop(job.state.complete_fallback, region_id)
        await self._journal(job, journal.fell_back(region_id))
        job.telemetry.record_selection(
            SelectionEvent(
                region_id=region_id, at=time.time(), seconds=0.0, problems=0, fallback=True
            )
        )
        return False

    async def _select(self, job: _Job, region_id: int) -> None:
        started = time.monotonic()  # the selection's deadline covers building its request
        async with job.lock:
            region = job.state.unfinished_region(region_id)
            if job.stale or job.gone or region is None or region.phase is not Phase.SELECTING:
                return
            request = await _off_loop(job.state.selection_request, region_id)
        result: SelectionResult | None = None
        limit = self.selection_timeout_s
        try:
            # One deadline: passed down, and enforced here too for a selector that ignores it.
            async with asyncio.timeout(limit):
                result = await self.selector.select(request, timeout_s=limit)
        except (TimeoutError, Unavailable) as err:  # slow, busy or lost workers: expected
            reason = f"{type(err).__name__}: {err}" if str(err) else f"no answer in {limit:g} s"
            log.warning("selection of job %s region %d failed (%s): random batches instead",
                        job.state.job_id, region_id, reason)  # fmt: skip
        except Exception as err:  # a bug in the kernel, the request or the selector
            if await self._selection_bug(job, region_id, err, "raised"):
                return
        async with job.changed:
            region = job.state.unfinished_region(region_id)
            if job.stale or job.gone or region is None or region.phase is not Phase.SELECTING:
                return
            # The monitor counts inside the selection's deadline: it runs (within its own
            # budget) only while the deadline has time left.
            monitor = time.monotonic() - started < limit
            try:
                fallback = await _to_the_end(self._complete(job, region_id, result, monitor))
            except CrestError as err:  # stale, lost or unwritable: the next call says which
                log.warning("could not journal region %d: %s", region_id, err)
                return
            if fallback is None:  # strict mode stopped the job on a wrong answer
                job.changed.notify_all()
                return
            embedded_at = job.embedded_at.pop(region_id, time.monotonic())
            job.telemetry.record_selection(
                SelectionEvent(
                    region_id=region_id,
                    at=time.time(),
                    seconds=time.monotonic() - embedded_at,
                    problems=len(request.budgets),
                    fallback=fallback,
                )
            )
            job.changed.notify_all()

    async def _complete(
        self, job: _Job, region_id: int, result: SelectionResult | None, monitor: bool = True
    ) -> bool | None:
        """Complete the region, journaled: with the selector's answer (measured by the
        monitor if ``monitor``), or with random batches when there is none or it does not
        fit. Returns whether it fell back (None: strict mode stopped the job on an answer
        that does not fit)."""
        if result is not None:
            try:
                await _off_loop(job.state.complete_selection, region_id, result, monitor)
                await self._journal(job, journal.selected(region_id, result, monitor))
                return False
            except InvalidArgument as err:  # the selector's answer does not fit
                if self._crash(job, region_id, err, "answered wrongly"):
                    return None
        await _off_loop(job.state.complete_fallback, region_id)
        await self._journal(job, journal.fell_back(region_id))
        return True

    async def _selection_bug(self, job: _Job, region_id: int, error: Exception, what: str) -> bool:
        """Record an unexpected selection error; True when strict mode stops the region."""
        async with job.changed:
            crashed = self._crash(job, region_id, error, what)
            job.changed.notify_all()
            return crashed

    def _crash(self, job: _Job, region_id: int, error: Exception, what: str) -> bool:
        """Log and count a selection bug; in strict mode, make the job's calls fail with it."""
        job.telemetry.record_error(error)
        log.error("selection of job %s region %d %s: %s: %s", job.state.job_id, region_id, what,
                  type(error).__name__, error, exc_info=error)  # fmt: skip
        if not self.strict:
            return False
        job.gone = SelectionCrashed(
            f"selection of region {region_id} {what}: {type(error).__name__}: {error}"
        )
        return True

    # -------------------------------------------------------------------------- checks
    async def report_check(
        self, job_id: str, rank: int, report: CheckReport, timeout: float | None = None
    ) -> CheckDecision:
        """Record a rank's check (or rank 0's on behalf of all ranks, ``report.ranks`` > 1);
        return the decision once every rank is covered."""
        job = self._job(job_id)
        async with job.changed:
            await self._fresh(job)
            known = await self._decided(job, rank, report)
            covered = range(job.state.config.world_size) if report.ranks > 1 else (rank,)
            for each in covered:  # a combined report says every rank got this far
                job.telemetry.rank(each).advance(report.step + 1)
            if known is not None:  # reported again (a retry, a resume): nothing changes
                return known
            decision = job.state.record_check(rank, report)
            await self._journal(job, journal.checked(rank, report))
            if decision is not None:
                job.changed.notify_all()
                return decision
            region = job.state.region
            assert region is not None
            await self._wait(job, lambda: report.step in region.decisions,
                             lambda: "the other ranks' check reports", timeout)  # fmt: skip
            return region.decisions[report.step]

    async def _decided(self, job: _Job, rank: int, report: CheckReport) -> CheckDecision | None:
        """The decision already recorded for ``report``'s check, from the archive if need be
        (see :meth:`JobState.decided`)."""
        try:
            return job.state.decided(rank, report)
        except ArchivedRegion as archived:
            decision = (await self._archived(job, archived.region_id)).decisions.get(report.step)
            if decision is None:
                raise FailedPrecondition(
                    f"region {archived.region_id} is closed, and it decided no check after step "
                    f"{report.step}"
                ) from None
            return decision

    async def _wait(
        self,
        job: _Job,
        ready: Callable[[], bool],
        awaited: Callable[[], str],
        timeout: float | None,
    ) -> None:
        """Wait until ``ready()``; past the limit, fail naming what was still ``awaited()``."""
        limit = self.wait_s if timeout is None else min(timeout, self.wait_s)
        try:
            done = job.changed.wait_for(lambda: job.gone is not None or ready())
            await asyncio.wait_for(done, limit)
        except TimeoutError:
            raise Unavailable(f"timed out after {limit:.1f} s waiting for {awaited()}") from None
        if job.gone is not None:
            raise type(job.gone)(*job.gone.args)

    # -------------------------------------------------------------- trainer checkpoints
    async def export_job(self, job_id: str) -> bytes:
        """The job's state now, for a checkpoint (an in-process job dies with its trainer)."""
        job = self._job(job_id)
        async with job.lock:
            await self._fresh(job)
            return await _off_loop(_snapshot, job.state)

    async def restore_job(self, job_id: str, snapshot: bytes) -> bool:
        """Adopt ``snapshot`` (from :meth:`export_job`) for an existing job with the same
        config and labels when this manager's copy has opened fewer regions; returns whether
        it did. A copy that is as far or further (the coordinator outlived the trainer) is
        kept: it holds everything the trainer's checkpoint needs."""
        job = self._job(job_id)
        try:
            state = await _off_loop(_from_snapshot, snapshot)
        except Exception as err:  # any malformed blob: it never becomes part of a job
            raise InvalidArgument(f"not a job snapshot: {err}") from None
        if state.job_id != job_id:
            raise InvalidArgument(f"the snapshot is of job {state.job_id!r}, not {job_id!r}")
        async with job.changed:
            await self._fresh(job)
            digest = await _off_loop(_labels_digest, state.pool.labels)
            if state.config != job.state.config or digest != job.labels_digest:
                raise FailedPrecondition(
                    f"job {job_id!r} was created with another config or other labels than the "
                    "checkpoint's job: create it with the checkpoint's config and labels"
                )
            if state.regions_opened <= job.state.regions_opened:
                return False
            head, pieces = await _off_loop(_stored_snapshot, state)
            try:  # the job starts over from the snapshot: its archive was of another history
                await self.store.create(job_id, head, pieces)
            except Exception as err:
                raise Unavailable(f"the state store failed: {err}") from None
            job.cancel_work()
            job.state, job.journal_length, job.telemetry = state, 0, JobTelemetry()
            job.archived, job.finished_at = None, None
            await self._note_finished(job)
            job.changed.notify_all()
            log.info("restored job %s from a checkpoint at step %d", job_id, state.status().step)
            return True


def _served_model(
    config: JobConfig, artifact: bytes, inputs: np.ndarray, num_weights: int
) -> ServedModel:
    """A published model, validated: the inputs of all N examples, finite floats."""
    if not artifact:
        raise InvalidArgument("the model artifact is empty")
    if num_weights < 1:
        raise InvalidArgument(f"num_weights must be >= 1, got {num_weights}")
    inputs = np.asarray(inputs)
    if inputs.ndim < 1 or len(inputs) != config.num_examples or inputs.dtype != np.float32:
        raise InvalidArgument(
            f"inputs must be float32 of shape ({config.num_examples}, ...): one row per "
            f"example, got {inputs.dtype}{inputs.shape}"
        )
    if not _all_finite(inputs):
        raise InvalidArgument("inputs contain NaN or Inf")
    model_id = hashlib.sha256(artifact).hexdigest()[:16]
    return ServedModel(model_id, artifact, inputs, num_weights)


def _all_finite(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).all())


def _embed_request(
    state: JobState, region: Region, model: ServedModel, weights: np.ndarray
) -> EmbedRequest:
    candidates = region.candidates
    return EmbedRequest(
        job_id=state.job_id,
        model_id=model.model_id,
        artifact=model.artifact,
        weights=weights,
        inputs=model.inputs[candidates],
        labels=state.pool.labels[candidates].astype(np.int64),
    )


def _snapshot(state: JobState) -> bytes:
    """The whole state in one blob, for a trainer's checkpoint."""
    return pack(state.to_state())


def _stored_snapshot(state: JobState) -> tuple[bytes, Pieces]:
    """The state as the store keeps it: a head and pieces (:func:`split`)."""
    head, pieces = split(state.to_state(), PIECE_BYTES)
    return pack(head), pieces


def _from_snapshot(snapshot: bytes) -> JobState:
    return JobState.from_state(unpack(snapshot))


def _pack_region(region: Region) -> StoredRegion:
    head, pieces = split(region_to_state(region), PIECE_BYTES)
    return StoredRegion(pack(head), pieces)


def _unpack_region(stored: StoredRegion) -> Region:
    return region_from_state(join(unpack(stored.head), stored.pieces))


def _awaited_by_region(state: JobState) -> str:
    """What a rank whose part of the region is in waits for: other ranks' embeddings, or the
    selection itself."""
    region = state.region
    if region is None:
        return "the next region"
    if region.phase is Phase.EMBED:
        missing = [rank for rank in range(state.config.world_size) if state.missing(rank)]
        shown = ", ".join(map(str, missing[:8])) + (", ..." if len(missing) > 8 else "")
        plural = "s" if len(missing) > 1 else ""
        return f"the embeddings of rank{plural} {shown} in region {region.region_id}"
    return f"the selection of region {region.region_id}"


def _selecting(views: list[RegionView]) -> bool:
    """Whether ranks that fetch together wait: some rank's part is being selected and no rank
    must embed first (the shared fetch hands that rank its candidates at once)."""
    statuses = {view.status for view in views}
    return RegionStatus.SELECTING in statuses and RegionStatus.EMBED not in statuses
