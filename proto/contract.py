"""The coordinator contract in plain Python: job configuration, messages, and the interface.

The in-process coordinator implements :class:`Coordinator` directly; the remote client
implements it over gRPC with the same messages, so user code never changes between the two.
Arrays are numpy: indices int64, embeddings and weights float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from crest.proto.errors import invalid_fields

# What one region may cost the coordinator (a coreset region draws W x P subsets of r
# candidates, one selection problem per subset and class; see JobConfig.region_candidates).
# On a busy 2-core machine a region at either limit opens in about 10 s, off the event loop
# (measured; docs/design.md), and its snapshot stays well under Redis' 512 MiB value limit.
MAX_REGION_CANDIDATES = 1 << 24  # candidate draws (subset members) per coreset region
MAX_REGION_PROBLEMS = 1 << 18  # selection problems (subsets x classes) per coreset region
# The default subset size's candidates per coreset seat (JobConfig.resolved_subset_size): the
# reference's r = 1% of N is 3.9 per seat on CIFAR-10 (500 for B = 128); fewer lost accuracy
# on W1 (r = 2 B, 12.8 seats per class, docs/benchmarks.md).
CANDIDATES_PER_SEAT = 4
# With fewer seats per class than MANY_SEATS_PER_CLASS on average (B < 6 C), facility location
# chooses each class's one or few seats among its most central, easiest candidates, and more
# candidates make that worse: 4 per seat lost 3-4 points to random batches at 1.3 and 0.4
# seats per class (100 and 300 classes), 2 per seat tied or won (docs/benchmarks.md, W5).
# The crossing lies between 4.3 seats per class (2 per seat better) and 8 (4 better).
MANY_SEATS_PER_CLASS = 6
FEW_SEATS_CANDIDATES_PER_SEAT = 2


class JobConfig(BaseModel):
    """What a training job asks of the coordinator. Immutable once the job exists.

    The step budget is ``train_frac`` of full-data training: ``epochs`` passes over
    ``num_examples`` in batches of ``batch_size``. A *virtual epoch* is the budget divided by
    ``epochs``, so a learning-rate schedule written in epochs compresses with the budget.

    One coreset region costs the coordinator work in proportion to its candidates
    (``world_size x P x subset_size``) and its selection problems (``world_size x P x
    num_classes``), P being the most coresets per rank a region can reach
    (:attr:`largest_num_coresets`). Both are bounded (:data:`MAX_REGION_CANDIDATES`,
    :data:`MAX_REGION_PROBLEMS`; strategy ``random`` draws no coreset region), so that no
    valid job can ask for a region that takes minutes or gigabytes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Invalid values raise crest's InvalidArgument (listing the fields at fault), not
    # pydantic's ValidationError: one exception tree, in-process and remote alike.
    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise invalid_fields("job config", err) from None

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> JobConfig:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as err:
            raise invalid_fields("job config", err) from None

    num_examples: int = Field(gt=0, le=2**40, description="N, size of the training set")
    num_classes: int = Field(ge=2, le=100_000, description="C; labels lie in [0, C)")
    batch_size: int = Field(128, ge=1, le=1_000_000, description="B, examples per coreset")
    epochs: float = Field(30.0, gt=0, le=1e6, description="length of full-data training")
    train_frac: float = Field(0.1, gt=0, le=1, description="step budget, fraction of full")
    world_size: int = Field(1, ge=1, le=4096, description="data-parallel trainer ranks")
    seed: int = Field(0, ge=0, lt=2**63)

    subset_size: int | None = Field(
        None,
        ge=1,
        description="r, candidates per random subset; default 4 x B, or 2 x B with fewer "
        "than 6 coreset seats per class (B < 6 C), capped at N: candidates per seat; bounded "
        "by the batch, not by N",
    )
    tau: float = Field(0.1, ge=0, le=1e6, description="check threshold on relative error")
    num_coresets: int = Field(5, ge=1, le=100_000, description="P of the first region, per rank")
    max_coresets: int | None = Field(
        None, ge=1, le=100_000, description="upper bound on P; default steps per virtual epoch"
    )
    adaptive: bool = Field(True, description="adapt k and P to the measured curvature")
    check_interval: int = Field(1, ge=1, le=100_000, description="k of the first region")
    max_check_interval: int = Field(8, ge=1, le=100_000)
    max_coreset_uses: int | None = Field(
        4, ge=1, description="a region ends after P * uses steps; None for no bound"
    )
    check_sample_size: int = Field(
        256, ge=0, description="examples of the region's subsets measured per check; 0 = all"
    )

    loss_window: int = Field(5, ge=1, le=64, description="W, loss observations kept")
    learned_loss: float = Field(0.1, ge=0, description="alpha: learned if all W losses <= it")
    drop_interval: float = Field(
        1.0, ge=0, description="virtual epochs between drop evaluations; 0 disables dropping"
    )
    max_drop_frac: float = Field(0.5, ge=0, le=1, description="cap on the fraction dropped")
    min_pool_per_class: int | None = Field(
        None, ge=0, description="floor per class; default fills P*W disjoint subsets"
    )
    readmit_after: int = Field(
        3, ge=0, description="drop evaluations after which a dropped example is re-examined"
    )

    strategy: Literal["crest", "random", "auto"] = Field(
        "crest",
        description="crest: coresets; random: random batches of weight 1 through the same "
        "path; auto: coresets while the monitor says they beat random batches",
    )
    random_batches: Literal["stratified", "uniform"] = Field(
        "stratified",
        description="random batches: stratified by class as class_weighting says, or B uniformly",
    )
    auto_min_gain: float = Field(
        1.0,
        gt=0,
        description="auto serves coresets when, in its test, they lower the probe loss at least "
        "this many times faster per step than random batches",
    )
    auto_switch_margin: float = Field(
        1.5,
        ge=1,
        le=1e6,
        description="auto: a test changes what the job serves only by this margin over "
        "auto_min_gain: serving coresets (as a job starts), it keeps them unless random batches "
        "lower the probe loss this many times faster than auto_min_gain allows; serving random "
        "batches, coresets need auto_min_gain times this to return (a test's rates vary by up "
        "to 2x with its arms shifted a few steps; 1 turns it off)",
    )
    auto_retest_epochs: float = Field(
        1.0,
        gt=0,
        description="auto: virtual epochs before the first test and from a verdict to the next "
        "(doubled after each repeat of the same verdict; at least as many steps as the job had "
        "run at the verdict; no re-test unless its window and as many steps again would "
        "remain)",
    )
    auto_test_epochs: float = Field(
        2.0,
        gt=0,
        description="auto: virtual epochs of each coreset arm of a test (coreset regions until "
        "then); each random arm is as long as the first coreset arm; the coresets' loss excess "
        "is read after the first arm's first virtual epoch (a re-test's: a quarter of one) and "
        "after every coreset region of the test from then on",
    )
    auto_max_loss_excess: float = Field(
        0.26,
        ge=0,
        le=1e6,
        description="auto: coresets lose a test when the mean loss of the examples they selected "
        "exceeds the mean of all candidates' by more than this times ln C (a uniform guess's "
        "loss; 0.26 is 0.6 nats at C = 10), averaged over the test's coreset regions: they "
        "chase examples the model cannot fit, the mark of label noise (1e6 turns it off)",
    )
    auto_min_loss_excess: float = Field(
        0.0,
        ge=-1e6,
        le=1e6,
        description="auto: coresets also lose a test when that excess is below this times ln C: "
        "they select easier examples than their candidates, as with one or two examples per "
        "class per coreset (-1e6 turns it off)",
    )
    auto_probe_size: int = Field(
        512,
        ge=1,
        description="auto: examples in the probe sample whose loss a test measures, held out "
        "of training (not trained on; at most a tenth of any class)",
    )
    name: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="a human name for the dashboard (printable, <= 128 characters)",
    )
    class_weighting: Literal["proportional", "balanced"] = Field(
        "proportional",
        description="proportional: subsets, budgets and weights follow the pool's class shares, "
        "so a batch estimates the loss over the data's class mix; balanced: every class gets "
        "the same share (the reference code's equal_num, a class-balanced objective)",
    )
    weight_exponent: float = Field(
        0.5,
        ge=0,
        le=1,
        description="coreset weights are cluster sizes raised to this power (then scaled to "
        "each class's share): 1 is CREST's weights, under which a coreset's weighted gradient "
        "matches its subset's; 0 weighs every selected example alike; 0.5 trained up to 1.7 "
        "points better than 1 (W1, W2-0, W3) and never worse beyond seed noise "
        "(docs/benchmarks.md)",
    )
    allow_empty_classes: bool = Field(
        False, description="accept labels that leave a class in [0, C) without any example"
    )
    selection_side: Literal["trainer", "service"] = Field(
        "trainer",
        description="service: selector workers embed the candidates from the model and weights "
        "the trainer publishes and prepare each region one region ahead (pipelined); trainer: "
        "the trainer embeds its candidates at every region start and waits for the selection",
    )
    lookahead_coresets: bool = Field(
        False,
        description="service side: draw only as many coresets per rank as recent regions "
        "lasted steps (fewer candidates embedded per step; a longer region reuses them)",
    )
    max_staleness: int = Field(
        32,
        ge=1,
        le=1_000_000,
        description="service side: a region lasts at most this many steps, so that the next "
        "region's coresets come from weights at most this many steps old",
    )

    exclude_noisy: bool = Field(
        False,
        description="coresets robust to label noise: a candidate whose loss is far above its "
        "class's (likely mislabelled) is never chosen as a representative, and counts in the "
        "weight of its most similar representative (CRUST's rule); see noisy_mads",
    )
    noisy_mads: float = Field(
        3.0,
        gt=0,
        le=1e6,
        description="exclude_noisy: a candidate is excluded when its loss exceeds both its "
        "class's median + noisy_mads x 1.4826 x MAD over the region's candidates and "
        "ln(num_classes) (a class keeps at least the budget of lowest-loss candidates per "
        "subset)",
    )

    @model_validator(mode="after")
    def _consistent(self) -> JobConfig:
        if self.subset_size is not None and self.subset_size > self.num_examples:
            raise ValueError(f"subset_size {self.subset_size} > num_examples {self.num_examples}")
        if self.resolved_subset_size < self.batch_size:
            raise ValueError(
                f"subset_size {self.resolved_subset_size} is smaller than batch_size "
                f"{self.batch_size}: a coreset could not be selected from it"
            )
        if self.check_interval > self.max_check_interval:
            raise ValueError("check_interval must not exceed max_check_interval")
        if self.auto_min_loss_excess >= self.auto_max_loss_excess:
            raise ValueError("auto_min_loss_excess must be below auto_max_loss_excess")
        if self.strategy != "random":
            self._check_region_size()
        return self

    def _check_region_size(self) -> None:
        """Refuse a config whose largest coreset region would exceed the region limits."""
        world, coresets = self.world_size, self.largest_num_coresets
        knobs = ["world_size", "num_coresets"]
        grows = ""
        if coresets > self.num_coresets:
            grows = (
                f" (num_coresets={self.num_coresets} grows to {coresets} with adaptive: "
                "num_coresets x max_check_interval, capped at max_coresets)"
            )
            knobs += ["max_coresets", "max_check_interval"]
        size = f"{world} ranks x {coresets} coresets{grows}"
        if self.region_candidates > MAX_REGION_CANDIDATES:
            raise ValueError(
                f"world_size x num_coresets x subset_size: a region would draw {size} x "
                f"{self.resolved_subset_size} candidates = {self.region_candidates:,}, over "
                f"the limit of {MAX_REGION_CANDIDATES:,}; lower {_either([*knobs, 'subset_size'])}"
            )
        if self.region_problems > MAX_REGION_PROBLEMS:
            raise ValueError(
                f"world_size x num_coresets x num_classes: a region would pose {size} x "
                f"{self.num_classes} classes = {self.region_problems:,} selection problems, "
                f"over the limit of {MAX_REGION_PROBLEMS:,}; lower {_either(knobs)}"
            )

    @property
    def resolved_subset_size(self) -> int:
        """r: the configured subset size, or by default ``CANDIDATES_PER_SEAT x B`` (2 x B
        with fewer than ``MANY_SEATS_PER_CLASS`` seats per class), at most N.

        A coreset's B seats are split between the classes in proportion, and so are a
        subset's r candidates: each class chooses its seats from ``r / B`` candidates per
        seat. A class with one or two seats chooses its most central candidates, so with
        few seats per class (many classes) it gets fewer candidates per seat to choose from.
        r does not grow with N: the reference's 1% of N made selection cost grow as N^2.
        """
        if self.subset_size is not None:
            return self.subset_size
        per_seat = CANDIDATES_PER_SEAT
        if self.batch_size < MANY_SEATS_PER_CLASS * self.num_classes:
            per_seat = FEW_SEATS_CANDIDATES_PER_SEAT
        return min(self.num_examples, per_seat * self.batch_size)

    @property
    def full_steps(self) -> int:
        """Steps of full-data training: ``epochs`` passes of ``ceil(N / B)`` steps."""
        return max(1, round(self.epochs * math.ceil(self.num_examples / self.batch_size)))

    @property
    def total_steps(self) -> int:
        """The step budget shared by every rank."""
        return max(1, round(self.train_frac * self.full_steps))

    @property
    def steps_per_virtual_epoch(self) -> float:
        return self.total_steps / self.epochs

    @property
    def resolved_max_coresets(self) -> int:
        if self.max_coresets is not None:
            return self.max_coresets
        return max(self.num_coresets, math.floor(self.steps_per_virtual_epoch))

    @property
    def largest_num_coresets(self) -> int:
        """The most coresets per rank a region can hold: P_0, or with ``adaptive``,
        ``min(P_0 x max_check_interval, max_coresets)`` but at least P_0."""
        if not self.adaptive:
            return self.num_coresets
        grown = self.num_coresets * self.max_check_interval
        return min(grown, max(self.resolved_max_coresets, self.num_coresets))

    @property
    def region_candidates(self) -> int:
        """Candidate draws of the largest coreset region: ``W x P_max x r``, at most
        :data:`MAX_REGION_CANDIDATES` (memory, snapshot size, and numpy time to draw them)."""
        return self.world_size * self.largest_num_coresets * self.resolved_subset_size

    @property
    def region_problems(self) -> int:
        """Selection problems of the largest coreset region: ``W x P_max x C``, at most
        :data:`MAX_REGION_PROBLEMS` (the coordinator draws and assembles them one by one)."""
        return self.world_size * self.largest_num_coresets * self.num_classes

    @property
    def per_class_candidates(self) -> int:
        """Balanced weighting: candidates of each class in one random subset, ceil(r / C)."""
        return math.ceil(self.resolved_subset_size / self.num_classes)

    @property
    def per_class_budget(self) -> int:
        """Balanced weighting: examples selected per class and subset, ceil(B / C)."""
        return math.ceil(self.batch_size / self.num_classes)


