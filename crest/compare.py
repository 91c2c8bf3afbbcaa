"""Train one model several ways and compare: Full vs Random vs CREST vs auto, same model,
schedule and seeds. ``crest demo`` runs a short plan; ``crest bench e2e`` the benchmark's.

Workloads: W1 is MNIST-1D (40k/10k); W2 is a redundant, noisily labelled training set built
from it (:func:`crest.workloads.mnist1d_redundant`), where selection should matter; W3 is
MNIST-1D subsampled to an imbalanced class mix, 40% down to 2%
(:func:`crest.workloads.mnist1d_imbalanced`), where a class-balanced objective would show;
W4 is MNIST-1D with 10% of its training labels wrong (:func:`crest.workloads.mnist1d_noisy`),
label noise without W2's near-copies; W5 is a synthetic task of 100 classes
(:func:`crest.workloads.many_classes`), for what depends on C.
Every evaluation measures accuracy and balanced accuracy (the mean per-class recall) on the
workload's test set.
Every method trains the same 1-D CNN with SGD + momentum, the same learning rate and the same
step-decay schedule written in (virtual) epochs, so it compresses with the step budget.
Full trains ``epochs`` passes over the data; Random, CREST and auto train ``train_frac`` of
Full's steps: Random on uniform mini-batches (weight 1), CREST on weighted coresets from the
coordinator, auto on coresets while the coordinator's monitor says they beat random batches;
crest-balanced (an extra, on request) is CREST with ``class_weighting="balanced"``, the
class-balanced objective that was the default before issue 13.
Wall-clock is split into training steps, selection work (candidate forward passes, uploads
and selection, gradient/Hessian, checks) and evaluation; evaluation is reported but never
counted in a method's time.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from crest.client import JobConfig, Session, tensor_fetch, weighted_loss
from crest.proto.contract import Coordinator, region_totals
from crest.service.strategy import excess_outside
from crest.workloads import WORKLOADS, Dataset, cnn1d


@dataclass(frozen=True)
class TrainSetup:
    """What every method shares."""

    epochs: float = 30.0
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training; lr *= gamma at each
    gamma: float = 0.1
    channels: int = 32
    evals: int = 30  # test evaluations per run, evenly spaced in steps
    device: str = "cpu"  # the trainer's: model, batches and evaluation (e.g. "cuda:0")


@dataclass(frozen=True)
class CrestSetup:
    """CREST's knobs (those the spec leaves open), passed to the job and the session."""

    tau: float = 0.1
    subset_size: int | None = None
    num_coresets: int = 5
    max_coresets: int | None = None
    max_coreset_uses: int | None = 4
    check_interval: int = 1
    max_check_interval: int = 8
    check_sample_size: int = 256
    adaptive: bool = True
    drop_interval: float = 1.0
    gradient: str = "check"
    hessian_probes: int = 0
    strategy: str = "crest"
    class_weighting: str = "proportional"
    auto_min_gain: float = JobConfig.model_fields["auto_min_gain"].default
    auto_switch_margin: float = JobConfig.model_fields["auto_switch_margin"].default
    auto_retest_epochs: float = JobConfig.model_fields["auto_retest_epochs"].default
    auto_test_epochs: float = JobConfig.model_fields["auto_test_epochs"].default
    auto_probe_size: int = JobConfig.model_fields["auto_probe_size"].default
    auto_max_loss_excess: float = JobConfig.model_fields["auto_max_loss_excess"].default
    auto_min_loss_excess: float = JobConfig.model_fields["auto_min_loss_excess"].default
    selection_side: str = "trainer"
    max_staleness: int = 32
    lookahead_coresets: bool = False
    exclude_noisy: bool = JobConfig.model_fields["exclude_noisy"].default
    noisy_mads: float = JobConfig.model_fields["noisy_mads"].default
    weight_exponent: float = JobConfig.model_fields["weight_exponent"].default

    def job_config(self, data: Dataset, train: TrainSetup, frac: float, seed: int) -> JobConfig:
        tags = " (service side)" if self.selection_side == "service" else ""
        tags += " (robust)" if self.exclude_noisy else ""
        return JobConfig(
            name=f"{data.name} {self.strategy}{tags} {frac:.0%} seed {seed}",  # the dashboard's
            num_examples=len(data.y_train),
            num_classes=data.num_classes,
            batch_size=train.batch_size,
            epochs=train.epochs,
            train_frac=frac,
            seed=seed,
            tau=self.tau,
            subset_size=self.subset_size,
            num_coresets=self.num_coresets,
            max_coresets=self.max_coresets,
            max_coreset_uses=self.max_coreset_uses,
            check_interval=self.check_interval,
            max_check_interval=self.max_check_interval,
            check_sample_size=self.check_sample_size,
            adaptive=self.adaptive,
            drop_interval=self.drop_interval,
            strategy=self.strategy,
            class_weighting=self.class_weighting,
            auto_min_gain=self.auto_min_gain,
            auto_switch_margin=self.auto_switch_margin,
            auto_retest_epochs=self.auto_retest_epochs,
            auto_test_epochs=self.auto_test_epochs,
            auto_probe_size=self.auto_probe_size,
            auto_max_loss_excess=self.auto_max_loss_excess,
            auto_min_loss_excess=self.auto_min_loss_excess,
            selection_side=self.selection_side,
            max_staleness=self.max_staleness,
            lookahead_coresets=self.lookahead_coresets,
            exclude_noisy=self.exclude_noisy,
            noisy_mads=self.noisy_mads,
            weight_exponent=self.weight_exponent,
        )


