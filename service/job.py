"""The job state machine: regions, coresets, checks. Pure and I/O-free.

A job walks through *regions* (:mod:`crest.service.region`). Each region opens at a step,
draws ``W x P`` class-stratified random subsets from the pool (P per rank), waits for every
rank's embeddings of its own candidates, hands one selection problem per (subset, class) to a
selector, and turns the answers into ``P`` mini-batch coresets per rank, weighted so that each
class carries its share of the objective and the weights have mean 1 over the region. Ranks
train on their coresets in turn and report check scalars every ``k`` steps; when all ranks
have reported, the quadratic model is judged (:mod:`crest.service.checks`) and, if
``|L_true - F(δ)| > τ · L_true`` after step ``t``, step ``t + 2`` opens a new region (the step
rules are in :mod:`crest.proto.steps`). A region also ends after each coreset was used
``max_coreset_uses`` times, and the job ends with its step budget. The strategy
(:mod:`crest.service.strategy`) says whether the next region serves coresets or random
batches; the pool (:mod:`crest.service.pool`) keeps loss histories and drops learned examples.

Reading is pure (:meth:`JobState.view`); every change is an explicit transition
(:meth:`~JobState.open_region`, :meth:`~JobState.receive_embeddings`,
:meth:`~JobState.complete_selection`, :meth:`~JobState.complete_fallback`,
:meth:`~JobState.record_check`) that the coordinator journals and replays.

If selection fails or times out, the coordinator may complete the region with stratified
random batches instead (:meth:`JobState.complete_fallback`), flagged in its statistics.

Everything here is deterministic for a seed: region ``i`` draws from
``numpy.random.default_rng([seed, i])``. :meth:`JobState.to_state` gives a tree of scalars and
numpy arrays (see :mod:`crest.service.codec`) from which :meth:`JobState.from_state` rebuilds
an identical machine.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from crest.proto import requests
from crest.proto.contract import (
    CheckDecision,
    CheckReport,
    JobConfig,
    JobStatus,
    RegionStats,
    RegionStatus,
    RegionTotals,
    RegionView,
    TrainerTime,
)
from crest.proto.errors import FailedPrecondition, InvalidArgument
from crest.service.checks import Adaptivity, decide, validate_report
from crest.service.pool import (
    DropSchedule,
    ExamplePool,
    class_weights,
    distinct,
    largest_remainder,
)
from crest.service.region import (
    Phase,
    Region,
    closed,
    crest_region,
    eligible_members,
    excluded_weight,
    random_region,
    region_end,
    region_from_state,
    region_to_state,
    with_probe,
)
from crest.service.strategy import AutoPolicy, bounded_coreset_quality, probe_loss
from crest.worker.problems import SelectionRequest, SelectionResult

__all__ = [
    "LIVE_CLOSED_REGIONS",
    "MAX_EMBEDDING_DIM",
    "STATS_KEPT",
    "ArchivedRegion",
    "JobState",
    "Phase",
    "Region",
    "Upload",
    "UploadChunk",
]

MAX_EMBEDDING_DIM = 1 << 16
# Closed regions the live state keeps whole (a rank a little behind the others still reads
# the previous region); older ones leave it for the coordinator's archive, so that the live
# state, and every snapshot of it, stays O(N) however many regions a job runs.
LIVE_CLOSED_REGIONS = 2

# Regions whose statistics keep their per-class pool sizes (the most recent ones); older
# regions' ``RegionStats.pool_per_class`` is emptied, so the statistics do not grow with C.
PER_CLASS_STATS_KEPT = 64

# Regions whose statistics the live state keeps (the most recent ones, the one drawn ahead
# included): older ones leave it, summed into ``JobState.stats_omitted``, so that the
# snapshot head does not grow with the number of regions (~1 KB a region). More than the
# coordinator's archive keeps (``ARCHIVED_REGIONS``), so that a region a rank can still
# resume into is one whose statistics say where it lies. At least 2, so that the region that
# leaves is closed (its statistics final) even while one is drawn ahead.
STATS_KEPT = 1024


class ArchivedRegion(Exception):
    """A read needs closed region ``region_id``, which left the live state: the coordinator
    loads it from its archive (the state machine does no I/O) and asks the region itself."""

    def __init__(self, region_id: int) -> None:
        super().__init__(f"region {region_id} is archived")
        self.region_id = region_id


class Upload(StrEnum):
    """What became of an embedding upload."""

    DUPLICATE = "duplicate"  # its sequence number was committed before: nothing changed
    ACCEPTED = "accepted"
    COMPLETE = "complete"  # accepted, and every rank's candidates are now in


@dataclass(frozen=True)
class UploadChunk:
    """Embeddings and losses of some of a rank's candidates, with the chunk's sequence number
    (None for an unsequenced in-process upload). Validated on receipt, not here.

    A shared upload's chunk (``rank_rows`` not empty) holds several ranks' candidates: rows of
    ranks ``first_rank``, ``first_rank + 1``, ... in that order, ``rank_rows[i]`` of rank
    ``first_rank + i``; its ``seq`` still counts the sender's chunks."""

    indices: np.ndarray
    embeddings: np.ndarray
    losses: np.ndarray
    seq: int | None = None
    first_rank: int = 0
    rank_rows: tuple[int, ...] = ()

    def parts(self, sender: int) -> list[tuple[int, slice]]:
        """``(rank, rows)`` of each rank with rows in the chunk (the sender's alone unless
        shared); raises InvalidArgument when ``rank_rows`` do not add up to the chunk."""
        if not self.rank_rows:
            return [(sender, slice(None))]
        if min(self.rank_rows) < 0 or sum(self.rank_rows) != len(self.indices):
            raise InvalidArgument(
                f"a shared upload chunk's rank_rows {list(self.rank_rows)} must be >= 0 and add "
                f"up to its {len(self.indices)} rows"
            )
        ends = np.cumsum(self.rank_rows).tolist()
        return [
            (self.first_rank + i, slice(end - rows, end))
            for i, (rows, end) in enumerate(zip(self.rank_rows, ends, strict=True))
            if rows > 0
        ]