def _either(names: list[str]) -> str:
    return f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class SessionInfo:
    """What a trainer rank learns when it joins a job."""

    job_id: str
    rank: int
    world_size: int
    total_steps: int
    steps_per_virtual_epoch: float
    num_classes: int
    batch_size: int
    committed_seq: int = 0  # last upload sequence number committed for this rank
    selection_side: str = "trainer"  # who embeds: "trainer" or "service" (JobConfig)
    num_examples: int = 0  # N


class RegionStatus(StrEnum):
    EMBED = "embed"  # the rank must embed ``candidates`` and submit them
    SELECTING = "selecting"  # embeddings are in; selection is running
    READY = "ready"  # ``batches`` hold the rank's coresets
    DONE = "done"  # the step budget is spent


@dataclass(frozen=True)
class RegionView:
    """One rank's view of the region that holds a step.

    Batch ``t`` of the region is ``batches[(t - start_step) % len(batches)]``. Checks are due
    after steps ``t`` with ``(t + 1 - start_step) % check_interval == 0`` and
    ``t + 2 < end_step``; the region lasts until ``end_step`` (exclusive) unless a failed
    check after step ``t`` ends it at ``t + 2``.
    """

    region_id: int
    status: RegionStatus
    start_step: int
    end_step: int
    check_interval: int = 1
    candidates: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    check_indices: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    batches: tuple[tuple[np.ndarray, np.ndarray], ...] = ()
    initial_loss: float = 0.0  # L_0: mean loss over the check sample at the region start
    # Service side: what the coordinator waits for and does not have (after a restart, or at
    # the job's start): the model (``publish_model``) and the weights of step
    # ``wants_weights`` (``publish_weights``; -1: none wanted).
    wants_model: bool = False
    wants_weights: int = -1


