"""Regions: what one quadratic region holds, how it is drawn, and how it is stored.

A CREST region draws ``W x P`` class-stratified random subsets from the pool (P per rank),
collects every rank's embeddings of its own candidates, and becomes ``P`` weighted mini-batch
coresets per rank once selection answers. A random region holds stratified (or uniform)
random batches and is ready at once. Arrays over *candidate slots* are rank-major.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, Literal

import numpy as np

from crest.proto import steps
from crest.proto.contract import CheckDecision, CheckReport, JobConfig, RegionStatus, RegionView
from crest.service.pool import ExamplePool, class_weights, distinct


class Phase(StrEnum):
    EMBED = "embed"
    SELECTING = "selecting"
    READY = "ready"


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
    # (S, C) int64 examples of each class selected per coreset (rows sum to B), and (C,)
    # float64 each class's share of the objective, both fixed when the region opens.
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
    pending: dict[int, CheckReport] = field(default_factory=dict)  # rank -> report (or 0 -> all)
    decisions: dict[int, CheckDecision] = field(default_factory=dict)  # step -> decision
    curvature: float | None = None
    mode: Literal["crest", "random"] = (
        "crest"  # "crest": coresets from embeddings; "random": random batches
    )
    # Who embeds the candidates: the ranks ("trainer", at the region's start) or the
    # selectors ("service", from the weights published at step ``weights_version``).
    embedded_by: Literal["trainer", "service"] = "trainer"
    weights_version: int = -1
    # Strategy auto's test: the slots of its probe sample, embedded with the candidates (rank
    # 0's) for their losses only: never subset members. Empty outside a test.
    probe_slots: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def rank_slots(self, rank: int) -> slice:
        return slice(int(self.rank_offsets[rank]), int(self.rank_offsets[rank + 1]))

    def next_check(self) -> int:
        """The step after which the next undecided check is due."""
        return self.last_decided + self.check_interval

    def can_close(self) -> bool:
        """True when nothing undecided could still move ``end_step`` earlier (a check after
        step ``t`` could end the region at ``t + DECISION_LAG`` at the earliest)."""
        latest = self.end_step - steps.DECISION_LAG
        return self.end_reason == "check" or self.next_check() >= latest

    def coreset(self, subset: int) -> tuple[np.ndarray, np.ndarray]:
        span = slice(int(self.coreset_offsets[subset]), int(self.coreset_offsets[subset + 1]))
        return self.coreset_indices[span], self.coreset_weights[span]

    def view(self, rank: int) -> RegionView:
        slots = self.rank_slots(rank)
        in_rank = (self.check_slots >= slots.start) & (self.check_slots < slots.stop)
        batches: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
        if self.phase is Phase.READY:
            status = RegionStatus.READY
            first = rank * self.num_coresets
            batches = tuple(self.coreset(s) for s in range(first, first + self.num_coresets))
        elif (
            self.phase is Phase.EMBED
            and self.embedded_by == "trainer"
            and not self.received[slots].all()
        ):
            status = RegionStatus.EMBED
        else:
            status = RegionStatus.SELECTING  # wait for the rest, or for the selectors
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


def closed(region: Region) -> Region:
    """What a closed region keeps: what :meth:`Region.view` and its recorded decisions need
    (a trainer resuming from a checkpoint asks for them), without the selection's working
    arrays (members and their problems, losses, class budgets and shares, embeddings), which
    are as large as its candidates, or its classes, and never read again once it closed."""
    empty = np.zeros(0, np.int64)
    return dataclasses.replace(
        region,
        members=empty,
        member_groups=empty,
        class_budgets=empty,
        class_shares=np.zeros(0, np.float64),
        embeddings=None,
        losses=np.zeros(0, np.float32),
        # only an unfinished region's view reads which slots arrived
        received=region.received if region.phase is Phase.EMBED else np.zeros(0, bool),
        pending={},
    )


# ----------------------------------------------------------------------------- drawing
def region_end(config: JobConfig, start: int, length: int | None) -> tuple[int, str]:
    """End step and reason of a region of at most ``length`` steps (None: unbounded)."""
    end = config.total_steps if length is None else start + length
    return (end, "bound") if end < config.total_steps else (config.total_steps, "budget")


def crest_region(
    region_id: int,
    start: int,
    pool: ExamplePool,
    config: JobConfig,
    num_coresets: int,
    check_interval: int,
    rng: np.random.Generator,
    probe: np.ndarray | None = None,
) -> Region:
    """A region that asks for embeddings: W x P stratified random subsets to select from.

    Subsets hold each class in proportion to its share of the objective (``class_weighting``);
    each coreset will hold the class budgets, exactly ``batch_size`` examples. ``probe``:
    examples rank 0 embeds too, for their losses (strategy auto's test), in ``probe_slots``.
    """
    probe = np.zeros(0, np.int64) if probe is None else np.asarray(probe, np.int64)
    world, classes = config.world_size, config.num_classes
    num_subsets, weighting = world * num_coresets, config.class_weighting
    budgets = pool.quota_rows(config.batch_size, weighting, num_subsets, rng)  # (S, C)
    per_class = pool.quota_rows(config.resolved_subset_size, weighting, num_subsets, rng)
    subsets = pool.draw_subsets(rng, world, num_coresets, np.maximum(per_class, budgets))

    # Slots: each rank's distinct candidates, sorted; members point at slots.
    candidates, rank_offsets, members, member_groups = [], [0], [], []
    for rank in range(world):
        mine = subsets[rank * num_coresets : (rank + 1) * num_coresets]
        parts = [part for subset in mine for part in subset] + ([probe] if rank == 0 else [])
        unique = distinct(np.concatenate(parts))
        base = rank_offsets[-1]
        for offset, subset in enumerate(mine):
            for label, part in enumerate(subset):
                members.append(base + np.searchsorted(unique, part))
                problem = (rank * num_coresets + offset) * classes + label
                member_groups.append(np.full(len(part), problem, dtype=np.int64))
        candidates.append(unique)
        rank_offsets.append(base + len(unique))
    num_slots = rank_offsets[-1]
    offsets = np.asarray(rank_offsets, dtype=np.int64)
    uses = config.max_coreset_uses
    end, reason = region_end(config, start, None if uses is None else num_coresets * uses)
    return Region(
        region_id=region_id,
        start_step=start,
        end_step=end,
        end_reason=reason,
        num_coresets=num_coresets,
        check_interval=check_interval,
        candidates=np.concatenate(candidates).astype(np.int64),
        rank_offsets=offsets,
        members=np.concatenate(members).astype(np.int64),
        member_groups=np.concatenate(member_groups),
        check_slots=draw_check_slots(rng, offsets, config.check_sample_size, world),
        class_budgets=budgets,
        class_shares=pool.class_shares(config.class_weighting),
        losses=np.zeros(num_slots, np.float32),
        received=np.zeros(num_slots, bool),
        last_decided=start - 1,
        probe_slots=np.searchsorted(candidates[0], probe).astype(np.int64),
    )


def with_probe(region: Region, probe: np.ndarray, world: int) -> Region:
    """A random region whose rank 0 first embeds ``probe`` for its losses (strategy auto's
    test): it waits for them, then serves its random batches (nothing is selected)."""
    probe = distinct(np.asarray(probe, np.int64))
    return dataclasses.replace(
        region,
        candidates=probe,
        rank_offsets=np.array([0] + [len(probe)] * world, np.int64),
        phase=Phase.EMBED,
        losses=np.zeros(len(probe), np.float32),
        received=np.zeros(len(probe), bool),
        probe_slots=np.arange(len(probe), dtype=np.int64),
    )


def random_region(
    region_id: int,
    start: int,
    pool: ExamplePool,
    config: JobConfig,
    num_steps: int,
    rng: np.random.Generator,
) -> Region:
    """A region of ``num_steps`` random batches per rank, ready at once: no embeddings, no
    checks. Stratified batches hold the class budgets and weigh each class by its share of
    the objective (about 1 each); uniform batches are ``batch_size`` pool members of weight 1.
    """
    world = config.world_size
    batches: list[np.ndarray] = []  # rank-major: rank q's are [q * steps, (q + 1) * steps)
    shares = pool.class_shares(config.class_weighting)
    if config.random_batches == "stratified":
        budgets = pool.quota_rows(config.batch_size, config.class_weighting, world * num_steps, rng)
        subsets = pool.draw_subsets(rng, world, num_steps, budgets)
        batches = [np.sort(np.concatenate(parts)) for parts in subsets]
    else:
        for share in np.array_split(rng.permutation(np.flatnonzero(pool.in_pool)), world):
            if len(share) >= num_steps * config.batch_size:
                batches += list(
                    np.sort(share[: num_steps * config.batch_size].reshape(num_steps, -1))
                )
            else:
                size = min(config.batch_size, len(share))
                batches += [
                    np.sort(rng.choice(share, size, replace=False)) for _ in range(num_steps)
                ]
    end, reason = region_end(config, start, num_steps)
    sizes = [len(b) for b in batches]
    indices = np.concatenate(batches).astype(np.int64)
    weights = np.ones(len(indices))
    if config.random_batches == "stratified":  # each class's share of the loss, as coresets
        subset = np.repeat(np.arange(len(batches)), sizes)
        weights = class_weights(weights, subset, pool.labels[indices], shares)
    empty = np.zeros(0, np.int64)
    return Region(
        region_id=region_id,
        start_step=start,
        end_step=end,
        end_reason=reason,
        num_coresets=num_steps,
        check_interval=num_steps,  # no check is due inside the region
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


def draw_check_slots(
    rng: np.random.Generator, rank_offsets: np.ndarray, sample_size: int, world: int
) -> np.ndarray:
    """A bounded sample of each rank's candidates (an equal share per rank; 0 = all)."""
    if sample_size == 0:
        return np.arange(rank_offsets[-1], dtype=np.int64)
    share = math.ceil(sample_size / world)
    picks = []
    for lo, hi in itertools.pairwise(rank_offsets):
        picks.append(np.sort(rng.choice(np.arange(lo, hi), min(share, hi - lo), replace=False)))
    return np.concatenate(picks).astype(np.int64)


# ------------------------------------------------------------------------- label noise
MAD_SCALE = 1.4826
"""Scales the median absolute deviation to a normal distribution's standard deviation."""


def eligible_members(
    losses: np.ndarray,
    classes: np.ndarray,
    groups: np.ndarray,
    budgets: np.ndarray,
    mads: float,
    num_classes: int,
) -> np.ndarray:
    """Which subset members may represent their problem (``exclude_noisy``): a bool mask.

    A member is excluded when its loss exceeds both its class's ``median + mads x 1.4826 x
    MAD``, the median and the median absolute deviation taken over every member of that class
    in the region (more draws than one subset holds, so one subset's few outliers cannot move
    them), and ``ln(num_classes)``, the loss of a uniform guess: the model must find the label
    less likely than chance. Mislabelled examples are the ones the model fits worst within
    their (wrong) class, and facility location would otherwise pick them first (they cover
    only themselves). Without the floor, late in training (clean losses near 0, a MAD of a few
    hundredths) the rule also excluded the clean examples still being learned, and coresets of
    learned examples stalled the run. A floor of 2 x ln C kept W1's hardest clean examples
    (which CREST's gain is made of) but let most of W2-30's mislabelled ones through, and cost
    it 2.4 points (``docs/benchmarks.md``, section 1, "Label noise").
    Each problem keeps at least ``budgets[g]`` eligible members, its lowest-loss ones (ties:
    the earlier member), so a coreset is never short. Deterministic.

    Args:
        losses: ``(M,)`` each member's loss.
        classes: ``(M,)`` int64 each member's class.
        groups: ``(M,)`` int64 each member's problem, in ``[0, len(budgets))``.
        budgets: ``(G,)`` int64 how many members each problem selects.
        mads: ``k``, the threshold in (scaled) median absolute deviations.
        num_classes: C, whose ``ln`` is the least loss that may be excluded.
    """
    losses = np.asarray(losses, dtype=np.float64)
    median = _medians(losses, classes)
    spread = MAD_SCALE * _medians(np.abs(losses - median[classes]), classes)
    threshold = np.maximum(median + mads * spread, math.log(num_classes))
    eligible = losses <= threshold[classes]
    # Each problem's members by loss (then position): the first budget of them stay eligible.
    order = np.lexsort((np.arange(len(losses)), losses, groups))
    first = np.searchsorted(groups[order], groups[order])  # start of each member's problem
    rank = np.empty(len(losses), np.int64)
    rank[order] = np.arange(len(losses)) - first
    kept: np.ndarray = eligible | (rank < np.asarray(budgets)[groups])
    return kept


DISTANCE_BLOCK = 4_000_000
"""Distances :func:`excluded_weight` computes at a time (bounds its memory)."""


def excluded_weight(
    embeddings: np.ndarray,
    groups: np.ndarray,
    excluded: np.ndarray,
    selected: np.ndarray,
) -> np.ndarray:
    """How many excluded members each selected member stands for (``exclude_noisy``): each
    excluded member counts in the weight of its problem's most similar selected member
    (least Euclidean distance between embeddings; ties: the earlier), as a representative's
    cluster counts the members it is most similar to. CRUST's rule: medoids from the
    likely-clean members, weighted for all of them. Without it the mislabelled members'
    share of the weight went to the big clusters of easy examples, and the coresets trained
    worse than with the mislabelled examples in them (``docs/benchmarks.md``, "Label noise").

    Args:
        embeddings: ``(M, d)`` every member's embedding.
        groups: ``(M,)`` int64 every member's problem.
        excluded: ``(E,)`` int64 the excluded members (rows of ``embeddings``).
        selected: ``(K,)`` int64 the selected members, their problems non-decreasing.

    Returns ``(K,)`` int64 counts; an excluded member whose problem selected nobody counts
    nowhere.
    """
    counts = np.zeros(len(selected), np.int64)
    if not len(excluded) or not len(selected):
        return counts
    selected_groups = groups[selected]
    first = np.searchsorted(selected_groups, groups[excluded])
    sizes = np.searchsorted(selected_groups, groups[excluded], side="right") - first
    width = int(sizes.max())
    if width == 0:  # e.g. problems of budget 0 (fewer seats than classes)
        return counts
    dim = embeddings.shape[1] if embeddings.ndim == 2 else 1
    chunk = max(1, DISTANCE_BLOCK // max(1, width * dim))  # bounds the (chunk, width, d) block
    offsets = np.arange(width)
    for start in range(0, len(excluded), chunk):
        part = slice(start, start + chunk)
        slots = first[part, None] + offsets  # (n, width) positions in ``selected``
        valid = offsets < sizes[part, None]
        slots = np.where(valid, slots, 0)
        own = embeddings[excluded[part]].astype(np.float64)
        theirs = embeddings[selected[slots]].astype(np.float64)
        distances = np.linalg.norm(
            theirs.reshape(*slots.shape, -1) - own.reshape(len(own), 1, -1), axis=2
        )
        nearest = slots[np.arange(len(slots)), np.where(valid, distances, np.inf).argmin(1)]
        counts += np.bincount(nearest[valid.any(1)], minlength=len(selected))
    return counts


def _medians(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Median of ``values`` per key, indexed by key (0 for a key without values)."""
    if not len(values):
        return np.zeros(0)
    order = np.lexsort((values, keys))
    ordered, sorted_keys = values[order], keys[order]
    size = int(keys.max()) + 1
    starts = np.searchsorted(sorted_keys, np.arange(size))
    counts = np.bincount(keys, minlength=size)
    low = np.minimum(starts + np.maximum(counts - 1, 0) // 2, len(values) - 1)
    high = np.minimum(starts + counts // 2, len(values) - 1)
    medians: np.ndarray = np.where(counts > 0, (ordered[low] + ordered[high]) / 2, 0.0)
    return medians


# --------------------------------------------------------------------------- storage
_ENCODE: dict[str, Any] = {  # fields that are not plain scalars or arrays
    "phase": lambda phase: phase.value,
    "pending": lambda pending: {str(rank): vars(r) for rank, r in pending.items()},
    "decisions": lambda decisions: [vars(d) for d in decisions.values()],
}
_DECODE: dict[str, Any] = {
    "phase": Phase,
    "pending": lambda state: {int(rank): CheckReport(**r) for rank, r in state.items()},
    "decisions": lambda state: {d["step"]: CheckDecision(**d) for d in state},
}


def region_to_state(region: Region) -> dict[str, Any]:
    """Every field of ``region`` as scalars, strings and arrays (:mod:`crest.service.codec`);
    integer arrays in the narrowest unsigned type that holds them (example ids fit in 4 bytes:
    half the bytes of an archived region)."""
    return {
        f.name: _narrow(_ENCODE.get(f.name, _same)(getattr(region, f.name))) for f in fields(Region)
    }


def region_from_state(state: dict[str, Any]) -> Region:
    return Region(**{f.name: _DECODE.get(f.name, _widen)(state[f.name]) for f in fields(Region)})


def _narrow(value: Any) -> Any:
    if not (isinstance(value, np.ndarray) and value.dtype == np.int64 and value.size):
        return value
    low, high = int(value.min()), int(value.max())
    return value if low < 0 else value.astype(np.min_scalar_type(high))


def _widen(value: Any) -> Any:
    """Undo :func:`_narrow`: every integer array of a region is int64."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
        return value.astype(np.int64, copy=False)
    return value


def _same(value: Any) -> Any:
    return value