class JobState:
    """All state of one job. Methods validate fully before they change anything.

    Args:
        job_id: the job's name.
        config: the validated job configuration.
        labels: ``(N,)`` integer labels in ``[0, C)``; every class must have an example
            unless ``config.allow_empty_classes``.

    Raises:
        InvalidArgument: labels of the wrong shape, type or range, or an empty class.
    """

    def __init__(self, job_id: str, config: JobConfig, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        _validate_labels(labels, config)
        self.job_id = job_id
        self.config = config
        self.pool = ExamplePool(labels, config.num_classes, config.loss_window)
        self.region: Region | None = None
        # The last LIVE_CLOSED_REGIONS closed regions, as :func:`closed` keeps them.
        self.past: list[Region] = []
        # The statistics of the last STATS_KEPT regions, in order (see :meth:`_stats_index`),
        # and the totals of the ones dropped before them.
        self.stats: list[RegionStats] = []
        self.stats_omitted = RegionTotals()
        self.drops = DropSchedule.start(config)
        self.adapt = Adaptivity(config.check_interval, config.num_coresets)
        self.strategy = AutoPolicy.start(config)
        if config.strategy == "auto":  # its probe is held out: no batch ever trains on it
            self.pool.hold_out(draw_probe(self.pool, config))
        self.committed_seq = [0] * config.world_size  # last upload sequence number per rank
        self.trainer_times: dict[int, tuple[float, float]] = {}  # rank -> (train, selection) s
        # Service side: who embeds now (the trainer takes over when its model cannot be
        # exported, and says why), and the region after the current one, drawn when the
        # current one opened and prepared by the selectors while it trains.
        self.side: Literal["trainer", "service"] = config.selection_side
        self.side_reason = "configured" if self.side == "service" else ""
        self.prepared: Region | None = None
        # Closed regions that just left ``past``: the coordinator archives them before it
        # journals the change that closed them, so no snapshot needs them (not stored).
        self.leaving: list[Region] = []

    # ----------------------------------------------------------------------------- regions
    def view(self, rank: int, step: int) -> RegionView:
        """The region that holds ``step`` for ``rank``. Pure: changes nothing.

        Raises:
            InvalidArgument: rank or step out of range.
            FailedPrecondition: ``step`` lies beyond an undecided check, or in a region that
                is due but not open yet (:meth:`open_region` first).
            ArchivedRegion: ``step`` lies in a closed region that left the live state.
        """
        if self._opens_region(rank, step):
            raise FailedPrecondition(f"the region starting at step {step} is not open yet")
        total = self.config.total_steps
        if step >= total:
            return RegionView(
                region_id=-1, status=RegionStatus.DONE, start_step=total, end_step=total
            )
        region = self.region
        assert region is not None  # else _opens_region raised or returned True
        if step < region.start_step:
            return self._past_region(step).view(rank)
        return region.view(rank)

    def open_region(self, rank: int, step: int) -> bool:
        """Open the region that starts at ``step`` if it is due; True when one opened.

        The only transition a read can trigger: the coordinator calls it before
        :meth:`view` and journals it when it returns True.

        Raises:
            InvalidArgument, FailedPrecondition: as :meth:`view`.
        """
        if not self._opens_region(rank, step):
            return False
        self._open(step)
        return True

    def _opens_region(self, rank: int, step: int) -> bool:
        """Whether ``step`` starts a region that is due and not open; validates the call."""
        self._check_rank(rank)
        if step < 0:
            raise InvalidArgument(f"step must be >= 0, got {step}")
        if step >= self.config.total_steps:
            return False
        region = self.region
        if region is None:
            if step != 0:
                raise FailedPrecondition(f"the job has not started; ask for step 0, not {step}")
            return True
        if step < region.start_step:
            return False
        if step >= region.end_step:
            if step > region.end_step or not region.can_close():
                raise FailedPrecondition(
                    f"step {step} is beyond region {region.region_id}; the check after step "
                    f"{region.next_check()} is not decided yet"
                )
            return True
        if step > region.next_check() + 1:
            raise FailedPrecondition(
                f"step {step} needs the check after step {region.next_check()} first"
            )
        return False

    def _past_region(self, step: int) -> Region:
        for region in reversed(self.past):
            if region.start_step <= step < region.end_step:
                return region
        # Archived: the region statistics say which one (closed ones, in step order).
        closed_count = self._stats_index(self.past[0].region_id if self.past else 0, clamp=True)
        found = bisect.bisect_right(self.stats, step, hi=closed_count, key=lambda s: s.start_step)
        if found > 0 and step < (self.stats[found - 1].end_step or 0):
            raise ArchivedRegion(self.stats[found - 1].region_id)
        if found == 0 and self.stats_omitted.regions:
            raise FailedPrecondition(
                f"step {step} lies in a region older than the job's last {len(self.stats)} "
                "regions, which the coordinator no longer keeps"
            )
        raise FailedPrecondition(f"step {step} belongs to no recorded region")

    def _stats_index(self, region_id: int, clamp: bool = False) -> int:
        """Where region ``region_id``'s statistics lie in ``self.stats``: the first
        ``stats_omitted.regions`` regions' were dropped. ``clamp``: a dropped region gives
        0 (for slice bounds); else it is an error."""
        index = region_id - self.stats_omitted.regions
        if index < 0 and not clamp:
            raise AssertionError(f"region {region_id}'s statistics were dropped")
        return max(index, 0)

    def _stats(self, region_id: int) -> RegionStats:
        return self.stats[self._stats_index(region_id)]

    def _open(self, start: int) -> None:
        """Close the current region and open the next at ``start``: the prepared one if the
        job still serves coresets from the selectors, else one drawn now."""
        previous = self.region
        if previous is not None:
            self._close(previous)
        region_id = 0 if previous is None else previous.region_id + 1
        prepared, self.prepared = self.prepared, None
        role = self.strategy.role(start, self.config)
        # A test's regions are drawn now, so that the probe's losses are measured with the
        # weights of their first steps.
        pipelined = self.side == "service" and self.strategy.mode == "crest" and not role
        if prepared is not None and pipelined:
            self._activate(prepared, start)
        else:
            if prepared is not None:  # drawn for a mode the job has left: drawn again
                self.stats.pop()
            self.region = self._draw(region_id, start, start, role)
        self._prepare_next()

    def _prepare_next(self) -> None:
        """Service side: draw the region after the current one once the current one is both
        open and ready (whichever comes last), so that the pool it draws from (drops, loss
        histories) is the same however the selectors' timing falls. The selectors embed it
        from the weights of the current region's first step."""
        region = self.region
        if (
            self.side != "service"
            or self.strategy.mode != "crest"
            or self.strategy.testing
            or self.prepared is not None
            or region is None
            or region.phase is not Phase.READY
            or region.end_reason == "budget"
        ):
            return
        self.prepared = self._draw(region.region_id + 1, region.start_step, region.start_step)

    def _draw(self, region_id: int, start: int, weights_version: int, role: str = "") -> Region:
        """Draw region ``region_id`` from the pool as it is now, and record its statistics.

        On the service side its candidates are embedded by the selectors from the weights
        published at step ``weights_version``; when it is drawn ahead, :meth:`_activate` sets
        its start. ``role``: its part in strategy auto's test (:meth:`AutoPolicy.role`);
        every test region embeds the held-out probe sample (:func:`draw_probe`).
        """
        cfg = self.config
        dropped = readmitted = 0
        if self.drops.due(start):
            outcome = self.pool.evaluate_drops(
                evaluation=self.drops.evaluations,
                learned_loss=cfg.learned_loss,
                floor_per_class=self._pool_floor(),
                max_dropped=math.floor(cfg.max_drop_frac * cfg.num_examples),
                readmit_after=cfg.readmit_after,
            )
            dropped, readmitted = outcome.dropped, outcome.readmitted
            self.drops.advance(start, cfg)

        rng = np.random.default_rng([cfg.seed, region_id])
        service = self.side == "service"
        if role and not self.strategy.testing:
            self.strategy.begin(np.flatnonzero(self.pool.held_out))
        probe = np.asarray(self.strategy.probe if role else [], np.int64)
        if self.strategy.region_mode(role) == "random":
            length = self.strategy.random_steps(start, cfg, role)
            region = random_region(region_id, start, self.pool, cfg, length, rng)
            if role:
                region = with_probe(region, probe, cfg.world_size)
                if service:
                    region.embedded_by, region.weights_version = "service", start
        else:
            coresets = self.adapt.num_coresets
            if service and cfg.lookahead_coresets:
                coresets = self._lookahead_coresets()
            region = crest_region(
                region_id, start, self.pool, cfg, coresets, self.adapt.check_interval, rng, probe
            )
            if service:
                region.embedded_by, region.weights_version = "service", weights_version
                region.end_step, region.end_reason = region_end(
                    cfg, start, self._service_length(coresets)
                )
            if role == "coresets":  # a test's coreset arm ends on time (AutoPolicy.arm_end)
                arm_end = self.strategy.arm_end(start, cfg)
                if region.end_step > arm_end:
                    region.end_step, region.end_reason = region_end(cfg, start, arm_end - start)
        self.stats.append(
            RegionStats(
                region_id=region_id,
                start_step=start,
                num_coresets=region.num_coresets,
                check_interval=region.check_interval,
                num_candidates=len(region.candidates),
                pool_size=int(self.pool.in_pool.sum()),
                pool_per_class=self.pool.sizes_per_class().tolist(),
                dropped=dropped,
                readmitted=readmitted,
                mode=region.mode,
                decision=self.strategy.decision,
                auto_test=role,
                embedded_by=region.embedded_by,
                staleness=start - weights_version if region.embedded_by == "service" else None,
            )
        )
        if len(self.stats) > PER_CLASS_STATS_KEPT:
            # The per-class pool sizes are what makes a region's statistics large at many
            # classes (~5 KB at C = 1,000), and every kept region's statistics live in the
            # snapshot head: older regions keep their totals only (~1 KB a region).
            self.stats[-PER_CLASS_STATS_KEPT - 1].pool_per_class = []
        if len(self.stats) > STATS_KEPT:
            # Long closed (STATS_KEPT regions ago): its statistics are final.
            leaving = self.stats.pop(0)
            self.stats_omitted = self.stats_omitted.plus([leaving], self.config.tau)
        return region

    def _measure_probe(self, region: Region) -> None:
        """The probe's mean loss from a test region's candidates, for strategy auto."""
        if not region.probe_slots.size:
            return
        value = probe_loss(region.losses[region.probe_slots], self.config.num_classes)
        self._stats(region.region_id).probe_loss = value
        step = region.weights_version if region.embedded_by == "service" else region.start_step
        self.strategy.measured(step, value)

    def _serve_random(self, region: Region) -> None:
        """A test's random region once its probe losses are in: its batches are ready."""
        self._measure_probe(region)
        region.embeddings = None
        region.phase = Phase.READY

    def _activate(self, region: Region, start: int) -> None:
        """Make the prepared ``region`` the current one, starting at ``start``."""
        region.start_step, region.last_decided = start, start - 1
        region.check_interval = self.adapt.check_interval
        length = self._service_length(region.num_coresets)
        region.end_step, region.end_reason = region_end(self.config, start, length)
        stats = self._stats(region.region_id)
        stats.start_step, stats.check_interval = start, region.check_interval
        stats.staleness = start - region.weights_version
        self.region = region

    def _service_length(self, num_coresets: int) -> int:
        """Steps a service-side region lasts at most: its coreset uses, and ``max_staleness``
        (the next region's coresets come from this region's first weights)."""
        uses = self.config.max_coreset_uses
        bound = self.config.max_staleness
        return bound if uses is None else min(num_coresets * uses, bound)

    def _lookahead_coresets(self) -> int:
        """P of a region drawn ahead with ``lookahead_coresets``: as many coresets as recent
        regions lasted steps (at least P_0, at most the adaptive P), so that coresets nobody
        trains on are not embedded and selected. A region that outlasts them reuses them in
        turn (on W1 that cost accuracy: docs/benchmarks.md, so it is off by default)."""
        closed_count = self.past[-1].region_id + 1 if self.past else 0
        recent = [
            (s.end_step or s.start_step) - s.start_step
            for s in self.stats[
                self._stats_index(closed_count - 3, clamp=True) : self._stats_index(
                    closed_count, clamp=True
                )
            ]
        ]
        wanted = max([self.config.num_coresets, *recent])
        return min(self.adapt.num_coresets, wanted)

    def _close(self, region: Region) -> None:
        """Adapt k and P and the strategy to the closing region, keep what its views need,
        and hand the oldest closed region to the archive when the live window is full."""
        stats = self._stats(region.region_id)
        stats.end_step, stats.end_reason = region.end_step, region.end_reason
        stats.curvature = region.curvature
        self.adapt.after(region, self.config)
        self.strategy.after(region, stats, self.config)
        self.past.append(closed(region))
        while len(self.past) > LIVE_CLOSED_REGIONS:
            self.leaving.append(self.past.pop(0))

    def _pool_floor(self) -> np.ndarray:
        """``(C,)`` pool members each class keeps: enough for P x W disjoint subsets."""
        cfg = self.config
        if cfg.min_pool_per_class is not None:
            return np.full(cfg.num_classes, cfg.min_pool_per_class, np.int64)
        per_class = self.pool.class_quotas(cfg.resolved_subset_size, cfg.class_weighting)
        return per_class * cfg.num_coresets * cfg.world_size

    # -------------------------------------------------------------------------- embeddings
    def receive_embeddings(
        self,
        rank: int,
        region_id: int,
        indices: np.ndarray,
        embeddings: np.ndarray,
        losses: np.ndarray,
        seq: int | None = None,
    ) -> Upload:
        """Store a rank's embeddings and losses for some of its candidates: one chunk.

        Args:
            indices: ``(n,)`` int64 example indices, ``n >= 1``, distinct, all candidates of
                ``rank``.
            embeddings: ``(n, d)`` float32 or float16, finite.
            losses: ``(n,)`` float32, finite and >= 0 (eval-mode per-example loss).
            seq: the chunk's sequence number (see :meth:`receive_upload`), or None.

        Raises:
            As :meth:`receive_upload`.
        """
        return self.receive_upload(rank, region_id, [UploadChunk(indices, embeddings, losses, seq)])

    def receive_upload(self, rank: int, region_id: int, chunks: list[UploadChunk]) -> Upload:
        """Store an upload of one or more chunks, all or nothing.

        Every chunk is validated before any is stored, so a rejected upload changes nothing.
        Chunks apply in order (a later one overwrites an earlier one's rows).

        Sequence numbers count a rank's chunks from 1 over the whole job; ``None`` marks an
        unsequenced in-process chunk. A chunk whose number is committed already (a resend) is
        skipped; the others must continue the committed sequence without a gap.

        Returns:
            :attr:`Upload.DUPLICATE` when every chunk was committed before (nothing changed).

        Raises:
            InvalidArgument: malformed arrays or indices, or an empty chunk.
            FailedPrecondition: a sequence gap, or the region is not the current one or no
            longer collecting.
        """
        self._check_rank(rank)
        for chunk in chunks:
            if chunk.rank_rows:
                requests.shared_ranks(
                    chunk.first_rank, len(chunk.rank_rows), self.config.world_size
                )
        last = self.committed_seq[rank]
        fresh: list[UploadChunk] = []
        for chunk in chunks:
            if chunk.seq is not None:
                if chunk.seq <= last:
                    continue
                if chunk.seq != last + 1:
                    raise FailedPrecondition(
                        f"upload sequence {chunk.seq} of rank {rank} is out of order: "
                        f"expected {last + 1}"
                    )
                last = chunk.seq
            fresh.append(chunk)
        if not fresh:
            return Upload.DUPLICATE
        region = self._current(region_id)
        if region.phase is not Phase.EMBED:
            raise FailedPrecondition(f"region {region_id} is not collecting embeddings")
        dim = None if region.embeddings is None else region.embeddings.shape[1]
        writes = []
        for chunk in fresh:
            for owner, part in chunk.parts(rank):
                shared = f"rank {owner}'s rows: " if chunk.rank_rows else ""
                try:
                    indices, embeddings, losses = _validate_upload(
                        np.asarray(chunk.indices)[part], np.asarray(chunk.embeddings)[part],
                        np.asarray(chunk.losses)[part],
                    )  # fmt: skip
                except InvalidArgument as err:
                    raise InvalidArgument(f"{shared}{err}") from None
                if dim is not None and embeddings.shape[1] != dim:
                    raise InvalidArgument(
                        f"{shared}embedding dim {embeddings.shape[1]} differs from this "
                        f"region's {dim}"
                    )
                dim = embeddings.shape[1]
                span = region.rank_slots(owner)
                mine = region.candidates[span]
                pos = np.searchsorted(mine, indices)
                pos_clipped = np.minimum(pos, len(mine) - 1)
                if len(mine) == 0 or not np.array_equal(mine[pos_clipped], indices):
                    bad = indices[(pos >= len(mine)) | (mine[pos_clipped] != indices)][:5]
                    raise InvalidArgument(
                        f"indices {bad.tolist()} are not candidates of rank {owner} in region "
                        f"{region_id}"
                    )
                rows: np.ndarray = span.start + pos
                slots: np.ndarray | slice = rows
                if rows[-1] - rows[0] == len(rows) - 1:
                    slots = slice(int(rows[0]), int(rows[-1]) + 1)  # in order: a plain copy
                writes.append((slots, embeddings, losses))
        if not writes:  # a shared chunk whose ranks all sent nothing
            raise InvalidArgument("an upload must carry at least one example")
        # Everything is valid: commit.
        assert dim is not None  # set by the first chunk, and there is one
        if region.embeddings is None:
            region.embeddings = np.zeros((len(region.candidates), dim), np.float32)
        for slots, embeddings, losses in writes:
            region.embeddings[slots] = embeddings
            region.losses[slots] = losses
            region.received[slots] = True
        self.committed_seq[rank] = last
        if region.received.all() and region.mode == "random":
            self._serve_random(region)  # nothing to select: no selection to start
        elif region.received.all():
            region.phase = Phase.SELECTING
            return Upload.COMPLETE
        return Upload.ACCEPTED

    def missing(self, rank: int) -> int:
        """How many of ``rank``'s candidates in the current region have not arrived."""
        region = self.region
        if region is None or region.phase is not Phase.EMBED:
            return 0
        return int((~region.received[region.rank_slots(rank)]).sum())

    # --------------------------------------------------------------------------- selection
    def selection_request(self, region_id: int) -> SelectionRequest:
        region = self._region(region_id)
        if region.phase is not Phase.SELECTING:
            raise FailedPrecondition(f"region {region_id} is not waiting for selection")
        assert region.embeddings is not None
        rows = self._eligible_rows(region)
        members = region.members if rows is None else region.members[rows]
        return SelectionRequest(
            job_id=self.job_id,
            embeddings=region.embeddings[members],
            groups=region.member_groups if rows is None else region.member_groups[rows],
            budgets=region.class_budgets.reshape(-1),  # problem = subset * C + class
        )

    def _eligible_rows(self, region: Region) -> np.ndarray | None:
        """``exclude_noisy``: the subset members (rows of ``region.members``) that may be
        selected, in order, and their count in the region's statistics; None when every member
        may. The request holds only these rows; :meth:`complete_selection` counts each excluded
        member in its most similar representative's weight. A function of the region's
        losses, so that the answer's rows can be mapped back."""
        if not self.config.exclude_noisy:
            return None
        classes = self.config.num_classes
        eligible = eligible_members(
            region.losses[region.members],
            region.member_groups % classes,
            region.member_groups,
            region.class_budgets.reshape(-1),
            self.config.noisy_mads,
            classes,
        )
        self._stats(region.region_id).excluded = int(len(eligible) - eligible.sum())
        return np.flatnonzero(eligible)

    def unfinished(self) -> list[Region]:
        """The current and the prepared region, where they still wait for embeddings or
        selection (what the coordinator's selectors have to do)."""
        return [
            r for r in (self.region, self.prepared) if r is not None and r.phase is not Phase.READY
        ]

    def unfinished_region(self, region_id: int) -> Region | None:
        """Region ``region_id`` if it is one of :meth:`unfinished`."""
        return next((r for r in self.unfinished() if r.region_id == region_id), None)

    # ---------------------------------------------------------------------- service side
    def receive_service_embeddings(
        self, region_id: int, weights_version: int, embeddings: np.ndarray, losses: np.ndarray
    ) -> None:
        """Store the selectors' embeddings and losses of all of a service-side region's
        candidates (slot order), computed from the weights of step ``weights_version``.

        Raises:
            InvalidArgument: arrays of the wrong shape, or not finite.
            FailedPrecondition: the region is not waiting for the selectors' embeddings of
                that version.
        """
        region = self._region(region_id)
        if region.embedded_by != "service" or region.phase is not Phase.EMBED:
            raise FailedPrecondition(f"region {region_id} is not waiting for the selectors")
        if weights_version != region.weights_version:
            raise FailedPrecondition(
                f"region {region_id} is embedded with the weights of step "
                f"{region.weights_version}, not {weights_version}"
            )
        count = len(region.candidates)
        # Own copies: the region keeps its losses, and a caller's arrays may be views of
        # memory it does not own (e.g. Ray's object store).
        embeddings = np.array(embeddings, dtype=np.float32)
        losses = np.array(losses, dtype=np.float32)
        if embeddings.ndim != 2 or len(embeddings) != count or losses.shape != (count,):
            raise InvalidArgument(
                f"region {region_id} needs ({count}, d) embeddings and ({count},) losses, got "
                f"{embeddings.shape} and {losses.shape}"
            )
        if not (np.isfinite(embeddings).all() and np.isfinite(losses).all()) or (losses < 0).any():
            raise InvalidArgument("embeddings and losses must be finite, losses >= 0")
        region.embeddings, region.losses = embeddings, losses
        region.received[:] = True
        region.phase = Phase.SELECTING
        if region.mode == "random":
            self._serve_random(region)

    def use_trainer_side(self, reason: str) -> None:
        """From now on the ranks embed their candidates (e.g. the model cannot be exported):
        the prepared region is dropped, and a current one still waiting for the selectors'
        embeddings asks the ranks for them. Idempotent."""
        if self.side == "trainer":
            return
        self.side, self.side_reason = "trainer", reason
        if self.prepared is not None:
            self.stats.pop()
            self.prepared = None
        region = self.region
        if region is not None and region.embedded_by == "service" and region.phase is Phase.EMBED:
            region.embedded_by, region.weights_version = "trainer", -1
            stats = self._stats(region.region_id)
            stats.embedded_by, stats.staleness = "trainer", None

    def complete_selection(
        self, region_id: int, result: SelectionResult, monitor: bool = True
    ) -> None:
        """Assemble the region's coresets from a selector's answer to :meth:`selection_request`.

        ``result.rows`` index the request's rows (the subset members eligible for selection:
        all of them unless ``exclude_noisy``); its groups must be those rows' problems,
        non-decreasing; its weights raw cluster sizes (>= 1), served raised to
        ``weight_exponent`` and scaled to the class shares. ``monitor``: measure the
        coresets (:func:`~crest.service.strategy.bounded_coreset_quality`); the coordinator
        says no when the selection used its whole deadline (journaled, so that a replay
        decides the same).
        """
        region = self._region(region_id)
        if region.phase is not Phase.SELECTING:
            raise FailedPrecondition(f"region {region_id} is not waiting for selection")
        rows = np.asarray(result.rows, dtype=np.int64)
        groups = np.asarray(result.groups, dtype=np.int64)
        weights = np.asarray(result.weights, dtype=np.float32)
        if not (rows.shape == groups.shape == weights.shape) or rows.ndim != 1:
            raise InvalidArgument("rows, groups and weights must be 1-D of one length")
        eligible = self._eligible_rows(region)
        requested = len(region.members) if eligible is None else len(eligible)
        if rows.size and (rows.min() < 0 or rows.max() >= requested):
            raise InvalidArgument("selected rows out of range")
        if eligible is not None:
            rows = eligible[rows]
        if not np.array_equal(region.member_groups[rows], groups) or np.any(np.diff(groups) < 0):
            raise InvalidArgument("selected rows do not match their problems")
        if not np.all(np.isfinite(weights)) or np.any(weights < 1):
            raise InvalidArgument("weights must be finite and >= 1")
        if eligible is not None:
            assert region.embeddings is not None  # dropped only once the region is assembled
            excluded = np.setdiff1d(np.arange(len(region.members)), eligible)
            weights = weights + excluded_weight(
                region.embeddings[region.members], region.member_groups, excluded, rows
            )
        # Tempered cluster sizes (weight_exponent; 1 is CREST's): with whole cluster sizes
        # coresets trained up to 1.7 points worse (docs/benchmarks.md); likely, though not
        # measured, because a dense cluster's easy representative takes its class's weight.
        served = np.asarray(weights, np.float64) ** self.config.weight_exponent
        self._assemble(region, rows, groups, served, monitor, eligible)

    def complete_fallback(self, region_id: int) -> None:
        """Complete a region without selection: stratified random batches of weight 1.

        For when the selector failed or missed its deadline (on the service side also when
        the selectors' embeddings never came: then no losses are recorded). Each subset
        yields one batch of the region's class budgets in random members, drawn reproducibly
        for the seed and region, weighted like random batches (each class's share of the
        objective).
        """
        region = self._region(region_id)
        unembedded = region.phase is Phase.EMBED and region.embedded_by == "service"
        if region.phase is not Phase.SELECTING and not unembedded:
            raise FailedPrecondition(f"region {region_id} is not waiting for selection")
        if region.mode == "random":  # a test's random region: its batches, without the probe
            region.phase = Phase.READY
            return
        rng = np.random.default_rng([self.config.seed, region_id, 1])
        rows = []
        groups = region.member_groups  # non-decreasing: members are subset-major, then class
        problems = distinct(groups)
        starts = np.searchsorted(groups, problems)
        ends = np.searchsorted(groups, problems, side="right")
        for problem, first, end in zip(problems, starts, ends, strict=True):
            members = np.arange(first, end)  # one pass, not one scan of the region per problem
            budget = int(region.class_budgets.reshape(-1)[problem])
            rows.append(np.sort(rng.choice(members, min(budget, len(members)), replace=False)))
        chosen = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        self._stats(region_id).fallback = True
        weights = np.ones(len(chosen))
        self._assemble(region, chosen, region.member_groups[chosen], weights, monitor=False)

    def _assemble(
        self,
        region: Region,
        rows: np.ndarray,
        groups: np.ndarray,
        weights: np.ndarray,
        monitor: bool = True,
        eligible: np.ndarray | None = None,
    ) -> None:
        """Turn chosen subset members into the region's coresets and record statistics.

        ``weights`` are relative (cluster sizes to ``weight_exponent``, or ones): within each
        (subset, class) they are rescaled to sum to the class's share of the objective, then
        to mean 1 over the region.
        ``eligible``: the members that could be chosen (``exclude_noisy``; None: all).
        """
        classes = self.config.num_classes
        num_subsets = self.config.world_size * region.num_coresets
        slots = region.members[rows]
        region.coreset_indices = region.candidates[slots]
        weights = class_weights(weights, groups // classes, groups % classes, region.class_shares)
        region.coreset_weights = weights.astype(np.float32)
        counts = np.bincount(groups // classes, minlength=num_subsets)
        region.coreset_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        embedded = bool(region.received.all())
        if embedded:
            region.initial_loss = float(region.losses[region.check_slots].mean())
        region.phase = Phase.READY
        stats = self._stats(region.region_id)
        if not monitor and not stats.fallback:
            stats.monitor = "skipped: the selection used its deadline"
        elif monitor and region.embeddings is not None:
            measured = bounded_coreset_quality(
                region, rows, groups, weights, self.config, np.random.default_rng(
                    [self.config.seed, region.region_id, 2]
                ),
            )  # fmt: skip
            stats.coreset_error, stats.random_error = measured.coreset_error, measured.random_error
            stats.monitor = measured.summary
        region.embeddings = None  # selection and the monitor were their only uses
        stats.weight_quantiles = np.quantile(
            region.coreset_weights, [0, 0.25, 0.5, 0.75, 1]
        ).tolist()
        if embedded:
            self._record_losses(region, slots, stats, eligible)
            self._measure_probe(region)
        self._prepare_next()

    def _record_losses(
        self,
        region: Region,
        slots: np.ndarray,
        stats: RegionStats,
        eligible: np.ndarray | None = None,
    ) -> None:
        """The candidates' losses into their examples' history (one observation per distinct
        example: ranks may share a few), and the region's loss statistics: the mean loss of
        the candidates that could be selected (without auto's probe, and without the members
        ``exclude_noisy`` left out: ``eligible``) and of the examples selected (``slots``).
        Their difference is auto's loss excess, which so compares robust coresets with what
        they could choose from, not with the mislabelled examples they may not choose."""
        unique, first = np.unique(region.candidates, return_index=True)
        self.pool.record_losses(unique, region.losses[first])

        # The probe (auto's tests) is embedded with the candidates, but is none of them.
        candidates = np.ones(len(region.losses), bool)
        if eligible is not None:
            candidates[:] = False
            candidates[region.members[eligible]] = True
        candidates[region.probe_slots] = False
        stats.candidate_loss = float(region.losses[candidates].mean()) if candidates.any() else None
        stats.selected_loss = float(region.losses[slots].mean()) if slots.size else None
        if region.embedded_by == "trainer":  # else the ranks measure L_0 at the start
            stats.initial_loss = region.initial_loss

    # ------------------------------------------------------------------------------ checks
    def record_check(self, rank: int, report: CheckReport) -> CheckDecision | None:
        """Record one rank's check scalars, or rank 0's report on behalf of all ranks
        (``report.ranks`` = world size); decide once every rank is covered.

        Returns:
            The decision, or None while other ranks have not reported. Reporting a step that
            is already decided, in this region or a past one (a trainer replaying from a
            checkpoint), returns the recorded decision (see :meth:`decided`).

        Raises:
            InvalidArgument: malformed scalars, a step that is not a check step, or a
                combined report that does not cover exactly the job's ranks from rank 0.
            FailedPrecondition: wrong region, phase, or a check out of order; a combined
                report of a check that some ranks reported for themselves.
            ArchivedRegion: the report is of a closed region that left the live state.
        """
        known = self.decided(rank, report)
        if known is not None:
            return known
        region = self._current(report.region_id)
        if region.phase is not Phase.READY:
            raise FailedPrecondition(f"region {region.region_id} has no coresets yet")
        validate_report(report)
        if report.step != region.next_check() or report.step >= region.end_step:
            raise FailedPrecondition(
                f"the next check of region {region.region_id} is after step "
                f"{region.next_check()}, not {report.step}"
            )
        self._check_coverage(rank, report, region)
        region.pending[rank] = report
        self.trainer_times[rank] = (report.train_seconds, report.selection_seconds)
        if sum(r.ranks for r in region.pending.values()) < self.config.world_size:
            return None
        decision, record = decide(region, self.config.tau)
        stats = self._stats(region.region_id)
        stats.checks.append(record)
        stats.initial_loss = region.initial_loss
        return decision

    def _check_coverage(self, rank: int, report: CheckReport, region: Region) -> None:
        """A check is reported either by every rank for itself or by rank 0 for all ranks:
        never both, never a part of the ranks at once."""
        if report.ranks == 1:
            return
        world_size = self.config.world_size
        if report.ranks != world_size or rank != 0:
            raise InvalidArgument(
                f"a report covering {report.ranks} ranks from rank {rank}: a combined report "
                f"comes from rank 0 and covers all {world_size} ranks of job {self.job_id!r}"
            )
        if region.pending:
            raise FailedPrecondition(
                f"rank 0 reported the check after step {report.step} on behalf of all ranks, "
                f"but ranks {sorted(region.pending)} reported it for themselves: every rank "
                "must combine its checks through torch.distributed, or none"
            )

    def decided(self, rank: int, report: CheckReport) -> CheckDecision | None:
        """The decision already recorded for ``report``'s check, if any: reporting it again
        changes nothing (the coordinator journals only reports that are not).

        Raises:
            InvalidArgument: rank out of range.
            ArchivedRegion: the report is of a closed region that left the live state.
        """
        self._check_rank(rank)
        region_id = report.region_id
        for region in (self.region, *self.past):
            if region is not None and region.region_id == region_id:
                return region.decisions.get(report.step)
        if 0 <= region_id < (self.past[0].region_id if self.past else 0):
            raise ArchivedRegion(region_id)
        return None

    # ----------------------------------------------------------------------------- helpers
    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.config.world_size:
            raise InvalidArgument(f"rank must lie in [0, {self.config.world_size}), got {rank}")

    def _region(self, region_id: int) -> Region:
        """The current or the prepared region ``region_id``."""
        prepared = self.prepared
        if prepared is not None and prepared.region_id == region_id:
            return prepared
        return self._current(region_id)

    def _current(self, region_id: int) -> Region:
        region = self.region
        if region is None or region.region_id != region_id:
            current = None if region is None else region.region_id
            raise FailedPrecondition(f"region {region_id} is not current (current: {current})")
        return region

    @property
    def finished(self) -> bool:
        """True once the step budget is spent: no check can still move the last region."""
        region = self.region
        return (
            region is not None and region.end_step >= self.config.total_steps and region.can_close()
        )

    @property
    def regions_opened(self) -> int:
        """Regions opened so far (a region drawn ahead is not open yet)."""
        return 0 if self.region is None else self.region.region_id + 1

    def status(self) -> JobStatus:
        region = self.region
        total = self.config.total_steps
        finished = self.finished
        step = 0 if region is None else max(region.start_step, region.last_decided + 1)
        return JobStatus(
            job_id=self.job_id,
            config=self.config,
            total_steps=total,
            step=total if finished else step,
            finished=finished,
            pool_size=int(self.pool.in_pool.sum()),
            pool_per_class=self.pool.sizes_per_class().tolist(),
            class_sizes=np.bincount(self.pool.labels, minlength=self.config.num_classes).tolist(),
            dropped=self.pool.dropped,
            regions=[
                s.model_copy(deep=True)
                for s in self.stats[: self._stats_index(self.regions_opened, clamp=True)]
            ],
            regions_omitted=self.stats_omitted.regions,
            omitted_totals=self.stats_omitted.model_copy(),
            selection_side=self.side,
            selection_side_reason=self.side_reason,
            next_region=None
            if self.prepared is None
            else self._stats(self.prepared.region_id).model_copy(deep=True),
            trainers=[
                TrainerTime(rank=rank, train_seconds=t[0], selection_seconds=t[1])
                for rank, t in sorted(self.trainer_times.items())
            ],
        )

    # ------------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """A tree of scalars, strings and numpy arrays that :meth:`from_state` rebuilds."""
        return {name: encode(getattr(self, name)) for name, (encode, _) in _STATE.items()}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> JobState:
        job = cls.__new__(cls)  # every attribute comes from the state (checked when stored)
        for name, (_, decode) in _STATE.items():
            setattr(job, name, decode(state[name]))
        job.leaving = []
        return job


def draw_probe(pool: ExamplePool, config: JobConfig) -> np.ndarray:
    """Strategy auto's probe sample, drawn once for the seed when the job starts and held out
    of training (:meth:`ExamplePool.hold_out`), so that a test measures how fast each kind of
    batch lowers the loss of examples the model never trains on: ``auto_probe_size``
    examples stratified by class, at most a tenth of any class (what the job does not train
    on)."""
    rng = np.random.default_rng([config.seed, 0, 4])  # 3 words: no region's stream
    sizes = pool.sizes_per_class()
    counts = largest_remainder(sizes / max(sizes.sum(), 1), config.auto_probe_size)
    counts = np.minimum(counts, sizes // 10)
    return np.concatenate(
        [np.sort(rng.choice(pool.class_members(c), n, replace=False)) for c, n in enumerate(counts)]
    ).astype(np.int64)


def _optional_region(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


# Every attribute of a JobState and how it is stored: the one list of them for snapshots and
# restores (tests/service/test_job.py checks it against a new job's attributes, which also
# have ``leaving``: regions on their way to the archive, empty whenever a snapshot is taken).
_STATE: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "job_id": (str, str),
    "config": (lambda c: c.model_dump(mode="json"), JobConfig.model_validate),
    "pool": (lambda p: p.to_state(), ExamplePool.from_state),
    "region": (_optional_region(region_to_state), _optional_region(region_from_state)),
    "past": (
        lambda regions: [region_to_state(r) for r in regions],
        lambda states: [region_from_state(s) for s in states],
    ),
    "stats": (
        lambda stats: [s.model_dump(mode="json") for s in stats],
        lambda states: [RegionStats.model_validate(s) for s in states],
    ),
    "stats_omitted": (lambda t: t.model_dump(mode="json"), RegionTotals.model_validate),
    "drops": (asdict, lambda s: DropSchedule(**s)),
    "adapt": (asdict, lambda s: Adaptivity(**s)),
    "strategy": (asdict, lambda s: AutoPolicy(**s)),
    "committed_seq": (list, list),
    "trainer_times": (
        lambda times: {str(rank): list(t) for rank, t in times.items()},
        lambda state: {int(rank): (t[0], t[1]) for rank, t in state.items()},
    ),
    "side": (str, str),
    "side_reason": (str, str),
    "prepared": (_optional_region(region_to_state), _optional_region(region_from_state)),
}


def _validate_labels(labels: np.ndarray, config: JobConfig) -> None:
    if labels.shape != (config.num_examples,):
        raise InvalidArgument(
            f"labels must have shape ({config.num_examples},), got {labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise InvalidArgument(f"labels must be integers, got {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= config.num_classes):
        raise InvalidArgument(
            f"labels must be integers in [0, {config.num_classes}) (num_classes="
            f"{config.num_classes}), got values in [{labels.min()}, {labels.max()}]; map "
            "string or sparse labels to 0..C-1 first"
        )
    empty = np.flatnonzero(np.bincount(labels, minlength=config.num_classes) == 0)
    if len(empty) and not config.allow_empty_classes:
        shown = ", ".join(str(c) for c in empty[:10]) + (", ..." if len(empty) > 10 else "")
        raise InvalidArgument(
            f"{len(empty)} of num_classes={config.num_classes} classes have no example "
            f"(classes {shown}); set num_classes to the number of distinct labels, or "
            "allow_empty_classes=True if that is expected"
        )


def _validate_upload(
    indices: np.ndarray, embeddings: np.ndarray, losses: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunk as stored: the callers' rules (:func:`crest.proto.requests.upload`, which a
    remote peer may not have run), a bounded embedding dim, and sorted by index."""
    indices, embeddings, losses = requests.upload(indices, embeddings, losses)
    if not 1 <= embeddings.shape[1] <= MAX_EMBEDDING_DIM:
        raise InvalidArgument(f"embedding dim must lie in [1, {MAX_EMBEDDING_DIM}]")
    if len(indices) > 1 and not np.all(indices[1:] > indices[:-1]):  # usually sorted already
        order = np.argsort(indices, kind="stable")
        indices, embeddings, losses = indices[order], embeddings[order], losses[order]
    return indices, embeddings, losses