@dataclass(frozen=True)
class CheckReport:
    """One rank's scalars for the quadratic-model check after ``step``, or all ranks'.

    ``loss_sum``/``count``: summed per-example loss over this rank's check indices (eval mode,
    unweighted); ``linear`` = g·δ; ``quadratic`` = δᵀ diag(h) δ; ``curvature`` = ‖h‖ (or ‖g‖
    for a first-order model), which adapts k and P. ``train_seconds``/``selection_seconds``:
    the rank's cumulative time in the training loop and in selection work (statistics only).

    ``ranks``: how many ranks the report covers: 1 (the sender's own), or the job's world
    size, when rank 0 reports on behalf of all ranks (combined through ``torch.distributed``);
    every scalar is then the sum over the ranks, added in rank order, so that the decision is
    the one their separate reports would get.
    """

    region_id: int
    step: int
    loss_sum: float
    count: int
    linear: float
    quadratic: float
    curvature: float
    train_seconds: float = 0.0
    selection_seconds: float = 0.0
    # Service side: summed loss over the same check examples at θ_0 (the region's start),
    # measured by the trainer, since the selectors embedded the region from older weights.
    # NaN: not measured (trainer side: L_0 comes from the region's embeddings).
    initial_loss_sum: float = math.nan
    ranks: int = 1


