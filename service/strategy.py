"""Strategies: how a region's batches are made, the monitor, and ``auto``'s decisions.

``crest`` regions serve coresets; ``random`` regions stratified random batches; ``auto``
serves coresets while the coreset-quality monitor says they beat random batches of the same
size, falls back to random batches otherwise, and re-tests coresets after a while.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from crest.proto.contract import JobConfig, RegionStats
from crest.service.pool import class_weights
from crest.service.region import Region


@dataclass
class AutoPolicy:
    """What the next region will be (``crest`` or ``random``) and why (for statistics)."""

    mode: str
    decision: str
    random_until: float = 0.0  # auto: random batches until this step, then a re-test

    @classmethod
    def start(cls, config: JobConfig) -> AutoPolicy:
        mode = "random" if config.strategy == "random" else "crest"
        return cls(mode=mode, decision=f"strategy {config.strategy}")

    def random_steps(self, start: int, config: JobConfig) -> int:
        """Length of a random region opening at ``start``: a virtual epoch of distinct
        batches, or until ``auto`` re-tests coresets."""
        length = max(1, math.floor(config.steps_per_virtual_epoch))
        if config.strategy == "auto":
            length = max(1, min(length, math.ceil(self.random_until) - start))
        return length

    def after(self, region: Region, stats: RegionStats, config: JobConfig) -> None:
        """Strategy ``auto``: keep coresets while they beat random batches, else re-test later.

        After a coreset region, ``gain = random_error / coreset_error`` (the monitor, from
        embeddings the coordinator holds; 1 when both are 0). With ``gain >= auto_min_gain``
        the next region uses coresets again; otherwise random batches run for
        ``auto_retest_epochs`` virtual epochs, and then one coreset region re-tests. Only the
        monitor decides, so the choice is deterministic for a seed.
        """
        if config.strategy != "auto":
            return
        if region.mode == "random":
            if region.end_step >= self.random_until:
                self.mode, self.decision = "crest", "re-test coresets"
            return
        gain = monitor_gain(stats.coreset_error, stats.random_error)
        if gain is None or gain >= config.auto_min_gain:
            self.mode = "crest"
            self.decision = (
                "no monitor yet" if gain is None else f"coresets {gain:.2f}x better: keep them"
            )
            return
        retest = config.auto_retest_epochs * config.steps_per_virtual_epoch
        self.random_until = region.end_step + max(1.0, retest)
        self.mode = "random"
        self.decision = (
            f"coresets only {gain:.2f}x better than random batches (< {config.auto_min_gain:g}): "
            f"random until step {math.ceil(self.random_until)}"
        )


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
        errors: np.ndarray = ((estimate - target) ** 2).sum(1) / ((target**2).sum(1) + 1e-12)
        return errors

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


# The monitor's budget per region: member rows x embedding dimensions it reads (4 Mi: about
# 0.1-0.3 s on a busy 2-core machine at C = 1,000, where each row has 1,000 dimensions).
MONITOR_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class MonitorResult:
    """What the bounded monitor measured: the errors of :func:`coreset_quality` over
    ``evaluated`` of the region's ``subsets`` (those in ``sampled``, increasing)."""

    coreset_error: float
    random_error: float
    evaluated: int
    subsets: int
    sampled: tuple[int, ...]

    @property
    def summary(self) -> str:
        """For :attr:`~crest.proto.contract.RegionStats.monitor`."""
        if self.evaluated == self.subsets:
            return f"all {self.subsets} subsets"
        return f"{self.evaluated} of {self.subsets} subsets (budget)"


def bounded_coreset_quality(
    region: Region,
    rows: np.ndarray,
    groups: np.ndarray,
    weights: np.ndarray,
    config: JobConfig,
    rng: np.random.Generator,
    budget: int = MONITOR_ELEMENTS,
) -> MonitorResult:
    """:func:`coreset_quality` within a budget of ``budget`` member rows x dimensions.

    Within budget, the region is measured whole, exactly as :func:`coreset_quality` does.
    Over it, whole subsets are measured (each one's error needs all its members), taken in
    an order drawn from ``rng`` until the next would pass the budget (at least one): the
    errors average over those subsets, a deterministic sample for the seed and region.
    """
    assert region.embeddings is not None
    classes = config.num_classes
    member_subset = region.member_groups // classes
    subsets = int(member_subset.max()) + 1 if len(member_subset) else 0
    dim = region.embeddings.shape[1] if region.embeddings.ndim == 2 else 1
    if len(member_subset) * dim <= budget:
        coreset, random = coreset_quality(region, rows, groups, weights, config, rng)
        return MonitorResult(coreset, random, subsets, subsets, tuple(range(subsets)))
    sizes = np.bincount(member_subset, minlength=subsets) * dim
    order = rng.permutation(subsets)
    fits = np.cumsum(sizes[order]) <= budget
    fits[0] = True  # at least one subset, whatever its size
    keep = np.zeros(subsets, dtype=bool)
    keep[order[fits]] = True
    renumber = np.cumsum(keep) - 1  # kept subsets in increasing order: 0, 1, ...
    kept_members = keep[member_subset]
    position = np.cumsum(kept_members) - 1  # a kept member's row in the sample
    member_groups = region.member_groups[kept_members]
    sample = dataclasses.replace(
        region,
        members=region.members[kept_members],
        member_groups=renumber[member_groups // classes] * classes + member_groups % classes,
    )
    picked = keep[groups // classes]
    sample_groups = renumber[groups[picked] // classes] * classes + groups[picked] % classes
    coreset, random = coreset_quality(
        sample, position[rows[picked]], sample_groups, weights[picked], config, rng
    )
    sampled = tuple(np.flatnonzero(keep).tolist())
    return MonitorResult(coreset, random, len(sampled), subsets, sampled)


def monitor_gain(coreset_error: float | None, random_error: float | None) -> float | None:
    """How many times smaller the coreset's gradient error is than a random batch's (1 when
    both are 0 to rounding: coresets are then no better; None when not measured)."""
    if coreset_error is None or random_error is None:
        return None
    if coreset_error <= _EXACT:
        return math.inf if random_error > _EXACT else 1.0
    return random_error / coreset_error


_EXACT = 1e-12  # a relative squared error this small is float64 rounding: an exact estimate