@dataclass
class RunResult:
    workload: str
    method: str
    train_frac: float
    seed: int
    steps: int
    final_acc: float
    best_acc: float
    final_balanced_acc: float  # mean per-class recall at the end
    per_class_recall: list[float]  # at the end
    curve: list[tuple[int, float, float, float]]  # (steps, seconds counted, acc, balanced acc)
    seconds: dict[str, float]  # train, embed, select, hessian, check, eval, total
    regions: int = 0
    mean_check_interval: float | None = None
    mean_num_coresets: float | None = None
    pool_end: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Scores:
    """One evaluation on a test set."""

    accuracy: float
    per_class_recall: list[float]  # NaN for a class without test examples

    @property
    def balanced_accuracy(self) -> float:
        """The mean recall over the classes the test set holds."""
        return float(np.nanmean(self.per_class_recall))


def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, batch: int = 2048
) -> Scores:
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)  # the model's device; counting stays on the CPU
    device = x.device if param is None else param.device
    hits = torch.zeros(num_classes, dtype=torch.int64)
    with torch.no_grad():
        for xs, ys in zip(x.split(batch), y.split(batch), strict=True):
            right = ys[model(xs.to(device)).argmax(1).cpu() == ys]
            hits += torch.bincount(right, minlength=num_classes)
    model.train(was_training)
    totals = torch.bincount(y, minlength=num_classes)
    recall = [h / t if t else math.nan for h, t in zip(hits.tolist(), totals.tolist(), strict=True)]
    return Scores(accuracy=int(hits.sum()) / len(y), per_class_recall=recall)


def lr_at(setup: TrainSetup, step: int, total: int) -> float:
    passed = sum(step >= round(m * total) for m in setup.milestones)
    return setup.lr * setup.gamma**passed


Batches = Iterator[tuple[torch.Tensor, torch.Tensor | None]]


def _train(
    name: str,
    data: Dataset,
    setup: TrainSetup,
    seed: int,
    total: int,
    make_batches: Callable[[nn.Module], Batches],
    selection_seconds: Callable[[], dict[str, float]],
    progress: bool,
) -> tuple[nn.Module, dict[str, Any]]:
    """The one training loop every method runs; only the batches differ."""
    torch.manual_seed(seed)
    model = cnn1d(data.x_train.shape[1], setup.channels, data.num_classes).to(setup.device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=setup.lr, momentum=setup.momentum, weight_decay=setup.weight_decay
    )
    eval_at = {max(1, round(total * (i + 1) / setup.evals)) for i in range(setup.evals)}
    curve: list[tuple[int, float, float, float]] = []
    scores: Scores | None = None
    # Each class's share of the loss weight over the run (uniform batches: of the examples).
    class_weight = torch.zeros(data.num_classes, dtype=torch.float64)
    elapsed_s = eval_s = 0.0  # everything but evaluation, selection work included
    bar = tqdm(
        total=total, desc=name, disable=not progress, leave=False, mininterval=0.5, file=sys.stderr
    )
    step = 0
    batches = make_batches(model)
    while True:
        started = time.perf_counter()
        try:
            indices, weights = next(batches)
        except StopIteration:
            break
        for group in optimizer.param_groups:
            group["lr"] = lr_at(setup, step, total)
        logits = model(data.x_train[indices].to(setup.device))
        targets = data.y_train[indices]
        if weights is None:
            loss = nn.functional.cross_entropy(logits, targets.to(setup.device))
        else:
            loss = weighted_loss(logits, targets.to(setup.device), weights.to(setup.device))
        class_weight += torch.bincount(
            targets,
            weights=None if weights is None else weights.to(torch.float64),
            minlength=data.num_classes,
        ).to(torch.float64)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        elapsed_s += time.perf_counter() - started
        step += 1
        bar.update(1)
        if step in eval_at:
            started = time.perf_counter()
            scores = evaluate(model, data.x_test, data.y_test, data.num_classes)
            eval_s += time.perf_counter() - started
            curve.append((step, elapsed_s, scores.accuracy, scores.balanced_accuracy))
            bar.set_postfix(acc=f"{scores.accuracy:.3f}")
    bar.close()
    # The session works inside next(), which the step timer saw: "train" is the rest.
    selection = selection_seconds()
    seconds = {"train": elapsed_s - sum(selection.values()), **selection, "eval": eval_s}
    seconds["total"] = elapsed_s
    assert scores is not None  # the last step is always evaluated
    return model, {
        "steps": step,
        "curve": curve,
        "seconds": seconds,
        "per_class_recall": scores.per_class_recall,
        "class_weight_share": (class_weight / class_weight.sum()).tolist(),
    }