@dataclass(frozen=True)
class CheckDecision:
    """The global outcome of a check: ``new_region`` means step ``step + 2`` starts one."""

    region_id: int
    step: int
    new_region: bool
    loss: float  # L_true
    predicted: float  # F(δ)
    relative_error: float  # |L_true - F(δ)| / L_true


class Coordinator(Protocol):
    """What a trainer needs from a coordinator, in-process or remote."""

    def create_job(self, config: JobConfig, labels: np.ndarray, job_id: str | None = None) -> str:
        """Create a job over a training set, or find the job ``job_id`` names.

        Args:
            config: the job's configuration, immutable once the job exists.
            labels: ``(N,)`` class of every training example, ``N = config.num_examples``:
                integers in ``[0, num_classes)`` as a numpy array or a CPU tensor. Map string
                or sparse labels to ``0..C-1`` first, e.g. ``classes, labels =
                np.unique(raw, return_inverse=True)``. ``num_classes`` must equal the number
                of distinct labels (every class has an example) unless
                ``config.allow_empty_classes``.
            job_id: 1-128 printable characters. With an id the call is idempotent: for a job
                that exists with the same config and labels it returns the id and changes
                nothing, which is how a restarted trainer finds its job again (keep the id
                with the checkpoint: ``Session.state_dict()["job_id"]``). Without one, the
                coordinator picks the id.

        Returns:
            The job id.

        Raises:
            InvalidArgument: an invalid config or ``job_id``; labels of the wrong shape, not
                integers, outside ``[0, num_classes)``, or leaving a class without examples.
            FailedPrecondition: ``job_id`` exists with another config or other labels.
            Unavailable: the coordinator or its state store cannot answer (a remote
                coordinator: none reachable at its address); nothing was created.
        """
        ...

    def open_session(self, job_id: str, rank: int) -> SessionInfo: ...

    def get_region(self, job_id: str, rank: int, step: int) -> RegionView: ...

    def get_regions(
        self, job_id: str, first_rank: int, num_ranks: int, step: int
    ) -> list[RegionView]:
        """The views of ranks ``first_rank .. first_rank + num_ranks - 1`` of the region
        holding ``step``, in one fetch (rank 0 of ranks that share it): what
        :meth:`get_region` answers each of them, except that it waits while any of them
        selects and none must embed.

        Raises:
            InvalidArgument: ``num_ranks < 1`` or a range past the job's world size.
            NotFound: no job ``job_id``.
        """
        ...

    def submit_embeddings(
        self,
        job_id: str,
        rank: int,
        region_id: int,
        indices: np.ndarray,
        embeddings: np.ndarray,
        losses: np.ndarray,
    ) -> None: ...

    def submit_shared_embeddings(
        self,
        job_id: str,
        first_rank: int,
        region_id: int,
        parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray] | None],
    ) -> None:
        """One upload on behalf of ranks ``first_rank .. first_rank + len(parts) - 1`` (rank
        0 of ranks that share it), sent as rank ``first_rank``: ``parts[i]`` is what rank
        ``first_rank + i`` would pass :meth:`submit_embeddings` (None: nothing). Committed
        all or nothing, and a resend of a committed upload changes nothing, as with
        :meth:`submit_embeddings` (over gRPC: per stream of MAX_STREAM_CHUNKS chunks; every
        part's arrays and the rank range are checked before the first).

        Raises:
            InvalidArgument: a broken part (as :meth:`submit_embeddings` checks one, naming
                the rank), indices that are not the rank's candidates, a range past the
                job's world size, or no rows at all.
            NotFound: no job ``job_id``.
            FailedPrecondition: ``region_id`` is not collecting embeddings.
        """
        ...

    def report_check(self, job_id: str, rank: int, report: CheckReport) -> CheckDecision: ...

    def publish_model(
        self,
        job_id: str,
        artifact: bytes,
        inputs: np.ndarray,
        num_weights: int,
        trainer_side: str = "",
    ) -> None:
        """Service side: hand the selectors the model (a ``torch.export`` artifact taking
        ``num_weights`` flat weights) and the ``(N, ...)`` float32 inputs of every example;
        or, with ``trainer_side`` (the reason), none: the ranks embed from now on."""
        ...

    def publish_weights(self, job_id: str, version: int, weights: np.ndarray) -> None:
        """Service side: the model's flat weights before step ``version`` (float32, or
        bfloat16 as uint16); the selectors embed the next region with them."""
        ...

    def job_status(self, job_id: str) -> JobStatus: ...


