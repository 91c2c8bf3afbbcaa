"""The pool of examples a job may draw from, and their loss history.

An example whose last ``window`` recorded losses (from selection passes) are all at most
``learned_loss`` is *learned* and may leave the pool, subject to a per-class floor and a cap
on the dropped fraction. Dropped examples are re-examined: after ``readmit_after`` drop
evaluations they return with an empty history and must be seen learned again to leave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from crest.proto.contract import JobConfig


def largest_remainder(shares: np.ndarray, total: int, at_least_one: bool = True) -> np.ndarray:
    """Split ``total`` seats between classes in proportion to ``shares`` (Hamilton's method).

    Each class gets the floor of its exact quota and the seats left over go to the largest
    fractional parts (ties to the lower class index). With ``at_least_one``, every class with a
    positive share gets a seat while ``total`` allows, taken from the classes with the most.

    Args:
        shares: ``(C,)`` non-negative weights (class sizes or fractions), not all zero.
        total: seats to hand out, >= 0.

    Returns:
        ``(C,)`` int64 seats summing to ``total``; zero where the share is zero.
    """
    shares = np.asarray(shares, dtype=np.float64)
    exact: np.ndarray = total * shares / shares.sum()  # (C,)
    seats: np.ndarray = np.floor(exact).astype(np.int64)
    order = np.lexsort((np.arange(len(shares)), -(exact - seats)))  # largest remainder first
    seats[order[: total - int(seats.sum())]] += 1
    present = shares > 0
    if at_least_one and total >= int(present.sum()):
        for label in np.flatnonzero(present & (seats == 0)):
            donor = int(np.argmax(seats - exact))  # the class the rounding favoured most
            if seats[donor] <= 1:
                donor = int(np.argmax(seats))
            seats[donor] -= 1
            seats[label] += 1
    return seats


def distinct(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an array, flattened: ``np.unique(values)``, by sorting.

    numpy 2.3+ finds distinct values by hashing, which on large index arrays is tens of times
    slower than sorting (10 s against 0.3 s for 4M int64 on a busy 2-core machine) and holds
    the GIL throughout: from the coordinator's worker thread it would stall the event loop.
    """
    ordered = np.sort(values, axis=None)
    if ordered.size == 0:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


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
    weights: np.ndarray = raw * shares[labels] / totals[problem]
    weights /= weights.mean()
    return weights


@dataclass
class DropOutcome:
    dropped: int
    readmitted: int


@dataclass
class DropSchedule:
    """When the pool is next evaluated for learned examples: every ``drop_interval``
    virtual epochs (never when it is 0)."""

    evaluations: int = 0  # evaluations so far
    next_step: float = math.inf  # the first region opening at or after it evaluates

    @classmethod
    def start(cls, config: JobConfig) -> DropSchedule:
        return cls(next_step=cls.every(config) if config.drop_interval > 0 else math.inf)

    @staticmethod
    def every(config: JobConfig) -> float:
        return max(1.0, config.drop_interval * config.steps_per_virtual_epoch)

    def due(self, start: int) -> bool:
        return start >= self.next_step

    def advance(self, start: int, config: JobConfig) -> None:
        self.evaluations += 1
        while self.next_step <= start:
            self.next_step += self.every(config)


class ExamplePool:
    """Pool membership and per-example loss history for ``N`` labelled examples.

    Args:
        labels: ``(N,)`` int64 class of each example, in ``[0, num_classes)``.
        num_classes: C.
        window: W, loss observations kept per example.
    """

    def __init__(self, labels: np.ndarray, num_classes: int, window: int) -> None:
        self.labels = np.ascontiguousarray(labels, dtype=np.int64)
        self.num_classes = num_classes
        self.in_pool = np.ones(len(labels), dtype=bool)
        self.dropped_at = np.full(len(labels), -1, dtype=np.int32)  # drop evaluation, -1 = none
        self.history = np.zeros((len(labels), window), dtype=np.float32)  # ring buffer
        self.observed = np.zeros(len(labels), dtype=np.int32)  # observations since last reset
        # Examples of each class in index order; class c is by_class[starts[c]:starts[c + 1]].
        self._by_class = np.argsort(self.labels, kind="stable")
        self._starts = np.searchsorted(self.labels[self._by_class], np.arange(num_classes + 1))
        self._sizes: np.ndarray | None = None  # pool members per class, counted on demand

    @property
    def window(self) -> int:
        return self.history.shape[1]

    @property
    def held_out(self) -> np.ndarray:
        """Bool mask of the held-out examples (:meth:`hold_out`): out of the pool for good."""
        held: np.ndarray = ~self.in_pool & (self.dropped_at < 0)
        return held

    @property
    def dropped(self) -> int:
        """Examples out of the pool because they were learned (not the held-out ones)."""
        return int((self.dropped_at >= 0).sum())

    def hold_out(self, indices: np.ndarray) -> None:
        """Take ``indices`` out of the pool for good: no subset, batch or coreset holds them,
        and drops never readmit them (they were not dropped). Strategy auto's probe."""
        self.in_pool[indices] = False
        self.dropped_at[indices] = -1
        self._sizes = None

    def class_members(self, label: int) -> np.ndarray:
        """Pool members of a class, in increasing index order."""
        members = self._by_class[self._starts[label] : self._starts[label + 1]]
        return members[self.in_pool[members]]

    def sizes_per_class(self) -> np.ndarray:
        """``(C,)`` int64 pool members per class (kept up to date, not recounted: O(C))."""
        if self._sizes is None:
            self._sizes = np.bincount(self.labels[self.in_pool], minlength=self.num_classes)
        return self._sizes.copy()

    def class_quotas(self, total: int, weighting: str) -> np.ndarray:
        """Seats per class out of ``total`` (a subset's candidates or a batch's examples).

        In proportion to :meth:`class_shares` (:func:`largest_remainder`: exactly ``total``
        seats, and every class in the pool gets one while ``total`` allows).

        Returns:
            ``(C,)`` int64 seats; zero for classes with no member in the pool.
        """
        return largest_remainder(self.class_shares(weighting), total)

    def quota_rows(
        self, total: int, weighting: str, rows: int, rng: np.random.Generator
    ) -> np.ndarray:
        """``(rows, C)`` int64 seats per class for ``rows`` subsets or batches of ``total``.

        While ``total`` covers every class in the pool, each row is :meth:`class_quotas`.
        With more classes than seats (e.g. 1,000 classes, batches of 128) a fixed rounding
        would leave the same classes out of every batch, so each row rounds at random
        instead: the floor of each class's exact quota, plus one seat with probability equal
        to its fractional part (systematic sampling over a shuffled class order). A class's
        expected seats are then exactly its quota, and every row sums to ``total``.
        """
        shares = self.class_shares(weighting)
        if total >= int((shares > 0).sum()):
            return np.tile(largest_remainder(shares, total), (rows, 1))
        exact = total * shares
        base = np.floor(exact).astype(np.int64)
        fraction = exact - base
        extra = total - int(base.sum())
        quotas = np.tile(base, (rows, 1))
        if extra > 0:
            for row in quotas:
                order = rng.permutation(len(shares))
                ends = np.cumsum(fraction[order])  # each class an interval of its fraction
                ends *= extra / ends[-1]  # exactly ``extra`` long despite rounding
                points = rng.random() + np.arange(extra)  # one per unit: distinct classes
                row[order[np.searchsorted(ends, points, side="right")]] += 1
        return quotas

    def class_shares(self, weighting: str) -> np.ndarray:
        """``(C,)`` float64: each class's share of the training objective (sums to 1).

        ``proportional``: its share of the pool. ``balanced``: ``1 / C'`` for each of the C'
        classes in the pool (the reference code's ``equal_num``, a class-balanced objective).
        """
        sizes = self.sizes_per_class().astype(np.float64)
        if weighting == "balanced":
            sizes = (sizes > 0).astype(np.float64)
        return sizes / max(float(sizes.sum()), 1.0)

    def draw_subsets(
        self, rng: np.random.Generator, ranks: int, per_rank: int, counts: int | np.ndarray
    ) -> list[list[np.ndarray]]:
        """Stratified random subsets: ``counts[s, c]`` pool members of class ``c`` in subset s.

        Subsets are disjoint (across ranks and within a rank) while a class has members
        enough for all of them: the members are drawn at once, without replacement, so the
        cost grows with the subsets, not with the class. A class too small for that is
        shuffled and split between the ranks (different ranks' subsets never share an example
        while it has a member per rank), and each subset samples its rank's share without
        replacement. Members of a (subset, class) are sorted by index, which fixes
        tie-breaking.

        Args:
            counts: ``(ranks * per_rank, C)`` int64, or anything that broadcasts to it
                (a ``(C,)`` row for every subset, or one int for every class).

        Returns:
            ``subsets[s][c]`` (``s = rank * per_rank + p``): int64 indices of class ``c``.
        """
        num_subsets = ranks * per_rank
        wanted = np.broadcast_to(counts, (num_subsets, self.num_classes))
        subsets: list[list[np.ndarray]] = [[] for _ in range(num_subsets)]
        sizes = self.sizes_per_class()
        for label in range(self.num_classes):
            want = wanted[:, label]
            if not want.any():
                for subset in subsets:
                    subset.append(np.zeros(0, np.int64))
                continue
            if int(want.sum()) <= sizes[label]:
                drawn = self._sample_class(label, int(want.sum()), rng)
                parts = np.split(drawn, np.cumsum(want)[:-1])
            else:
                parts = []
                for rank, share in enumerate(
                    np.array_split(rng.permutation(self.class_members(label)), ranks)
                ):
                    for index in range(rank * per_rank, (rank + 1) * per_rank):
                        take = min(int(want[index]), len(share))
                        parts.append(rng.choice(share, take, replace=False))
            for subset, part in zip(subsets, parts, strict=True):
                subset.append(np.sort(part))
        return subsets

    def _sample_class(self, label: int, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` distinct pool members of a class, uniformly, in random order (k <= size).

        Draws positions in the whole class (pool or not) and keeps the pool members: those
        are a uniform sample of the pool's part of the class. Cost O(k / pool fraction)
        rather than O(class size); a small class is filtered whole instead.
        """
        first, last = int(self._starts[label]), int(self._starts[label + 1])
        total = last - first
        if total <= 64 * k:
            return rng.permutation(self.class_members(label))[:k]
        kept: np.ndarray = np.zeros(0, np.int64)
        draw = k
        while True:
            fraction = max(self.sizes_per_class()[label] / total, 1e-3)  # in the pool
            draw = min(total, math.ceil(1.25 * draw / fraction) + 16)
            members = self._by_class[first + rng.choice(total, draw, replace=False)]
            kept = members[self.in_pool[members]]
            if len(kept) >= k or draw == total:
                return kept[:k]

    def record_losses(self, indices: np.ndarray, losses: np.ndarray) -> None:
        """Append one loss observation per (unique) index to its ring buffer."""
        slot = self.observed[indices] % self.window
        self.history[indices, slot] = losses
        self.observed[indices] += 1

    def learned(self, learned_loss: float) -> np.ndarray:
        """Bool mask: in the pool, ``window`` observations, all of them <= ``learned_loss``."""
        full = self.observed >= self.window
        learned: np.ndarray = self.in_pool & full & (self.history.max(1) <= learned_loss)
        return learned

    def evaluate_drops(
        self,
        evaluation: int,
        learned_loss: float,
        floor_per_class: np.ndarray,
        max_dropped: int,
        readmit_after: int,
    ) -> DropOutcome:
        """Readmit examples dropped long enough ago, then drop learned ones.

        Among learned examples the most confidently learned (lowest worst-case loss, then
        lowest index) go first, as far as each class's floor and the global cap allow.
        """
        readmit = np.zeros(len(self.labels), dtype=bool)
        if readmit_after > 0:
            readmit = (self.dropped_at >= 0) & (evaluation - self.dropped_at >= readmit_after)
            self.in_pool[readmit] = True
            self._sizes = None
            self.dropped_at[readmit] = -1
            self.observed[readmit] = 0

        room = max_dropped - self.dropped
        candidates = np.flatnonzero(self.learned(learned_loss))
        if room <= 0 or len(candidates) == 0:
            return DropOutcome(dropped=0, readmitted=int(readmit.sum()))
        worst = self.history[candidates].max(1)
        order = candidates[np.lexsort((candidates, worst))]  # most learned first
        spare = np.maximum(self.sizes_per_class() - floor_per_class, 0)
        # Position of each candidate within its class in that order: keep those under the spare.
        labels = self.labels[order]
        by_label = np.argsort(labels, kind="stable")  # keeps the order within each class
        first = np.searchsorted(labels[by_label], labels[by_label])  # where its class starts
        rank_in_class = np.empty(len(order), dtype=np.int64)
        rank_in_class[by_label] = np.arange(len(order)) - first
        drop = order[rank_in_class < spare[labels]][:room]
        self.in_pool[drop] = False
        self._sizes = None
        self.dropped_at[drop] = evaluation
        return DropOutcome(dropped=len(drop), readmitted=int(readmit.sum()))

    def to_state(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "num_classes": self.num_classes,
            "in_pool": self.in_pool,
            "dropped_at": self.dropped_at,
            "history": self.history,
            "observed": self.observed,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ExamplePool:
        pool = cls(state["labels"], state["num_classes"], state["history"].shape[1])
        pool.in_pool = state["in_pool"].copy()
        pool.dropped_at = state["dropped_at"].copy()
        pool.history = state["history"].copy()
        pool.observed = state["observed"].copy()
        return pool