def _permutation_batches(n: int, batch: int, steps: int, seed: int) -> Batches:
    """Uniform mini-batches: consecutive slices of fresh random permutations (weight 1)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < steps:
        order = torch.from_numpy(rng.permutation(n))
        for start in range(0, n - batch + 1, batch):
            if done == steps:
                return
            yield order[start : start + batch], None
            done += 1


def run_baseline(
    data: Dataset, setup: TrainSetup, frac: float, seed: int, progress: bool = True
) -> RunResult:
    """Full (``frac == 1``) or Random (``frac < 1``) training."""
    n = len(data.y_train)
    total = max(1, round(frac * round(setup.epochs * math.ceil(n / setup.batch_size))))
    method = "full" if frac >= 1 else "random"
    _, out = _train(
        f"{method} f={frac:g} seed={seed}", data, setup, seed, total,
        lambda _model: _permutation_batches(n, setup.batch_size, total, seed),
        dict, progress,
    )  # fmt: skip
    return _result(data.name, method, frac, seed, out)


def run_crest(
    data: Dataset,
    setup: TrainSetup,
    crest: CrestSetup,
    frac: float,
    seed: int,
    coordinator: Coordinator,
    progress: bool = True,
    method: str | None = None,
) -> RunResult:
    """A run on the coordinator's batches, labelled ``method`` (default: the strategy)."""
    method = method or crest.strategy
    config = crest.job_config(data, setup, frac, seed)
    job_id = coordinator.create_job(config, data.y_train.numpy())
    sessions: list[Session] = []

    def make_batches(model: nn.Module) -> Batches:
        session = Session(
            coordinator, job_id, model=model,
            fetch=tensor_fetch(data.x_train, data.y_train, setup.device),
            gradient=crest.gradient, hessian_probes=crest.hessian_probes, seed=seed,
        )  # fmt: skip
        sessions.append(session)
        return ((b.indices, b.weights) for b in session.batches())

    def selection_seconds() -> dict[str, float]:
        if not sessions:
            return {}
        t = sessions[0].timings
        return {"embed": t.embed, "select": t.upload + t.select, "hessian": t.quadratic,
                "check": t.check}  # fmt: skip

    _, out = _train(
        f"{method} f={frac:g} seed={seed}", data, setup, seed, config.total_steps,
        make_batches, selection_seconds, progress,
    )  # fmt: skip
    result = _result(data.name, method, frac, seed, out)
    status = coordinator.job_status(job_id)  # type: ignore[attr-defined]
    regions = status.regions  # the last STATS_KEPT regions; totals cover them all
    totals = region_totals(status)
    result.regions = totals.regions
    result.mean_check_interval = totals.check_interval_sum / totals.regions
    result.mean_num_coresets = totals.num_coresets_sum / totals.regions
    result.pool_end = status.pool_size
    result.extra = {
        **result.extra,
        "pool_per_class_end": status.pool_per_class,
        "class_sizes": status.class_sizes,
        "checks": sessions[0].timings.checks,
        "mean_region_steps": statistics.fmean(
            (r.end_step or config.total_steps) - r.start_step for r in regions
        ),
        "end_reasons": {
            reason: getattr(totals, f"ended_{reason}") for reason in ("check", "bound", "budget")
        },
        "selected_minus_candidate_loss": _mean(
            r.selected_loss - r.candidate_loss
            for r in regions
            if r.selected_loss is not None and r.candidate_loss is not None
        ),
        "crest_step_share": sum(
            (r.end_step or config.total_steps) - r.start_step for r in regions if r.mode == "crest"
        )
        / config.total_steps,
        # exclude_noisy: the share of subset members (W x P x r per region, give or take a
        # class budget's rounding) kept from selection, over coreset regions
        "excluded_share": _mean(
            r.excluded / (config.world_size * r.num_coresets * config.resolved_subset_size)
            for r in regions
            if r.mode == "crest"
        ),
        "coreset_error": _mean(r.coreset_error for r in regions if r.coreset_error is not None),
        "random_error": _mean(r.random_error for r in regions if r.random_error is not None),
        # The bars a test's verdict used, so that the run's overall verdict uses them too.
        "auto_rule": {field: getattr(config, field) for field in AUTO_RULE_FIELDS},
        # Strategy auto's tests: each one's measured probe-loss rates and loss excess, and
        # its verdict (the decision of the region after its measure region, or after the
        # first coreset arm of a test that its loss excess ended).
        "auto_tests": [
            {
                "step": r.end_step,
                "coresets_rate": r.loss_rate_coresets,
                "random_rate": r.loss_rate_random,
                "loss_excess": r.loss_excess_coresets,
                "decision": after.decision if after else None,
            }
            for r, after in zip(regions, [*regions[1:], status.next_region], strict=True)
            if r.auto_test == "measure" or r.loss_excess_coresets is not None
        ],
        "selection_share": sessions[0].timings.selection_share,
        "timings": asdict(sessions[0].timings),
        # What the service side changes: the trainer's wait for regions, how old the weights
        # behind each region's coresets were, and the candidates embedded per trained step
        # (whoever embedded them; a region drawn ahead that never ran counts too).
        "wait_s": sessions[0].timings.select,
        "staleness": _mean(r.staleness for r in regions if r.staleness is not None),
        "candidates_per_step": sum(
            r.num_candidates for r in [*regions, status.next_region] if r and r.mode == "crest"
        )
        / config.total_steps,
        "embedded_by": sorted({r.embedded_by for r in regions if r.mode == "crest"}),
        "side": sessions[0].side,
    }
    return result