@runtime_checkable
class JobSnapshots(Protocol):
    """A coordinator whose jobs live only as long as the trainer's process (the in-process
    one): a checkpoint carries the job's state, and a new coordinator adopts it on resume.

    A coordinator with a life of its own (``crest serve``) keeps its jobs itself (durably with
    a Redis store) and does not offer this.
    """

    def export_job(self, job_id: str) -> bytes:
        """The job's whole state now (the store's snapshot encoding)."""
        ...

    def restore_job(self, job_id: str, snapshot: bytes) -> bool:
        """Adopt :meth:`export_job`'s ``snapshot`` for the job ``job_id``, which must exist
        with the same config and labels, if this coordinator's copy is behind it (has opened
        fewer regions). Returns whether it was adopted.

        Raises:
            InvalidArgument: ``snapshot`` is no snapshot of job ``job_id``.
            NotFound: no job ``job_id``.
            FailedPrecondition: the job has another config or other labels.
        """
        ...


class CheckRecord(BaseModel):
    step: int
    loss: float
    predicted: float
    relative_error: float
    new_region: bool


class RegionStats(BaseModel):
    """Selection statistics of one region (the dashboard's raw material)."""

    region_id: int
    start_step: int
    end_step: int | None = None  # exclusive; None while the region runs
    end_reason: str | None = None  # "check", "bound" (coreset uses) or "budget"
    num_coresets: int  # P per rank
    check_interval: int  # k
    num_candidates: int
    pool_size: int
    pool_per_class: list[int]  # empty for all but the job's last 64 regions (bounded state)
    fallback: bool = False  # served stratified random batches: selection failed or timed out
    dropped: int = 0  # examples that left the pool when this region opened
    readmitted: int = 0  # dropped examples returned for re-examination
    candidate_loss: float | None = None  # mean loss over the candidates selectable (not excluded)
    selected_loss: float | None = None  # mean loss over the selected examples
    weight_quantiles: list[float] = []  # min, q25, median, q75, max of rescaled weights
    initial_loss: float | None = None  # L_0
    curvature: float | None = None  # mean over ranks of the reported curvature
    checks: list[CheckRecord] = []
    mode: Literal["crest", "random"] = "crest"  # how this region's batches were made
    decision: str = ""  # why (strategy auto: the last test's verdict and its numbers)
    # The monitor: relative squared error of each batch's mean embedding-gradient against its
    # random subset's mean, averaged over the region's subsets; for the weighted coreset and
    # for equal-size stratified random batches from the same subsets. None: not measured.
    coreset_error: float | None = None
    random_error: float | None = None
    # What the monitor measured: "all S subsets", "s of S subsets (budget)" (a deterministic
    # sample within its budget), "skipped: ..." (the selection had used its deadline), or ""
    # (no monitor: random batches or a fallback).
    monitor: str = ""
    # Who embedded the candidates ("trainer" at the region's start, or "service" from
    # published weights), and how many steps old those weights were when the region started.
    embedded_by: Literal["trainer", "service"] = "trainer"
    staleness: int | None = None
    # The oldest checks left out of ``checks`` so that a remote status fits one message.
    checks_omitted: int = 0
    # exclude_noisy: subset members (candidate draws) not eligible as representatives.
    excluded: int = 0
    # Strategy auto's test (service/strategy.py AutoPolicy): this region's role in it
    # ("coresets", "random", "measure": the region after the window, or ""), the probe
    # sample's mean clipped loss measured with its candidates, and, on the measure region,
    # the window's mean probe-loss decrease per step with coresets and with random batches...
    auto_test: str = ""
    probe_loss: float | None = None
    loss_rate_coresets: float | None = None
    loss_rate_random: float | None = None
    # ...and the mean over the window's coreset regions of their selected examples' mean loss
    # minus their candidates' (auto_min_loss_excess, auto_max_loss_excess).
    loss_excess_coresets: float | None = None


