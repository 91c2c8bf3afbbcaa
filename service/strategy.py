"""Strategies: how a region's batches are made, the monitors, and ``auto``'s decisions.

``crest`` regions serve coresets; ``random`` regions stratified random batches; ``auto``
tests, in a window of adjacent coreset and random regions, which of the two lowers the loss
of a fixed probe sample faster per step, serves the winner, and tests again later
(:class:`AutoPolicy`). The embedding-space monitor (:func:`coreset_quality`) measures how
well a coreset reproduces its subset's mean embedding-gradient: a check of the selection,
which ``auto`` does not read (it says 22-220x on workloads where coresets help and where they
hurt alike, docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from crest.proto.contract import JobConfig, RegionStats
from crest.service.pool import class_weights
from crest.service.region import Region

# The arms of a test window, in order: coresets, random, random, coresets (ABBA), so that a
# linear trend of the loss's rate of decrease over the window cancels in the difference of
# the two means. A coreset arm is as many coreset regions as make ``auto_test_epochs``
# virtual epochs; a random arm one random region as long as the first coreset arm. The region
# after the window ("measure") carries the probe sample once more: the window's end point.
WINDOW = ("coresets", "random", "random", "coresets")
MEASURE = "measure"
# Virtual epochs of a test's first coreset arm after which its loss excess is first read
# (at most the arm; then after every coreset region of the test): a test that the excess
# decides at once costs that much, however long the arms are. The job's first test waits
# for the model to learn (the excess grows from 0 over the first epochs); a re-test reads
# it sooner: a trained model's excess moves little from one region to the next (W1:
# standard deviation 0.04-0.09 nats over the second half of a run, against a bar of 0.6;
# docs/benchmarks.md), so re-tests on noisy data cost a quarter as much.
EXCESS_EPOCHS = 1.0
RETEST_EXCESS_EPOCHS = 0.25
# A re-test is due only when, after its window (four arms), at least this many windows' steps
# remain for its verdict to serve: a test near the end costs its arms and changes little.
RETEST_PAYBACK = 1.0


@dataclass
class AutoPolicy:
    """What the next region will be (``crest`` or ``random``) and why (for statistics), and
    strategy ``auto``'s test: its probe sample, its regions and the probe's measured losses.

    Plain lists and numbers only: snapshots store it with :func:`dataclasses.asdict`.
    """

    mode: str
    decision: str
    next_test: float = 0.0  # auto: the first region opening at or after this step tests
    interval: float = 0.0  # auto: virtual epochs from a verdict to the next test
    verdict: str = ""  # auto: the last test's verdict, "coresets" or "random"
    probe: list[int] = field(default_factory=list)  # the test's probe sample (examples)
    window: list[list[int]] = field(default_factory=list)  # [start, end, is_coresets] per arm
    arm_start: int = -1  # the first step of the test's current arm (-1: none begun)
    points: list[list[float]] = field(default_factory=list)  # [step, probe loss] measured
    random_length: int = 0  # steps of the test's random arms: its first coreset arm's
    excess: list[float] = field(default_factory=list)  # test coreset regions: selected - all loss

    @classmethod
    def start(cls, config: JobConfig) -> AutoPolicy:
        mode = "random" if config.strategy == "random" else "crest"
        policy = cls(mode=mode, decision=f"strategy {config.strategy}")
        if config.strategy == "auto":
            policy.interval = config.auto_retest_epochs
            policy.next_test = config.auto_retest_epochs * config.steps_per_virtual_epoch
            policy.decision = "coresets until the first test"
        return policy

    @property
    def testing(self) -> bool:
        return bool(self.probe)

    def role(self, start: int, config: JobConfig) -> str:
        """The test role of a region opening at ``start``: one of :data:`WINDOW`, ``measure``
        or "" (no test). Pure; :meth:`begin` starts a test whose first region this is."""
        if config.strategy != "auto":
            return ""
        if self.testing:
            return WINDOW[len(self.window)] if len(self.window) < len(WINDOW) else MEASURE
        return WINDOW[0] if start >= self.next_test else ""

    def begin(self, probe: np.ndarray) -> None:
        self.probe, self.window, self.points = [int(i) for i in probe], [], []
        self.arm_start, self.excess = -1, []

    def region_mode(self, role: str) -> str:
        """How a region of test role ``role`` makes its batches."""
        if role in WINDOW:
            return "crest" if role == "coresets" else "random"
        return self.mode

    def random_steps(self, start: int, config: JobConfig, role: str = "") -> int:
        """Length of a random region opening at ``start``: a test's random arm is as long as
        the test's first coreset arm; otherwise a virtual epoch of distinct batches, or
        until ``auto``'s next test."""
        if role == "random":
            return max(1, self.random_length)
        length = max(1, math.floor(config.steps_per_virtual_epoch))
        if config.strategy == "auto":
            length = max(1, min(length, math.ceil(self.next_test) - start))
        return length

    def arm_end(self, start: int, config: JobConfig) -> int:
        """The step by which a test's coreset arm that has a region opening at ``start`` ends:
        its regions end there at the latest, so that both coreset arms are exactly as long as
        the random ones (ABBA cancels a linear trend only over equal arms; a late region that
        ran past the arm's end weighted the later, flatter part of the loss curve against
        coresets). The first arm runs ``auto_test_epochs`` virtual epochs, the second as long
        as the first."""
        begin = start if self.arm_start < 0 else self.arm_start
        if self.window:
            return begin + max(1, self.random_length)
        return begin + max(1, math.ceil(arm_steps(config)))

    def measured(self, step: int, loss: float) -> None:
        """The probe's mean loss under the weights of ``step`` (a test region's candidates)."""
        self.points.append([float(step), float(loss)])

    def after(self, region: Region, stats: RegionStats, config: JobConfig) -> None:
        """Strategy ``auto``: record a test region; after the window's measure region, decide.

        Each arm's rate is the probe loss's decrease per step over it, from the probe's
        losses at its first step and at the first step after it. With the mean rates of
        the coreset regions (``rc``) and of the random regions (``rr``), coresets win when
        ``rc - rr >= (g - 1) * |rr|`` (``rc / rr >= g`` while random batches lower the loss),
        where ``g`` is ``auto_min_gain / auto_switch_margin`` while the job serves coresets
        (as it does until the first test) and ``auto_min_gain x auto_switch_margin`` while it
        serves random batches: a test changes the mode only by a margin over its noise (on W1
        at 10% the rates of one seed's test read 1.73x and 3.74x with its arms a few steps
        apart, and nine seeds' first tests 0.82-2.22x where coresets end 0.7-1.5 points
        ahead; docs/benchmarks.md). The next test comes ``auto_retest_epochs`` virtual epochs
        later, twice as late after each repeat of the same verdict, no sooner than the job
        has run as many steps again, and not at all near the end (:meth:`_conclude`).

        Coresets also lose when they chase examples the model cannot fit: when their selected
        examples' loss exceeds all candidates' by more than ``auto_max_loss_excess x ln C``
        on average over the window's coreset regions. Facility location picks far-away points
        first, and under label noise those are the mislabelled examples (selected loss
        +0.9 nats on W2, +0.2-0.4 where coresets help; docs/benchmarks.md), a harm the probe
        cannot see in a short test. They lose too when they select easier examples than their
        candidates (below ``auto_min_loss_excess x ln C``, 0): facility location then takes
        each class's medoid, as with one or two examples per class per coreset, where CREST
        lost 2-4 points to random batches (W5, 100 classes). The excess is read once the
        first coreset arm has run :data:`EXCESS_EPOCHS` virtual epochs in the job's first
        test, :data:`RETEST_EXCESS_EPOCHS` in a re-test (or the arm ended sooner), and
        after every coreset region of the test from then on (under label noise it grows
        as the model fits the clean examples); outside the bars the test ends there: no
        random arm can change the verdict.
        Only the job's losses decide, so the choice is deterministic for a seed.
        """
        if config.strategy != "auto" or not self.testing or not stats.auto_test:
            return
        coresets = stats.auto_test == "coresets"
        if coresets and stats.selected_loss is not None and stats.candidate_loss is not None:
            self.excess.append(stats.selected_loss - stats.candidate_loss)
        excess = float(np.mean(self.excess)) if self.excess else None
        if stats.auto_test != MEASURE:
            if self.arm_start < 0:
                self.arm_start = region.start_step
            length = region.end_step - self.arm_start
            arm = arm_steps(config)
            ends = length >= arm or region.end_reason == "budget"
            if coresets:
                # The excess is read from the region that takes the first arm to
                # EXCESS_EPOCHS virtual epochs (a re-test: RETEST_EXCESS_EPOCHS), or ends it
                # sooner, and after every coreset region of the test from then on: outside
                # its bars, the verdict is in, and the test ends there.
                epochs = RETEST_EXCESS_EPOCHS if self.verdict else EXCESS_EPOCHS
                read_at = min(arm, epochs * config.steps_per_virtual_epoch)
                outside = excess_outside(excess, config, config.num_classes)
                if outside and (self.window or length >= read_at or ends):
                    stats.loss_excess_coresets = excess
                    self._conclude("random", outside, region.end_step, config)
                    return
            if coresets and not ends:
                return  # the arm goes on with another coreset region
            if coresets and not self.window:
                self.random_length = length
            self.window.append([self.arm_start, region.end_step, int(coresets)])
            self.arm_start = -1
            return
        rates = window_rates(self.window, self.points)
        stats.loss_excess_coresets = excess
        if rates is None:
            verdict = self.verdict or "coresets"
            reason = "test incomplete (a probe loss was not measured)"
        else:
            rc, rr = rates
            stats.loss_rate_coresets, stats.loss_rate_random = rc, rr
            # Hysteresis: the mode the job serves changes only by auto_switch_margin.
            serving = self.mode == "crest"
            margin = config.auto_switch_margin
            gain = config.auto_min_gain / margin if serving else config.auto_min_gain * margin
            wins = rc - rr >= (gain - 1.0) * abs(rr)
            ratio = f"{rc / rr:.2f}x" if rr > 0 else "n/a"
            reason = (
                f"probe loss falls {rc:.3g}/step with coresets, {rr:.3g}/step with random "
                f"batches ({ratio}; coresets need {gain:.3g}x to {'stay' if serving else 'return'})"
            )
            outside = excess_outside(excess, config, config.num_classes)
            if outside:
                wins, reason = False, f"{outside}; {reason}"
            verdict = "coresets" if wins else "random"
        self._conclude(verdict, reason, region.end_step, config)

    def _conclude(self, verdict: str, reason: str, end_step: int, config: JobConfig) -> None:
        """End the test at ``end_step`` with its verdict: serve it until the next test.

        The next test comes ``interval`` virtual epochs later (doubled after each repeat of
        the same verdict), and no sooner than the job has run ``end_step`` steps more: a
        verdict stands at least as long as the job took to reach it, so tests come at
        geometric steps and their random (or coreset) arms cost a shrinking share of a
        long job. None comes when fewer steps would remain after it than
        :data:`RETEST_PAYBACK` windows: its verdict would serve too few steps to repay it.
        """
        self.interval = self.interval * 2 if verdict == self.verdict else config.auto_retest_epochs
        self.verdict = verdict
        self.next_test = end_step + max(self.interval * config.steps_per_virtual_epoch, end_step)
        window = len(WINDOW) * arm_steps(config)
        if config.total_steps - self.next_test < (1 + RETEST_PAYBACK) * window:
            self.next_test = config.total_steps
            then = "no further test (too few steps left to repay one)"
        else:
            then = f"next test at step {math.ceil(self.next_test)}"
        self.mode = "crest" if verdict == "coresets" else "random"
        self.decision = f"{verdict}: {reason}; {then}"
        self.probe, self.window, self.points, self.excess = [], [], [], []
        self.arm_start = -1