def _mean(values) -> float | None:
    values = list(values)
    return statistics.fmean(values) if values else None


def _result(workload: str, method: str, frac: float, seed: int, out: dict[str, Any]) -> RunResult:
    curve = out["curve"]
    return RunResult(
        workload=workload,
        method=method,
        train_frac=frac,
        seed=seed,
        steps=out["steps"],
        final_acc=curve[-1][2],
        best_acc=max(point[2] for point in curve),
        final_balanced_acc=curve[-1][3],
        per_class_recall=out["per_class_recall"],
        curve=curve,
        seconds=out["seconds"],
        extra={"class_weight_share": out["class_weight_share"]},
    )


def time_to_accuracy(curve: list[tuple[int, float, float, float]], target: float) -> float | None:
    """Seconds until a run's test accuracy first reached ``target`` (None if never)."""
    for _, seconds, acc, _ in curve:
        if acc >= target:
            return seconds
    return None


# ------------------------------------------------------------------------------ the run
METHODS: dict[str, dict[str, Any]] = {
    "random": {},
    "crest": {"strategy": "crest"},
    "auto": {"strategy": "auto"},
    "crest-balanced": {"strategy": "crest", "class_weighting": "balanced"},
    "crest-robust": {"strategy": "crest", "exclude_noisy": True},
    "crest-service": {"strategy": "crest", "selection_side": "service"},
    "auto-service": {"strategy": "auto", "selection_side": "service"},
    "crest-lookahead": {
        "strategy": "crest",
        "selection_side": "service",
        "lookahead_coresets": True,
    },
    # The coordinator's stratified random batches, weighted like coresets: what auto serves
    # after a random verdict (the plain "random" is uniform batches, without the coordinator).
    "random-stratified": {"strategy": "random"},
}
"""The methods a plan may name besides full: the CrestSetup fields each overrides (random runs
locally, without the coordinator)."""