class RegionTotals(BaseModel):
    """Job-wide totals of regions' statistics, for what the status and the dashboard count
    over a whole job: the live state keeps only its last regions' statistics (``STATS_KEPT``
    in :mod:`crest.service.job`), so the dropped ones are summed here as they leave
    (``JobStatus.omitted_totals``) and :func:`region_totals` adds the kept ones."""

    regions: int = 0
    crest: int = 0  # regions by how their batches were made (a fallback is not crest)
    random: int = 0
    fallback: int = 0
    # Switches between coresets and random batches (a fallback counts as coresets), and the
    # last region's kind ("crest", "random", "" before any), so that a sum continues them.
    to_crest: int = 0
    to_random: int = 0
    last_kind: str = ""
    ended_check: int = 0  # closed regions by end reason
    ended_bound: int = 0
    ended_budget: int = 0
    checks: int = 0
    checks_exceeded: int = 0  # relative error above the job's tau
    dropped: int = 0
    readmitted: int = 0
    check_interval_sum: int = 0  # for means over regions
    num_coresets_sum: int = 0

    def plus(self, regions: list[RegionStats], tau: float) -> RegionTotals:
        """These totals with ``regions`` (in order, after the ones counted) added."""
        totals = self.model_copy()
        for r in regions:
            totals.regions += 1
            kind = "fallback" if r.fallback else r.mode
            setattr(totals, kind, getattr(totals, kind) + 1)
            made = "random" if kind == "random" else "crest"
            if totals.last_kind and made != totals.last_kind:
                totals.to_crest += made == "crest"
                totals.to_random += made == "random"
            totals.last_kind = made
            if r.end_step is not None and r.end_reason in ("check", "bound", "budget"):
                name = f"ended_{r.end_reason}"
                setattr(totals, name, getattr(totals, name) + 1)
            totals.checks += len(r.checks)
            totals.checks_exceeded += sum(c.relative_error > tau for c in r.checks)
            totals.dropped += r.dropped
            totals.readmitted += r.readmitted
            totals.check_interval_sum += r.check_interval
            totals.num_coresets_sum += r.num_coresets
        return totals


