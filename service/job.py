"""The job state machine: regions, coresets, checks. Pure and I/O-free.

A job walks through *regions*. Each region opens at a step, draws ``W x P`` stratified random
subsets from the pool (P per rank), waits for every rank's embeddings of its own candidates,
hands one selection problem per (subset, class) to a selector, and turns the answers into
``P`` mini-batch coresets per rank, with weights rescaled to mean 1 over the region. Ranks
train on their coresets in turn and report check scalars every ``k`` steps; when all ranks
have reported, the quadratic model is judged and, if ``|L_true - F(δ)| > τ · L_true`` after
step ``t``, step ``t + 2`` opens a new region. (Decisions take effect one step late so that a
rank can train step ``t + 1`` while its report travels: the step loop never waits on the
network for a check.) A region also ends after each coreset was used ``max_coreset_uses``
times, and the job ends with its step budget.

If selection fails or times out, the coordinator may complete the region with stratified
random batches of weight 1 instead (:meth:`JobState.complete_fallback`), flagged in the
region's statistics.

Everything here is deterministic for a seed: region ``i`` draws from
``numpy.random.default_rng([seed, i])``. :meth:`JobState.to_state` gives a tree of scalars and
numpy arrays (see :mod:`crest.service.codec`) from which :meth:`JobState.from_state` rebuilds
an identical machine.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from crest.proto.contract import (
    CheckDecision,
    CheckRecord,
    CheckReport,
    JobConfig,
    JobStatus,
    RegionStats,
    RegionStatus,
    RegionView,
    TrainerTime,
)
from crest.proto.errors import FailedPrecondition, InvalidArgument
from crest.service.pool import ExamplePool
from crest.worker.selector import SelectionRequest, SelectionResult

MAX_EMBEDDING_DIM = 1 << 16


class Phase(StrEnum):
    EMBED = "embed"
    SELECTING = "selecting"
    READY = "ready"


class Upload(StrEnum):
    """What became of an embedding upload."""

    DUPLICATE = "duplicate"  # its sequence number was committed before: nothing changed
    ACCEPTED = "accepted"
    COMPLETE = "complete"  # accepted, and every rank's candidates are now in


@dataclass
class Region:
    """One quadratic region. Arrays over *candidate slots* are rank-major."""

    region_id: int
    start_step: int
    end_step: int  # exclusive
    end_reason: str  # "bound", "budget" or "check"
    num_coresets: int  # P per rank
    check_interval: int  # k
    candidates: np.ndarray  # (U,) int64 example of each slot; unique and sorted within a rank
    rank_offsets: np.ndarray  # (W + 1,) slots of rank q are [rank_offsets[q], rank_offsets[q+1])
    members: np.ndarray  # (M,) int64 slot of each subset member, subset-major then class
    member_groups: np.ndarray  # (M,) int64 problem id = subset * C + class
    check_slots: np.ndarray  # (S,) int64 slots measured by checks, sorted
    # (C,) int64 examples of each class selected per coreset (sum B), and (C,) float64 each
    # class's share of the objective, both fixed from the pool when the region opens.
    class_budgets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    class_shares: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    phase: Phase = Phase.EMBED
    embeddings: np.ndarray | None = None  # (U, d) float32 while collecting
    losses: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (U,)
    received: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (U,)
    coreset_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    coreset_weights: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    coreset_offsets: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    initial_loss: float = 0.0
    last_decided: int = -1  # last step whose check is decided (start_step - 1 before any)
    pending: dict[int, CheckReport] = field(default_factory=dict)  # rank -> report
    decisions: dict[int, CheckDecision] = field(default_factory=dict)  # step -> decision
    curvature: float | None = None
    mode: str = "crest"  # "crest": coresets from embeddings; "random": random batches

    def rank_slots(self, rank: int) -> slice:
        return slice(int(self.rank_offsets[rank]), int(self.rank_offsets[rank + 1]))

    def next_check(self) -> int:
        """The step after which the next undecided check is due."""
        return self.last_decided + self.check_interval

    def can_close(self) -> bool:
        """True when nothing undecided could still move ``end_step`` earlier.

        A failed check after step ``t`` ends the region at ``t + 2``, so checks after steps
        ``>= end_step - 2`` cannot matter.
        """
        return self.end_reason == "check" or self.next_check() >= self.end_step - 2

    def coreset(self, subset: int) -> tuple[np.ndarray, np.ndarray]:
        span = slice(int(self.coreset_offsets[subset]), int(self.coreset_offsets[subset + 1]))
        return self.coreset_indices[span], self.coreset_weights[span]

    def view(self, rank: int) -> RegionView:
        slots = self.rank_slots(rank)
        in_rank = (self.check_slots >= slots.start) & (self.check_slots < slots.stop)
        batches: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
        if self.phase is Phase.READY:
            first = rank * self.num_coresets
            batches = tuple(self.coreset(s) for s in range(first, first + self.num_coresets))
        if self.phase is Phase.READY:
            status = RegionStatus.READY
        elif self.phase is Phase.EMBED and not self.received[slots].all():
            status = RegionStatus.EMBED
        else:
            status = RegionStatus.SELECTING  # this rank's part is in: wait for the rest
        return RegionView(
            region_id=self.region_id,
            status=status,
            start_step=self.start_step,
            end_step=self.end_step,
            check_interval=self.check_interval,
            candidates=self.candidates[slots],
            check_indices=self.candidates[self.check_slots[in_rank]],
            batches=batches,
            initial_loss=self.initial_loss,
        )


class JobState:
    """All state of one job. Methods validate fully before they change anything.

    Args:
        job_id: the job's name.
        config: the validated job configuration.
        labels: ``(N,)`` integer labels in ``[0, C)``.

    Raises:
        InvalidArgument: labels of the wrong shape, type or range.
    """

    def __init__(self, job_id: str, config: JobConfig, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
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
        self.job_id = job_id
        self.config = config
        self.pool = ExamplePool(labels, config.num_classes, config.loss_window)
        self.region: Region | None = None
        self.past: list[Region] = []  # closed regions, without embeddings
        self.stats: list[RegionStats] = []
        self.drop_evaluations = 0
        self.next_drop_step = self._drop_every() if config.drop_interval > 0 else math.inf
        self.curvature_reference = 0.0
        self.next_check_interval = config.check_interval
        self.next_num_coresets = config.num_coresets
        self.committed_seq = [0] * config.world_size  # last upload sequence number per rank
        self.trainer_times: dict[int, tuple[float, float]] = {}  # rank -> (train, selection) s
        # Strategy: what the next region will be, and why (auto's decisions, for statistics).
        self.next_mode = "random" if config.strategy == "random" else "crest"
        self.next_decision = f"strategy {config.strategy}"
        self.auto_random_until = 0.0  # auto: random batches until this step, then re-test

    # ----------------------------------------------------------------------------- regions
    def view(self, rank: int, step: int) -> RegionView:
        """The region that holds ``step`` for ``rank``, opening the next region when due.

        Raises:
            InvalidArgument: rank or step out of range.
            FailedPrecondition: ``step`` lies beyond an undecided check.
        """
        self._check_rank(rank)
        total = self.config.total_steps
        if step < 0:
            raise InvalidArgument(f"step must be >= 0, got {step}")
        if step >= total:
            return RegionView(
                region_id=-1, status=RegionStatus.DONE, start_step=total, end_step=total
            )
        region = self.region
        if region is None:
            if step != 0:
                raise FailedPrecondition(f"the job has not started; ask for step 0, not {step}")
            region = self._open_region(0)
        if step < region.start_step:
            return self._past_region(step).view(rank)
        if step >= region.end_step:
            if step > region.end_step or not region.can_close():
                raise FailedPrecondition(
                    f"step {step} is beyond region {region.region_id}; the check after step "
                    f"{region.next_check()} is not decided yet"
                )
            region = self._open_region(step)
        elif step > region.next_check() + 1:
            raise FailedPrecondition(
                f"step {step} needs the check after step {region.next_check()} first"
            )
        return region.view(rank)

    def _past_region(self, step: int) -> Region:
        for region in reversed(self.past):
            if region.start_step <= step < region.end_step:
                return region
        raise FailedPrecondition(f"step {step} belongs to no recorded region")

    def _open_region(self, start: int) -> Region:
        cfg = self.config
        previous = self.region
        if previous is not None:
            self._close(previous)
        region_id = 0 if previous is None else previous.region_id + 1
        dropped = readmitted = 0
        if start >= self.next_drop_step:
            outcome = self.pool.evaluate_drops(
                evaluation=self.drop_evaluations,
                learned_loss=cfg.learned_loss,
                floor_per_class=self._pool_floor(),
                max_dropped=math.floor(cfg.max_drop_frac * cfg.num_examples),
                readmit_after=cfg.readmit_after,
            )
            dropped, readmitted = outcome.dropped, outcome.readmitted
            self.drop_evaluations += 1
            while self.next_drop_step <= start:
                self.next_drop_step += self._drop_every()

        rng = np.random.default_rng([cfg.seed, region_id])
        if self.next_mode == "random":
            region = self._random_region(region_id, start, rng)
        else:
            region = self._crest_region(region_id, start, rng)
        self.region = region
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
                decision=self.next_decision,
            )
        )
        return region

    def _region_end(self, start: int, steps: int | None) -> tuple[int, str]:
        end = self.config.total_steps if steps is None else start + steps
        return (
            (end, "bound") if end < self.config.total_steps else (self.config.total_steps, "budget")
        )

    def _crest_region(self, region_id: int, start: int, rng: np.random.Generator) -> Region:
        """A region that asks for embeddings: W x P stratified random subsets to select from."""
        cfg = self.config
        num_coresets = self.next_num_coresets
        world = cfg.world_size
        budgets = self.pool.class_quotas(cfg.batch_size, cfg.class_weighting)
        per_class = np.maximum(
            self.pool.class_quotas(cfg.resolved_subset_size, cfg.class_weighting), budgets
        )
        subsets = self.pool.draw_subsets(rng, world, num_coresets, per_class)

        # Slots: each rank's distinct candidates, sorted; members point at slots.
        candidates, rank_offsets, members, member_groups = [], [0], [], []
        classes = cfg.num_classes
        for rank in range(world):
            mine = subsets[rank * num_coresets : (rank + 1) * num_coresets]
            flat = [part for subset in mine for part in subset]
            unique = np.unique(np.concatenate(flat))
            base = rank_offsets[-1]
            for offset, subset in enumerate(mine):
                for label, part in enumerate(subset):
                    members.append(base + np.searchsorted(unique, part))
                    problem = (rank * num_coresets + offset) * classes + label
                    member_groups.append(np.full(len(part), problem, dtype=np.int64))
            candidates.append(unique)
            rank_offsets.append(base + len(unique))
        num_slots = rank_offsets[-1]
        check_slots = self._draw_check_slots(rng, np.asarray(rank_offsets))
        uses = cfg.max_coreset_uses
        end, reason = self._region_end(start, None if uses is None else num_coresets * uses)
        return Region(
            region_id=region_id,
            start_step=start,
            end_step=end,
            end_reason=reason,
            num_coresets=num_coresets,
            check_interval=self.next_check_interval,
            candidates=np.concatenate(candidates).astype(np.int64),
            rank_offsets=np.asarray(rank_offsets, dtype=np.int64),
            members=np.concatenate(members).astype(np.int64),
            member_groups=np.concatenate(member_groups),
            check_slots=check_slots,
            class_budgets=budgets,
            class_shares=self.pool.class_shares(cfg.class_weighting),
            losses=np.zeros(num_slots, np.float32),
            received=np.zeros(num_slots, bool),
            last_decided=start - 1,
        )

    def _random_region(self, region_id: int, start: int, rng: np.random.Generator) -> Region:
        """A region of random batches (weight 1), ready at once: no embeddings, no checks.

        It lasts one virtual epoch of distinct batches, or until ``auto`` re-tests coresets.
        """
        cfg = self.config
        world = cfg.world_size
        steps = max(1, math.floor(cfg.steps_per_virtual_epoch))
        if cfg.strategy == "auto":
            steps = max(1, min(steps, math.ceil(self.auto_random_until) - start))
        batches: list[np.ndarray] = []  # rank-major: rank q's batches are [q*steps, (q+1)*steps)
        shares = self.pool.class_shares(cfg.class_weighting)
        if cfg.random_batches == "stratified":
            budgets = self.pool.class_quotas(cfg.batch_size, cfg.class_weighting)
            subsets = self.pool.draw_subsets(rng, world, steps, budgets)
            batches = [np.sort(np.concatenate(parts)) for parts in subsets]
        else:
            shares = np.array_split(rng.permutation(np.flatnonzero(self.pool.in_pool)), world)
            for share in shares:
                if len(share) >= steps * cfg.batch_size:
                    batches += list(np.sort(share[: steps * cfg.batch_size].reshape(steps, -1)))
                else:
                    size = min(cfg.batch_size, len(share))
                    batches += [
                        np.sort(rng.choice(share, size, replace=False)) for _ in range(steps)
                    ]
        end, reason = self._region_end(start, steps)
        sizes = [len(b) for b in batches]
        indices = np.concatenate(batches).astype(np.int64)
        weights = np.ones(len(indices))
        if cfg.random_batches == "stratified":  # each class's share of the loss, as coresets
            subset = np.repeat(np.arange(len(batches)), sizes)
            labels = self.pool.labels[indices]
            weights = class_weights(np.ones(len(indices)), subset, labels, shares)
        empty = np.zeros(0, np.int64)
        return Region(
            region_id=region_id,
            start_step=start,
            end_step=end,
            end_reason=reason,
            num_coresets=steps,
            check_interval=steps,  # no check is due inside the region
            candidates=empty,
            rank_offsets=np.zeros(world + 1, np.int64),
            members=empty,
            member_groups=empty,
            check_slots=empty,
            class_shares=shares,
            phase=Phase.READY,
            coreset_indices=indices,
            coreset_weights=weights.astype(np.float32),
            coreset_offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            last_decided=start - 1,
            mode="random",
        )

    def _draw_check_slots(self, rng: np.random.Generator, rank_offsets: np.ndarray) -> np.ndarray:
        """A bounded sample of each rank's candidates (an equal share per rank)."""
        size = self.config.check_sample_size
        if size == 0:
            return np.arange(rank_offsets[-1], dtype=np.int64)
        share = math.ceil(size / self.config.world_size)
        picks = []
        for lo, hi in itertools.pairwise(rank_offsets):
            picks.append(np.sort(rng.choice(np.arange(lo, hi), min(share, hi - lo), replace=False)))
        return np.concatenate(picks).astype(np.int64)

    def _close(self, region: Region) -> None:
        """Adapt k and P from the closing region's curvature, and archive it."""
        cfg = self.config
        if cfg.adaptive and region.curvature is not None and region.curvature > 0:
            self.curvature_reference = max(self.curvature_reference, region.curvature)
            k = math.ceil(self.curvature_reference / region.curvature - 1e-9)
            self.next_check_interval = min(max(k, 1), cfg.max_check_interval)
            self.next_num_coresets = min(
                cfg.num_coresets * self.next_check_interval,
                max(cfg.resolved_max_coresets, cfg.num_coresets),
            )
        stats = self.stats[region.region_id]
        stats.end_step, stats.end_reason = region.end_step, region.end_reason
        stats.curvature = region.curvature
        if cfg.strategy == "auto":
            self._auto_decide(region, stats)
        region.pending = {}
        self.past.append(region)

    def _auto_decide(self, region: Region, stats: RegionStats) -> None:
        """Strategy ``auto``: keep coresets while they beat random batches, else re-test later.

        After a coreset region, ``gain = random_error / coreset_error`` (the monitor, from
        embeddings the coordinator holds; 1 when both are 0). With ``gain >= auto_min_gain``
        the next region uses coresets again; otherwise random batches run for
        ``auto_retest_epochs`` virtual epochs, and then one coreset region re-tests. Only the
        monitor decides, so the choice is deterministic for a seed.
        """
        cfg = self.config
        if region.mode == "random":
            if region.end_step >= self.auto_random_until:
                self.next_mode, self.next_decision = "crest", "re-test coresets"
            return
        gain = monitor_gain(stats.coreset_error, stats.random_error)
        if gain is None or gain >= cfg.auto_min_gain:
            self.next_mode = "crest"
            self.next_decision = (
                "no monitor yet" if gain is None else f"coresets {gain:.2f}x better: keep them"
            )
            return
        retest = cfg.auto_retest_epochs * cfg.steps_per_virtual_epoch
        self.auto_random_until = region.end_step + max(1.0, retest)
        self.next_mode = "random"
        self.next_decision = (
            f"coresets only {gain:.2f}x better than random batches (< {cfg.auto_min_gain:g}): "
            f"random until step {math.ceil(self.auto_random_until)}"
        )

    def _pool_floor(self) -> np.ndarray:
        """``(C,)`` pool members each class keeps: enough for P x W disjoint subsets."""
        cfg = self.config
        if cfg.min_pool_per_class is not None:
            return np.full(cfg.num_classes, cfg.min_pool_per_class, np.int64)
        per_class = self.pool.class_quotas(cfg.resolved_subset_size, cfg.class_weighting)
        return per_class * cfg.num_coresets * cfg.world_size

    def _drop_every(self) -> float:
        return max(1.0, self.config.drop_interval * self.config.steps_per_virtual_epoch)

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
        """Store a rank's embeddings and losses for some of its candidates.

        Args:
            indices: ``(n,)`` int64 example indices, distinct, all candidates of ``rank``.
            embeddings: ``(n, d)`` float32 or float16, finite.
            losses: ``(n,)`` float32, finite and >= 0 (eval-mode per-example loss).
            seq: the upload's sequence number for this rank (counted from 1 over the whole
                job), or None for an unsequenced in-process call. A committed number is
                skipped; a gap is refused.

        Raises:
            InvalidArgument: malformed arrays or indices. FailedPrecondition: a sequence gap,
            or the region is not the current one or no longer collecting.
        """
        self._check_rank(rank)
        if seq is not None:
            committed = self.committed_seq[rank]
            if seq <= committed:
                return Upload.DUPLICATE
            if seq != committed + 1:
                expected = committed + 1
                raise FailedPrecondition(
                    f"upload sequence {seq} of rank {rank} is out of order: expected {expected}"
                )
        region = self._current(region_id)
        if region.phase is not Phase.EMBED:
            raise FailedPrecondition(f"region {region_id} is not collecting embeddings")
        indices, embeddings, losses = _validate_upload(indices, embeddings, losses)
        if region.embeddings is not None and embeddings.shape[1] != region.embeddings.shape[1]:
            raise InvalidArgument(
                f"embedding dim {embeddings.shape[1]} differs from this region's "
                f"{region.embeddings.shape[1]}"
            )
        span = region.rank_slots(rank)
        mine = region.candidates[span]
        pos = np.searchsorted(mine, indices)
        pos_clipped = np.minimum(pos, len(mine) - 1)
        if len(mine) == 0 or not np.array_equal(mine[pos_clipped], indices):
            bad = indices[(pos >= len(mine)) | (mine[pos_clipped] != indices)][:5]
            raise InvalidArgument(
                f"indices {bad.tolist()} are not candidates of rank {rank} in region {region_id}"
            )
        slots = span.start + pos
        if len(slots) and slots[-1] - slots[0] == len(slots) - 1:
            slots = slice(int(slots[0]), int(slots[-1]) + 1)  # in order: a plain copy
        if region.embeddings is None:
            region.embeddings = np.zeros((len(region.candidates), embeddings.shape[1]), np.float32)
        region.embeddings[slots] = embeddings
        region.losses[slots] = losses
        region.received[slots] = True
        if seq is not None:
            self.committed_seq[rank] = seq
        if region.received.all():
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
    def selection_request(self) -> SelectionRequest:
        region = self.region
        if region is None or region.phase is not Phase.SELECTING:
            raise FailedPrecondition("no region is waiting for selection")
        assert region.embeddings is not None
        num_subsets = self.config.world_size * region.num_coresets
        return SelectionRequest(
            job_id=self.job_id,
            embeddings=region.embeddings[region.members],
            groups=region.member_groups,
            budgets=np.tile(region.class_budgets, num_subsets),  # problem = subset * C + class
        )

    def complete_selection(self, region_id: int, result: SelectionResult) -> None:
        """Assemble the region's coresets from a selector's answer to :meth:`selection_request`.

        ``result.rows`` index the request's rows (subset members); its groups must be those
        rows' problems, non-decreasing; its weights raw cluster sizes (>= 1).
        """
        region = self._current(region_id)
        if region.phase is not Phase.SELECTING:
            raise FailedPrecondition(f"region {region_id} is not waiting for selection")
        rows = np.asarray(result.rows, dtype=np.int64)
        groups = np.asarray(result.groups, dtype=np.int64)
        weights = np.asarray(result.weights, dtype=np.float32)
        if not (rows.shape == groups.shape == weights.shape) or rows.ndim != 1:
            raise InvalidArgument("rows, groups and weights must be 1-D of one length")
        if rows.size and (rows.min() < 0 or rows.max() >= len(region.members)):
            raise InvalidArgument("selected rows out of range")
        if not np.array_equal(region.member_groups[rows], groups) or np.any(np.diff(groups) < 0):
            raise InvalidArgument("selected rows do not match their problems")
        if not np.all(np.isfinite(weights)) or np.any(weights < 1):
            raise InvalidArgument("weights must be finite and >= 1")

        self._assemble(region, rows, groups, weights)

    def complete_fallback(self, region_id: int) -> None:
        """Complete a region without selection: stratified random batches of weight 1.

        For when the selector failed or missed its deadline. Each subset yields one batch of
        the region's class budgets in random members, drawn reproducibly for the seed and
        region, weighted like random batches (each class's share of the objective).
        """
        region = self._current(region_id)
        if region.phase is not Phase.SELECTING:
            raise FailedPrecondition(f"region {region_id} is not waiting for selection")
        rng = np.random.default_rng([self.config.seed, region_id, 1])
        classes = self.config.num_classes
        rows = []
        for problem in np.unique(region.member_groups):
            members = np.flatnonzero(region.member_groups == problem)
            budget = int(region.class_budgets[problem % classes])
            rows.append(np.sort(rng.choice(members, min(budget, len(members)), replace=False)))
        chosen = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        self.stats[region_id].fallback = True
        weights = np.ones(len(chosen))
        self._assemble(region, chosen, region.member_groups[chosen], weights, monitor=False)

    def _assemble(
        self,
        region: Region,
        rows: np.ndarray,
        groups: np.ndarray,
        weights: np.ndarray,
        monitor: bool = True,
    ) -> None:
        """Turn chosen subset members into the region's coresets and record statistics.

        ``weights`` are raw (cluster sizes, or ones): within each (subset, class) they are
        rescaled to sum to the class's share of the objective, then to mean 1 over the region.
        """
        classes = self.config.num_classes
        num_subsets = self.config.world_size * region.num_coresets
        slots = region.members[rows]
        region.coreset_indices = region.candidates[slots]
        weights = class_weights(weights, groups // classes, groups % classes, region.class_shares)
        region.coreset_weights = weights.astype(np.float32)
        counts = np.bincount(groups // classes, minlength=num_subsets)
        region.coreset_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        region.initial_loss = float(region.losses[region.check_slots].mean())
        region.phase = Phase.READY
        stats = self.stats[region.region_id]
        if monitor and region.embeddings is not None:
            stats.coreset_error, stats.random_error = coreset_quality(
                region, rows, groups, weights, self.config, np.random.default_rng(
                    [self.config.seed, region.region_id, 2]
                ),
            )  # fmt: skip
        region.embeddings = None  # selection and the monitor were their only uses

        # Loss history: one observation per distinct example (ranks may share a few).
        unique, first = np.unique(region.candidates, return_index=True)
        self.pool.record_losses(unique, region.losses[first])

        stats.candidate_loss = float(region.losses.mean())
        stats.selected_loss = float(region.losses[slots].mean()) if slots.size else None
        stats.weight_quantiles = np.quantile(
            region.coreset_weights, [0, 0.25, 0.5, 0.75, 1]
        ).tolist()
        stats.initial_loss = region.initial_loss

    # ------------------------------------------------------------------------------ checks
    def record_check(self, rank: int, report: CheckReport) -> CheckDecision | None:
        """Record one rank's check scalars; decide once every rank has reported.

        Returns:
            The decision, or None while other ranks have not reported. Reporting a step that
            is already decided, in this region or a past one (a trainer replaying from a
            checkpoint), returns the recorded decision.

        Raises:
            InvalidArgument: malformed scalars or a step that is not a check step.
            FailedPrecondition: wrong region, phase, or a check out of order.
        """
        self._check_rank(rank)
        if 0 <= report.region_id < len(self.past):  # past regions are archived in id order
            past = self.past[report.region_id]
            if report.step in past.decisions:
                return past.decisions[report.step]
        region = self._current(report.region_id)
        if report.step in region.decisions:
            return region.decisions[report.step]
        if region.phase is not Phase.READY:
            raise FailedPrecondition(f"region {region.region_id} has no coresets yet")
        values = (report.loss_sum, report.linear, report.quadratic, report.curvature)
        if not all(math.isfinite(v) for v in values):
            raise InvalidArgument("check scalars must be finite")
        if report.loss_sum < 0 or report.count < 0 or report.curvature < 0:
            raise InvalidArgument("loss_sum, count and curvature must be >= 0")
        if report.step != region.next_check() or report.step >= region.end_step:
            raise FailedPrecondition(
                f"the next check of region {region.region_id} is after step "
                f"{region.next_check()}, not {report.step}"
            )
        region.pending[rank] = report
        self.trainer_times[rank] = (report.train_seconds, report.selection_seconds)
        if len(region.pending) < self.config.world_size:
            return None
        return self._decide(region)

    def _decide(self, region: Region) -> CheckDecision:
        reports = list(region.pending.values())
        step = reports[0].step
        count = sum(r.count for r in reports)
        loss = sum(r.loss_sum for r in reports) / max(count, 1)
        linear = sum(r.linear for r in reports) / len(reports)
        quadratic = sum(r.quadratic for r in reports) / len(reports)
        predicted = region.initial_loss + linear + 0.5 * quadratic
        error = abs(loss - predicted) / loss if loss > 0 else (0.0 if predicted == 0 else math.inf)
        new_region = error > self.config.tau
        if region.curvature is None:
            region.curvature = sum(r.curvature for r in reports) / len(reports)
        if new_region and step + 2 < region.end_step:
            region.end_step, region.end_reason = step + 2, "check"
        new_region = new_region or step + 2 >= region.end_step  # bound or budget ends it anyway
        decision = CheckDecision(
            region_id=region.region_id,
            step=step,
            new_region=new_region,
            loss=loss,
            predicted=predicted,
            relative_error=error,
        )
        region.decisions[step] = decision
        region.last_decided = step
        region.pending = {}
        self.stats[region.region_id].checks.append(
            CheckRecord(
                step=step,
                loss=loss,
                predicted=predicted,
                relative_error=error,
                new_region=new_region,
            )
        )
        return decision

    # ----------------------------------------------------------------------------- helpers
    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.config.world_size:
            raise InvalidArgument(f"rank must lie in [0, {self.config.world_size}), got {rank}")

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
            dropped=int((~self.pool.in_pool).sum()),
            regions=[s.model_copy(deep=True) for s in self.stats],
            trainers=[
                TrainerTime(rank=rank, train_seconds=t[0], selection_seconds=t[1])
                for rank, t in sorted(self.trainer_times.items())
            ],
        )

    # ------------------------------------------------------------------------ persistence
    def to_state(self) -> dict[str, Any]:
        """A tree of scalars, strings and numpy arrays that :meth:`from_state` rebuilds."""
        return {
            "job_id": self.job_id,
            "config": self.config.model_dump(mode="json"),
            "pool": self.pool.to_state(),
            "region": None if self.region is None else _region_to_state(self.region),
            "past": [_region_to_state(r) for r in self.past],
            "stats": [s.model_dump(mode="json") for s in self.stats],
            "drop_evaluations": self.drop_evaluations,
            "next_drop_step": None if math.isinf(self.next_drop_step) else self.next_drop_step,
            "curvature_reference": self.curvature_reference,
            "next_check_interval": self.next_check_interval,
            "next_num_coresets": self.next_num_coresets,
            "committed_seq": list(self.committed_seq),
            "trainer_times": {str(r): list(t) for r, t in self.trainer_times.items()},
            "next_mode": self.next_mode,
            "next_decision": self.next_decision,
            "auto_random_until": self.auto_random_until,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> JobState:
        config = JobConfig.model_validate(state["config"])
        job = cls(state["job_id"], config, state["pool"]["labels"])
        job.pool = ExamplePool.from_state(state["pool"])
        job.region = None if state["region"] is None else _region_from_state(state["region"])
        job.past = [_region_from_state(r) for r in state["past"]]
        job.stats = [RegionStats.model_validate(s) for s in state["stats"]]
        job.drop_evaluations = state["drop_evaluations"]
        nds = state["next_drop_step"]
        job.next_drop_step = math.inf if nds is None else nds
        job.curvature_reference = state["curvature_reference"]
        job.next_check_interval = state["next_check_interval"]
        job.next_num_coresets = state["next_num_coresets"]
        job.committed_seq = list(state["committed_seq"])
        job.trainer_times = {int(r): (t[0], t[1]) for r, t in state["trainer_times"].items()}
        job.next_mode = state["next_mode"]
        job.next_decision = state["next_decision"]
        job.auto_random_until = state["auto_random_until"]
        return job


def coreset_quality(
    region: Region,
    rows: np.ndarray,
    groups: np.ndarray,
    weights: np.ndarray,
    config: JobConfig,
    rng: np.random.Generator,
    draws: int = 4,
) -> tuple[float, float]:
    """The monitor: how well each batch's mean embedding-gradient matches its subset's.

    For every subset V, ``‖ḡ_S − ḡ_V‖² / ‖ḡ_V‖²`` for the weighted coreset S (its class-weighted
    cluster sizes; ḡ_V is V's mean over the objective's class mix) and, averaged over ``draws``
    draws, for stratified random batches with the coreset's per-class sizes drawn from V.
    Returns both errors averaged over the subsets.
    """
    assert region.embeddings is not None
    classes = config.num_classes
    embeddings = region.embeddings[region.members].astype(np.float64)  # (M, d)
    member_groups = region.member_groups
    num_subsets = int(member_groups.max()) // classes + 1 if len(member_groups) else 0

    def subset_means(subset: np.ndarray, vectors: np.ndarray, w: np.ndarray) -> np.ndarray:
        # One bincount per dimension: much faster than np.add.at on (rows, d).
        sums = np.stack(
            [np.bincount(subset, w * vectors[:, j], num_subsets) for j in range(vectors.shape[1])],
            axis=1,
        )  # (S, d)
        return sums / np.maximum(np.bincount(subset, w, minlength=num_subsets), 1e-12)[:, None]

    def relative_errors(estimate: np.ndarray) -> np.ndarray:  # (S,) one per subset
        return ((estimate - target) ** 2).sum(1) / ((target**2).sum(1) + 1e-12)

    member_subset = member_groups // classes
    member_labels = member_groups % classes
    shares = region.class_shares

    def stratified(rows: np.ndarray) -> np.ndarray:  # weights: each class its share
        return class_weights(np.ones(len(rows)), member_subset[rows], member_labels[rows], shares)

    # The subset's mean over the objective's class mix (what a coreset batch estimates).
    target = subset_means(member_subset, embeddings, stratified(np.arange(len(embeddings))))
    weights = class_weights(weights, groups // classes, groups % classes, shares)  # idempotent
    coreset = subset_means(groups // classes, embeddings[rows], weights)
    # Stratified random batches of the coreset's per-(subset, class) sizes: rank members by a
    # random key within their (subset, class) problem and keep the first ones.
    take = np.bincount(groups, minlength=int(member_groups.max()) + 1)
    order_in_group = np.argsort(member_groups, kind="stable")
    group_start = np.searchsorted(member_groups[order_in_group], member_groups)
    random_errors = []
    for _ in range(draws):
        order = np.argsort(member_groups + rng.random(len(member_groups)))  # by group, shuffled
        position = np.arange(len(order)) - group_start[order]
        chosen = order[position < take[member_groups[order]]]
        estimate = subset_means(member_subset[chosen], embeddings[chosen], stratified(chosen))
        random_errors.append(relative_errors(estimate))
    return float(relative_errors(coreset).mean()), float(np.mean(random_errors))


def class_weights(
    raw: np.ndarray, subset: np.ndarray, labels: np.ndarray, shares: np.ndarray
) -> np.ndarray:
    """Batch weights under which each class carries its share of the objective.

    Within each (batch, class), ``raw`` (cluster sizes, or ones) is rescaled to sum to the
    class's share, so a weighted batch estimates the loss over the objective's class mix
    whatever rounding did to the class counts; then all weights are rescaled to mean 1.

    Args:
        raw: ``(n,)`` positive raw weights. subset: ``(n,)`` int64 batch of each row.
        labels: ``(n,)`` int64 class of each row. shares: ``(C,)`` float64, sums to 1.

    Returns:
        ``(n,)`` float64 weights with mean 1 (empty for ``n = 0``).
    """
    if len(raw) == 0:
        return np.zeros(0, np.float64)
    raw = np.asarray(raw, dtype=np.float64)
    problem = np.asarray(subset, np.int64) * len(shares) + labels  # (n,) (batch, class) id
    totals = np.bincount(problem, raw)  # (batches * C,) raw weight per (batch, class)
    weights = raw * shares[labels] / totals[problem]
    return weights / weights.mean()


def monitor_gain(coreset_error: float | None, random_error: float | None) -> float | None:
    """How many times smaller the coreset's gradient error is than a random batch's (1 when
    both are 0 to rounding: coresets are then no better; None when not measured)."""
    if coreset_error is None or random_error is None:
        return None
    if coreset_error <= _EXACT:
        return math.inf if random_error > _EXACT else 1.0
    return random_error / coreset_error


_EXACT = 1e-12  # a relative squared error this small is float64 rounding: an exact estimate


def _validate_upload(
    indices: np.ndarray, embeddings: np.ndarray, losses: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    indices, embeddings, losses = np.asarray(indices), np.asarray(embeddings), np.asarray(losses)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise InvalidArgument(
            f"indices must be a 1-D integer array, got {indices.dtype}{list(indices.shape)}"
        )
    n = len(indices)
    if embeddings.ndim != 2 or embeddings.shape[0] != n:
        raise InvalidArgument(f"embeddings must have shape ({n}, d), got {embeddings.shape}")
    if embeddings.dtype not in (np.float32, np.float16):
        raise InvalidArgument(f"embeddings must be float32 or float16, got {embeddings.dtype}")
    if not 1 <= embeddings.shape[1] <= MAX_EMBEDDING_DIM:
        raise InvalidArgument(f"embedding dim must lie in [1, {MAX_EMBEDDING_DIM}]")
    if losses.shape != (n,) or not np.issubdtype(losses.dtype, np.floating):
        raise InvalidArgument(f"losses must be a float array of shape ({n},)")
    if not np.all(np.isfinite(embeddings)):
        raise InvalidArgument("embeddings contain NaN or Inf")
    if not np.all(np.isfinite(losses)) or np.any(losses < 0):
        raise InvalidArgument("losses must be finite and >= 0")
    if len(np.unique(indices)) != n:
        raise InvalidArgument("indices contain duplicates")
    if n > 1 and not np.all(indices[1:] > indices[:-1]):  # clients usually send them sorted
        order = np.argsort(indices, kind="stable")
        indices, embeddings, losses = indices[order], embeddings[order], losses[order]
    return (
        np.asarray(indices, dtype=np.int64),
        np.asarray(embeddings, dtype=np.float32),
        np.asarray(losses, dtype=np.float32),
    )


_REGION_ARRAYS = (
    "candidates", "rank_offsets", "members", "member_groups", "check_slots", "class_budgets",
    "class_shares", "losses", "received", "coreset_indices", "coreset_weights",
    "coreset_offsets",
)  # fmt: skip
_REGION_SCALARS = (
    "region_id", "start_step", "end_step", "end_reason", "num_coresets", "check_interval",
    "initial_loss", "last_decided", "curvature", "mode",
)  # fmt: skip


def _region_to_state(region: Region) -> dict[str, Any]:
    state: dict[str, Any] = {name: getattr(region, name) for name in _REGION_ARRAYS}
    state.update({name: getattr(region, name) for name in _REGION_SCALARS})
    state["phase"] = region.phase.value
    state["embeddings"] = region.embeddings
    state["pending"] = {str(rank): vars(r) for rank, r in region.pending.items()}
    state["decisions"] = [vars(d) for d in region.decisions.values()]
    return state


def _region_from_state(state: dict[str, Any]) -> Region:
    region = Region(
        **{name: state[name] for name in _REGION_ARRAYS + _REGION_SCALARS},
        phase=Phase(state["phase"]),
        embeddings=state["embeddings"],
    )
    region.pending = {int(rank): CheckReport(**r) for rank, r in state["pending"].items()}
    region.decisions = {d["step"]: CheckDecision(**d) for d in state["decisions"]}
    return region