@dataclass(frozen=True)
class E2EPlan:
    workloads: tuple[str, ...] = ("w1", "w2", "w3")  # keys of crest.workloads.WORKLOADS
    methods: tuple[str, ...] = ("random", "crest", "auto")  # besides full; see METHODS
    seeds: tuple[int, ...] = (0, 1, 2)
    fracs: tuple[float, ...] = (0.1, 0.2)
    full: bool = True  # also train on all data (the speed-up and time-to-accuracy columns)
    num_samples: int = 50_000
    train: TrainSetup = TrainSetup()
    crest: CrestSetup = CrestSetup()


def describe_workload(name: str) -> str:
    """A workload's one-line description (its function's, with the arguments it fixes)."""
    make = WORKLOADS[name]
    doc = (getattr(make, "func", make).__doc__ or "").split("\n")[0]
    fixed = getattr(make, "keywords", {})
    return doc + (f" ({', '.join(f'{k}={v}' for k, v in fixed.items())})" if fixed else "")


def warm_up(data: Dataset, setup: TrainSetup) -> None:
    """Pay one-time costs (lazy imports on the first optimizer step, allocator warm-up) before
    anything is timed, so that they land on no method's clock."""
    model = cnn1d(data.x_train.shape[1], setup.channels, data.num_classes).to(setup.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=setup.momentum)
    x, y = data.x_train[: setup.batch_size], data.y_train[: setup.batch_size]
    for _ in range(3):
        loss = nn.functional.cross_entropy(model(x.to(setup.device)), y.to(setup.device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    evaluate(model, data.x_test, data.y_test, data.num_classes)


def run_e2e(
    plan: E2EPlan, coordinator: Coordinator, progress: bool = True, partial: Path | None = None
) -> dict[str, Any]:
    """Train every (workload, seed, fraction, method) of ``plan``; with ``partial``, the runs
    so far are written there after each one (a long benchmark stopped early keeps them)."""
    unknown = sorted(set(plan.workloads) - set(WORKLOADS))
    unknown += sorted(set(plan.methods) - set(METHODS))
    if unknown:
        raise ValueError(
            f"unknown workloads or methods {unknown}: workloads are {sorted(WORKLOADS)}, "
            f"methods {sorted(METHODS)}"
        )
    runs: list[RunResult] = []
    for workload in plan.workloads:
        data = WORKLOADS[workload](plan.num_samples)
        warm_up(data, plan.train)
        for seed in plan.seeds:
            full = run_baseline(data, plan.train, 1.0, seed, progress) if plan.full else None
            if full is not None:
                runs.append(full)
            for frac in plan.fracs:
                for method in plan.methods:
                    if method == "random":
                        result = run_baseline(data, plan.train, frac, seed, progress)
                    else:
                        crest = replace(plan.crest, **METHODS[method])
                        result = run_crest(data, plan.train, crest, frac, seed, coordinator,
                                           progress, method)  # fmt: skip
                    runs.append(result)
                    if partial is not None:
                        write_json({"benchmark": "e2e", "partial": True,
                                    "runs": [asdict(r) for r in runs]}, partial)  # fmt: skip
            if full is None:
                continue
            for r in runs:
                if r.workload == full.workload and r.seed == seed:
                    r.extra["full_seconds_to_this_acc"] = time_to_accuracy(full.curve, r.final_acc)
                    r.extra["speedup_vs_full"] = full.seconds["total"] / r.seconds["total"]
                    r.extra["acc_gap_to_full"] = full.final_acc - r.final_acc
    return {
        "benchmark": "e2e",
        "workloads": {name: describe_workload(name) for name in plan.workloads},
        "plan": asdict(plan),
        "machine": machine(),
        "runs": [asdict(r) for r in runs],
        "summary": summarise(runs),
    }


def summarise(runs: list[RunResult]) -> list[dict[str, Any]]:
    """One row per (workload, method, train_frac): means and spreads over seeds."""

    def stat(values: list[float]) -> tuple[float, float]:
        return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0

    rows = []
    order = {"full": 0, **{method: i + 1 for i, method in enumerate(METHODS)}}
    keys = sorted(
        {(r.workload, r.method, r.train_frac) for r in runs},
        key=lambda k: (k[0], -k[2] if k[1] == "full" else 0, k[2], order.get(k[1], 9)),
    )
    for workload, method, frac in keys:
        group = [
            r for r in runs if (r.workload, r.method, r.train_frac) == (workload, method, frac)
        ]
        row: dict[str, Any] = {
            "workload": workload,
            "method": method,
            "train_frac": frac,
            "seeds": len(group),
            "final_acc": stat([r.final_acc for r in group]),
            "best_acc": stat([r.best_acc for r in group]),
            "final_balanced_acc": stat([r.final_balanced_acc for r in group]),
            "per_class_recall": np.nanmean([r.per_class_recall for r in group], axis=0).tolist(),
            "class_weight_share": np.mean(
                [r.extra["class_weight_share"] for r in group], axis=0
            ).tolist(),
            "steps": group[0].steps,
            "seconds": {k: statistics.fmean(r.seconds[k] for r in group) for k in group[0].seconds},
            "speedup_vs_full": _mean(
                r.extra["speedup_vs_full"] for r in group if "speedup_vs_full" in r.extra
            ),
        }
        tta = [r.extra.get("full_seconds_to_this_acc") for r in group]
        reached = [t for t in tta if t is not None]  # none without Full runs
        row["full_seconds_to_this_acc"] = (
            statistics.fmean(reached) if len(reached) == len(tta) else None
        )
        if method not in ("full", "random"):  # runs on the coordinator's batches
            row["regions"] = statistics.fmean(r.regions for r in group)
            row["mean_check_interval"] = statistics.fmean(r.mean_check_interval or 0 for r in group)
            row["mean_num_coresets"] = statistics.fmean(r.mean_num_coresets or 0 for r in group)
            row["pool_end"] = statistics.fmean(r.pool_end or 0 for r in group)
            row["pool_per_class_end"] = np.mean(
                [r.extra["pool_per_class_end"] for r in group], axis=0
            ).tolist()
            for key in ("coreset_error", "random_error", "crest_step_share", "selection_share",
                        "wait_s", "staleness", "candidates_per_step", "excluded_share",
                        "selected_minus_candidate_loss"):  # fmt: skip
                values = [r.extra[key] for r in group if r.extra.get(key) is not None]
                row[key] = statistics.fmean(values) if values else None
        rows.append(row)
    return rows


def opt(value: float | None, fmt: str) -> str:
    """``value`` formatted, or "-" when it was not measured."""
    return "-" if value is None else format(value, fmt)


def random_baseline(
    summary: list[dict[str, Any]], measure: Callable[[dict[str, Any]], Any]
) -> dict[tuple[str, float], Any]:
    """``measure(row)`` of each (workload, fraction)'s Random row: what the others compare to."""
    return {
        (row["workload"], row["train_frac"]): measure(row)
        for row in summary
        if row["method"] == "random"
    }


def format_table(summary: list[dict[str, Any]]) -> str:
    header = (
        "| workload | method | frac | final acc % | balanced acc % | best acc % | steps "
        "| regions | k | P "
        "| pool end | train s | embed s | select s | grad/hess s | check s | eval s | total s "
        "| speed-up vs full | full s to same acc | coreset err | random err | gain "
        "| coreset steps | selection share |"
    )
    lines = [header, "|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|"]

    for row in summary:
        s = row["seconds"]
        coreset, random = row.get("coreset_error"), row.get("random_error")
        gain = random / coreset if coreset and random is not None else None
        lines.append(
            f"| {row['workload']} | {row['method']} | {row['train_frac']:g} "
            f"| {100 * row['final_acc'][0]:.2f} ± {100 * row['final_acc'][1]:.2f} "
            f"| {100 * row['final_balanced_acc'][0]:.2f} "
            f"± {100 * row['final_balanced_acc'][1]:.2f} "
            f"| {100 * row['best_acc'][0]:.2f} ± {100 * row['best_acc'][1]:.2f} "
            f"| {row['steps']} | {opt(row.get('regions'), '.0f')} "
            f"| {opt(row.get('mean_check_interval'), '.2f')} "
            f"| {opt(row.get('mean_num_coresets'), '.1f')} | {opt(row.get('pool_end'), '.0f')} "
            f"| {s['train']:.1f} | {s.get('embed', 0):.1f} | {s.get('select', 0):.1f} "
            f"| {s.get('hessian', 0):.1f} | {s.get('check', 0):.1f} | {s['eval']:.1f} "
            f"| {s['total']:.1f} | {opt(row['speedup_vs_full'], '.2f')}"
            f"{'' if row['speedup_vs_full'] is None else 'x'} "
            f"| {opt(row['full_seconds_to_this_acc'], '.1f')} "
            f"| {opt(coreset, '.4f')} | {opt(random, '.4f')} | {opt(gain, '.2f')} "
            f"| {opt(row.get('crest_step_share'), '.0%')} "
            f"| {opt(row.get('selection_share'), '.0%')} |"
        )
    return "\n".join(lines)


def format_pipeline_table(summary: list[dict[str, Any]]) -> str:
    """What the trainer pays per method: its wall-clock at equal steps (evaluation excluded)
    against Random's, its wait for regions, the staleness of the weights behind the coresets,
    and the candidates embedded per trained step."""
    header = (
        "| workload | method | frac | final acc % | trainer s | vs random | waiting s "
        "| waiting % | staleness (steps) | candidates / step | selection share |"
    )
    lines = [header, "|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|"]
    random_s = random_baseline(summary, lambda row: row["seconds"]["total"])

    for row in summary:
        if row["method"] == "full":
            continue
        total = row["seconds"]["total"]
        base = random_s.get((row["workload"], row["train_frac"]))
        wait = row.get("wait_s")
        lines.append(
            f"| {row['workload']} | {row['method']} | {row['train_frac']:g} "
            f"| {100 * row['final_acc'][0]:.2f} ± {100 * row['final_acc'][1]:.2f} "
            f"| {total:.1f} | {opt(None if base is None else total / base, '.2f')}x "
            f"| {opt(wait, '.2f')} | {opt(None if wait is None else wait / total, '.1%')} "
            f"| {opt(row.get('staleness'), '.1f')} | {opt(row.get('candidates_per_step'), '.0f')} "
            f"| {opt(row.get('selection_share'), '.0%')} |"
        )
    return "\n".join(lines)


def format_class_table(summary: list[dict[str, Any]]) -> str:
    """Per-class recall, each class's share of the loss weight over the run, and (coordinator
    methods) of the pool at the end: where an accuracy gap comes from."""
    classes = len(summary[0]["per_class_recall"])
    header = (
        "| workload | method | frac | "
        + " | ".join(f"recall {c} %" for c in range(classes))
        + " | loss weight % by class | pool at end by class |"
    )
    lines = [header, "|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|"]
    for row in summary:
        recall = " | ".join(f"{100 * r:.1f}" for r in row["per_class_recall"])
        weight = " / ".join(f"{100 * w:.1f}" for w in row["class_weight_share"])
        pool = row.get("pool_per_class_end")
        pool_text = "-" if pool is None else " / ".join(f"{p:.0f}" for p in pool)
        lines.append(
            f"| {row['workload']} | {row['method']} | {row['train_frac']:g} | {recall} "
            f"| {weight} | {pool_text} |"
        )
    return "\n".join(lines)


def format_noise_table(summary: list[dict[str, Any]]) -> str:
    """Label noise: each method's accuracy against Random's at the same fraction, how much
    harder (higher-loss) its selected examples were than the candidates, and the share of
    candidates ``exclude_noisy`` kept from selection."""
    header = (
        "| workload | method | frac | final acc % | vs random (points) "
        "| selected - candidate loss | excluded share |"
    )
    lines = [header, "|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|"]
    random_acc = random_baseline(summary, lambda row: row["final_acc"][0])

    for row in summary:
        if row["method"] == "full":
            continue
        base = random_acc.get((row["workload"], row["train_frac"]))
        gap = None if base is None else 100 * (row["final_acc"][0] - base)
        lines.append(
            f"| {row['workload']} | {row['method']} | {row['train_frac']:g} "
            f"| {100 * row['final_acc'][0]:.2f} ± {100 * row['final_acc'][1]:.2f} "
            f"| {opt(gap, '+.2f')} | {opt(row.get('selected_minus_candidate_loss'), '+.2f')} "
            f"| {opt(row.get('excluded_share'), '.1%')} |"
        )
    return "\n".join(lines)


AUTO_RULE_FIELDS = ("auto_min_gain", "auto_min_loss_excess", "auto_max_loss_excess")
"""The JobConfig fields a test's verdict depends on (:meth:`AutoPolicy.after`)."""


def auto_verdict(
    tests: list[dict[str, Any]], config: JobConfig, num_classes: int = 10
) -> str | None:
    """A run's overall verdict from all of ``auto``'s tests (its ``auto_tests``): the same
    rule as one test's (:meth:`~crest.service.strategy.AutoPolicy.after`) on the rates and
    the selected-loss excess averaged over the tests (a test that its excess ended early has
    no rates); None without a measured test."""
    excess = [t["loss_excess"] for t in tests if t.get("loss_excess") is not None]
    if excess and excess_outside(statistics.fmean(excess), config, num_classes):
        return "random"
    measured = [t for t in tests if t["coresets_rate"] is not None]
    if not measured:
        return None
    rc = statistics.fmean(t["coresets_rate"] for t in measured)
    rr = statistics.fmean(t["random_rate"] for t in measured)
    return "coresets" if rc - rr >= (config.auto_min_gain - 1.0) * abs(rr) else "random"


def format_monitor_table(runs: list[dict[str, Any]]) -> str:
    """Strategy auto's monitor against the answer it predicts, per auto run and per half of
    the run (the learning rate falls 10x at half the steps): its tests' verdicts there, and
    CREST's test accuracy minus Random's (same workload, fraction and seed, where those runs
    are in ``runs``) averaged over that half's evaluations; then the verdict on the rates
    averaged over the whole run, and the final differences of CREST and of auto."""
    header = (
        "| workload | frac | seed | verdicts 1st half | CREST - Random 1st half "
        "| verdicts 2nd half | CREST - Random 2nd half | run verdict | CREST - Random final "
        "| auto - Random final | auto coreset steps |"
    )
    lines = [header, "|" + "|".join("---" for _ in range(header.count("|") - 1)) + "|"]
    by_key = {(r["workload"], r["method"], r["train_frac"], r["seed"]): r for r in runs}
    defaults = JobConfig.model_construct()  # the defaults, unvalidated: no job here
    for run in runs:
        if run["method"] != "auto" or "auto_tests" not in run["extra"]:
            continue  # (auto runs from before the paired test have no tests)
        workload, frac, seed = run["workload"], run["train_frac"], run["seed"]
        half = run["steps"] / 2
        tests = [t for t in run["extra"]["auto_tests"] if t["decision"]]
        # The run's own bars (runs recorded before they were kept: the defaults').
        rule = defaults.model_copy(update=run["extra"].get("auto_rule", {}))
        random, crest = (by_key.get((workload, m, frac, seed)) for m in ("random", "crest"))
        cells = []
        for first in (True, False):
            verdicts = [t["decision"].split(":")[0] for t in tests if (t["step"] < half) == first]
            cells.append(f"coresets {sum(v == 'coresets' for v in verdicts)} of {len(verdicts)}")
            gap = None
            if random and crest:
                gaps = [
                    100 * (c[2] - r[2])
                    for r, c in zip(random["curve"], crest["curve"], strict=True)
                    if (r[0] <= half) == first
                ]
                gap = statistics.fmean(gaps) if gaps else None
            cells.append(opt(gap, "+.2f"))
        base = None if random is None else random["final_acc"]
        final = None if base is None or crest is None else 100 * (crest["final_acc"] - base)
        lines.append(
            f"| {workload} | {frac:g} | {seed} | {' | '.join(cells)} "
            f"| {auto_verdict(tests, rule, len(run['per_class_recall'])) or '-'} "
            f"| {opt(final, '+.2f')} "
            f"| {opt(None if base is None else 100 * (run['final_acc'] - base), '+.2f')} "
            f"| {opt(run['extra'].get('crest_step_share'), '.0%')} |"
        )
    return "\n".join(lines)


def merge_results(
    paths: list[Path], methods: list[str] | None = None, fracs: list[float] | None = None
) -> dict[str, Any]:
    """:func:`run_e2e`'s result from the runs in earlier results' JSON files (partial ones
    too), each (workload, method, fraction, seed) once: from the first file that has it;
    only ``methods`` and ``fracs`` when given."""
    runs: dict[tuple[str, str, float, int], RunResult] = {}
    for path in paths:
        for run in json.loads(path.read_text())["runs"]:
            if (methods and run["method"] not in methods) or (
                fracs and run["train_frac"] not in fracs
            ):
                continue
            key = (run["workload"], run["method"], run["train_frac"], run["seed"])
            runs.setdefault(key, RunResult(**run))
    if not runs:
        raise ValueError(f"no runs in {', '.join(map(str, paths))}")
    merged = list(runs.values())
    return {
        "benchmark": "e2e",
        "merged_from": [str(path) for path in paths],
        "machine": machine(),
        "runs": [asdict(r) for r in merged],
        "summary": summarise(merged),
    }


def machine() -> dict[str, Any]:
    """Where a benchmark ran (recorded with its results)."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1))


def quick_plan(plan: E2EPlan) -> E2EPlan:
    """The demo's short version: W1, one seed, fewer epochs and samples."""
    return replace(
        plan, workloads=("w1",), seeds=(0,), num_samples=20_000,
        train=replace(plan.train, epochs=10), fracs=(0.1,),
    )  # fmt: skip