class TrainerTime(BaseModel):
    """Where one rank's time went (from its last check report)."""

    rank: int
    train_seconds: float  # in the training loop between batches
    selection_seconds: float  # candidate passes, uploads, waiting, Hessian/gradient, checks

    @property
    def selection_share(self) -> float:
        total = self.train_seconds + self.selection_seconds
        return self.selection_seconds / total if total > 0 else 0.0


class JobStatus(BaseModel):
    job_id: str
    config: JobConfig
    total_steps: int
    step: int  # steps known to be trained: the start of the current region or last check + 1
    finished: bool
    pool_size: int
    pool_per_class: list[int]
    class_sizes: list[int]  # examples per class in the whole training set
    dropped: int
    regions: list[RegionStats]  # opened so far, the current one last
    trainers: list[TrainerTime] = []
    next_region: RegionStats | None = None  # service side: drawn ahead, being prepared
    selection_side: Literal["trainer", "service"] = "trainer"  # who embeds now
    selection_side_reason: str = ""  # why (e.g. the model could not be exported)
    # The oldest regions left out of ``regions`` (which then starts at region
    # ``regions_omitted``): all but the job's last ``STATS_KEPT`` (crest.service.job; the live
    # state keeps no more), and on the wire as many more as a remote status needs to fit one
    # message. ``omitted_totals`` sums their statistics: :func:`region_totals` gives the
    # job-wide totals.
    regions_omitted: int = 0
    omitted_totals: RegionTotals = RegionTotals()


def region_totals(status: JobStatus) -> RegionTotals:
    """Totals over every region the job opened, those left out of ``status.regions`` too."""
    return status.omitted_totals.plus(status.regions, status.config.tau)