def arm_steps(config: JobConfig) -> float:
    """Steps of a test's first coreset arm: ``auto_test_epochs`` virtual epochs (each other
    arm is as long as the first turned out)."""
    return config.auto_test_epochs * config.steps_per_virtual_epoch


def excess_outside(excess: float | None, config: JobConfig, num_classes: int) -> str:
    """Why coresets whose selected examples' mean loss exceeds their candidates' by
    ``excess`` (nats) lose a test whatever their rates, or "" when that is within
    ``[auto_min_loss_excess, auto_max_loss_excess] x ln C`` (or not measured)."""
    if excess is None:
        return ""
    scale = math.log(num_classes)
    high, low = config.auto_max_loss_excess * scale, config.auto_min_loss_excess * scale
    if excess > high:
        return (
            f"coresets select examples {excess:.2f} nats harder than their candidates "
            f"(over {high:.2f}: likely label noise)"
        )
    if excess < low:
        return (
            f"coresets select examples {-excess:.2f} nats easier than their candidates "
            f"(under {low:.2f}: each class's medoid, too few picks per class)"
        )
    return ""


def window_rates(window: list[list[int]], points: list[list[float]]) -> tuple[float, float] | None:
    """Mean decrease per step of the probe loss over a window's coreset regions and over its
    random regions, from the probe losses at each region's first step and at its end
    (``window``: ``[start, end, is_coresets]``; ``points``: ``[step, loss]``); None when a
    point is missing or an arm has no region."""
    loss = {int(step): value for step, value in points}
    rates: dict[int, list[float]] = {0: [], 1: []}
    for start, end, coresets in window:
        if start not in loss or end not in loss or end <= start:
            return None
        rates[coresets].append((loss[start] - loss[end]) / (end - start))
    if not rates[0] or not rates[1]:
        return None
    return float(np.mean(rates[1])), float(np.mean(rates[0]))


def probe_loss(losses: np.ndarray, num_classes: int) -> float:
    """The probe's mean loss, each example's clipped at ln C (a uniform guess's loss), so that
    a few mislabelled examples, whose loss grows without bound as the model learns the rest,
    do not dominate it."""
    clipped = np.minimum(np.asarray(losses, np.float64), math.log(max(num_classes, 2)))
    return float(clipped.mean()) if clipped.size else math.nan


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
