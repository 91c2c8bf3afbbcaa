"""The end-to-end benchmark's data and scoring: W3's class mix, balanced accuracy, a tiny run."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from crest.cli import _crest_setup, _e2e_plan, build_parser
from crest.compare import (
    METHODS,
    CrestSetup,
    E2EPlan,
    RunResult,
    TrainSetup,
    auto_verdict,
    evaluate,
    format_class_table,
    format_monitor_table,
    format_noise_table,
    format_table,
    merge_results,
    run_e2e,
)
from crest.embedded import local_coordinator
from crest.proto.contract import JobConfig
from crest.workloads import (
    W3_SHARES,
    WORKLOADS,
    many_classes,
    mnist1d,
    mnist1d_imbalanced,
    mnist1d_noisy,
    mnist1d_redundant,
)

SOURCE = 5_000  # MNIST-1D samples: 4,000 train / 1,000 test before subsampling


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated MNIST-1D for the module's tests, never the user's cache."""
    return tmp_path_factory.mktemp("crest-cache")


@pytest.fixture(autouse=True)
def _use_cache(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREST_CACHE_DIR", str(cache))


def test_w3_has_the_documented_class_mix_in_train_and_test() -> None:
    data = mnist1d_imbalanced(SOURCE)
    assert W3_SHARES[0] == 0.40 and W3_SHARES[-1] == 0.02 and math.isclose(sum(W3_SHARES), 1)
    for labels in (data.y_train, data.y_test):
        counts = torch.bincount(labels, minlength=10).numpy()
        # Within rounding of the documented shares.
        assert np.all(np.abs(counts - np.asarray(W3_SHARES) * len(labels)) <= 1), counts
    assert data.num_classes == 10 and data.x_train.shape == (len(data.y_train), 40)
    # The 40% class keeps (nearly) all its training examples: the split is as large as it allows.
    source = WORKLOADS["w1"](SOURCE)
    assert int((data.y_train == 0).sum()) >= int((source.y_train == 0).sum()) - 1
    # Training examples are MNIST-1D's, with their own labels.
    first = (source.x_train == data.x_train[0]).all(1).nonzero().flatten()
    assert len(first) == 1 and source.y_train[first[0]] == data.y_train[0]


def test_w3_is_deterministic_for_its_seed() -> None:
    a, b = mnist1d_imbalanced(SOURCE), mnist1d_imbalanced(SOURCE)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    other = mnist1d_imbalanced(SOURCE, seed=1)
    assert not torch.equal(a.x_train, other.x_train)


def test_w3_rejects_shares_that_are_not_a_mix_of_ten_classes() -> None:
    with pytest.raises(ValueError, match="10 positive class shares"):
        mnist1d_imbalanced(SOURCE, shares=(0.5, 0.5))
    with pytest.raises(ValueError, match="summing to 1"):
        mnist1d_imbalanced(SOURCE, shares=(0.2,) * 10)


class _Fixed(nn.Module):
    """Predicts the class stored for each input (its first feature)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(x[:, 0].long(), 3).float()


def test_balanced_accuracy_is_the_mean_recall_over_present_classes() -> None:
    # Class 0: 4 examples, 3 right; class 1: 1 example, wrong; class 2: none in the test set.
    y = torch.tensor([0, 0, 0, 0, 1])
    predicted = torch.tensor([0, 0, 0, 2, 0])
    scores = evaluate(_Fixed(), predicted[:, None].float(), y, num_classes=3, batch=2)
    assert scores.accuracy == pytest.approx(3 / 5)
    assert scores.per_class_recall[:2] == [0.75, 0.0] and math.isnan(scores.per_class_recall[2])
    assert scores.balanced_accuracy == pytest.approx(0.375)


def test_unknown_method_or_workload_is_refused_before_any_training() -> None:
    refused = pytest.raises(ValueError, match=r"unknown workloads or methods \['w9', 'x'\]")
    with local_coordinator() as coordinator, refused:
        run_e2e(E2EPlan(workloads=("w9",), methods=("x",)), coordinator, progress=False)


def test_the_command_offers_every_workload_and_method() -> None:
    args = build_parser().parse_args(
        ["bench", "e2e", "--workloads", *WORKLOADS, "--methods", *METHODS]
    )
    assert tuple(args.workloads) == tuple(WORKLOADS) and tuple(args.methods) == tuple(METHODS)


def test_seeds_count_from_the_first_seed() -> None:
    def seeds(*argv: str) -> tuple[int, ...]:
        return _e2e_plan(build_parser().parse_args(["bench", "e2e", *argv])).seeds

    assert seeds() == (0, 1, 2)
    assert seeds("--seeds", "2") == (0, 1)
    assert seeds("--first-seed", "3") == (3, 4, 5)
    assert seeds("--first-seed", "6", "--seeds", "4") == (6, 7, 8, 9)


def test_crest_settings_override_the_defaults_and_unknown_ones_exit_with_the_known() -> None:
    setup = _crest_setup(CrestSetup(), '{"max_coresets": 10, "tau": 0.2}')
    assert (setup.max_coresets, setup.tau, setup.num_coresets) == (10, 0.2, 5)
    with pytest.raises(
        SystemExit, match=r"unknown field\(s\) \['max_corsets'\]; known: .*max_coresets"
    ):
        _crest_setup(CrestSetup(), '{"max_corsets": 10}')
    with pytest.raises(SystemExit, match="not JSON"):
        _crest_setup(CrestSetup(), "{tau: 1}")
    with pytest.raises(SystemExit, match="a JSON object"):
        _crest_setup(CrestSetup(), "[1]")


@pytest.mark.e2e
def test_tiny_w3_run_reports_balanced_accuracy_and_class_weights() -> None:
    plan = E2EPlan(
        workloads=("w3",),
        methods=("random", "crest", "crest-balanced"),
        seeds=(0,),
        fracs=(0.5,),
        num_samples=SOURCE,
        train=TrainSetup(epochs=2, batch_size=32, evals=2),
    )
    with local_coordinator() as coordinator:
        result = run_e2e(plan, coordinator, progress=False)
    rows = {row["method"]: row for row in result["summary"]}
    assert set(rows) == {"full", "random", "crest", "crest-balanced"}
    for run in result["runs"]:
        assert len(run["per_class_recall"]) == 10
        assert run["final_balanced_acc"] == pytest.approx(np.nanmean(run["per_class_recall"]))
        assert run["curve"][-1][3] == run["final_balanced_acc"]
        assert sum(run["extra"]["class_weight_share"]) == pytest.approx(1)
    # Proportional coresets weight classes by their share of the pool; balanced ones equally.
    crest, balanced = rows["crest"], rows["crest-balanced"]
    assert crest["class_weight_share"] == pytest.approx(list(W3_SHARES), abs=0.01)
    assert balanced["class_weight_share"] == pytest.approx([0.1] * 10, abs=0.01)
    assert len(balanced["pool_per_class_end"]) == 10
    table, classes = format_table(result["summary"]), format_class_table(result["summary"])
    assert "| balanced acc % |" in table and "| crest-balanced | 0.5 |" in table
    assert "| recall 9 % |" in classes


def test_w2_noise_levels_share_their_inputs_and_differ_in_the_labels_they_flip() -> None:
    clean, w2, noisy = (WORKLOADS[name](SOURCE) for name in ("w2-0", "w2", "w2-30"))
    assert (clean.name, w2.name, noisy.name) == (
        "mnist1d-redundant-noise0", "mnist1d-redundant", "mnist1d-redundant-noise30",
    )  # fmt: skip
    # One draw of the base examples and their jitter (the order differs): each example's
    # label at 0% noise, looked up by its inputs, differs from the noisy levels' on their share.
    pairs = zip(clean.x_train.numpy(), clean.y_train.tolist(), strict=True)
    clean_label = {x.tobytes(): y for x, y in pairs}
    for data, share in ((w2, 0.1), (noisy, 0.3)):
        labels = [clean_label[x.tobytes()] for x in data.x_train.numpy()]
        flipped = float(np.mean(np.asarray(labels) != data.y_train.numpy()))
        assert flipped == pytest.approx(share, abs=0.02)
    with pytest.raises(ValueError, match="label_noise"):
        mnist1d_redundant(SOURCE, label_noise=1.5)


def test_w4_is_w1_with_a_tenth_of_its_labels_flipped() -> None:
    clean, noisy = mnist1d(SOURCE), WORKLOADS["w4"](SOURCE)
    assert noisy.name == "mnist1d-noisy10"
    for name in ("x_train", "x_test", "y_test"):
        assert torch.equal(getattr(noisy, name), getattr(clean, name))
    flipped = (noisy.y_train != clean.y_train).float().mean().item()
    assert flipped == pytest.approx(0.1, abs=0.02)
    with pytest.raises(ValueError, match="label_noise"):
        mnist1d_noisy(SOURCE, label_noise=-0.1)


def test_w5_has_many_balanced_classes_and_its_noisy_twin_differs_only_in_labels() -> None:
    clean, noisy = WORKLOADS["w5"](SOURCE), WORKLOADS["w5-10"](SOURCE)
    assert (clean.name, noisy.name, clean.num_classes) == ("many100", "many100-noisy10", 100)
    assert clean.x_train.shape == (4_000, 40) and clean.x_test.shape == (1_000, 40)
    assert np.bincount(clean.y_train.numpy(), minlength=100).min() >= 30  # about 40 each
    for name in ("x_train", "x_test", "y_test"):
        assert torch.equal(getattr(noisy, name), getattr(clean, name))
    flipped = (noisy.y_train != clean.y_train).float().mean().item()
    assert flipped == pytest.approx(0.1, abs=0.02)
    again = many_classes(SOURCE)
    assert torch.equal(again.x_train, clean.x_train) and torch.equal(again.y_train, clean.y_train)
    with pytest.raises(ValueError, match="label_noise"):
        many_classes(SOURCE, label_noise=2.0)


@pytest.mark.e2e
def test_tiny_run_without_full_trains_robust_coresets_on_noisy_w2() -> None:
    plan = E2EPlan(
        workloads=("w2-30",),
        methods=("random", "crest-robust"),
        seeds=(0,),
        fracs=(0.5,),
        full=False,
        num_samples=SOURCE,
        train=TrainSetup(epochs=1, batch_size=32, evals=2),
    )
    with local_coordinator() as coordinator:
        result = run_e2e(plan, coordinator, progress=False)
    rows = {row["method"]: row for row in result["summary"]}
    assert set(rows) == {"random", "crest-robust"}
    assert rows["random"]["speedup_vs_full"] is None
    assert rows["crest-robust"]["workload"] == "mnist1d-redundant-noise30"
    assert "label_noise=0.3" in result["workloads"]["w2-30"]
    assert "| crest-robust | 0.5 |" in format_table(result["summary"])
    (robust,) = [run for run in result["runs"] if run["method"] == "crest-robust"]
    assert robust["extra"]["excluded_share"] > 0, "30% noise: some candidates are excluded"
    noise = format_noise_table(result["summary"])
    assert "| excluded share |" in noise and "| random | 0.5 |" in noise


def _run(method: str, seed: int, acc: float) -> dict:
    curve = [(10, 1.0, acc, acc)]
    return asdict(RunResult(
        workload="w", method=method, train_frac=0.1, seed=seed, steps=10, final_acc=acc,
        best_acc=acc, final_balanced_acc=acc, per_class_recall=[acc], curve=curve,
        seconds={"train": 1.0, "eval": 0.0, "total": 1.0},
        extra={"class_weight_share": [1.0], "selected_minus_candidate_loss": 0.5,
               "pool_per_class_end": [5]},
    ))  # fmt: skip


def test_merged_results_count_each_run_once_and_compare_with_random(tmp_path: Path) -> None:
    first, second = tmp_path / "a.partial.json", tmp_path / "b.json"
    first.write_text(json.dumps({"runs": [_run("random", 0, 0.90), _run("crest", 0, 0.92)]}))
    second.write_text(json.dumps({"runs": [_run("crest", 0, 0.50), _run("crest", 1, 0.94)]}))
    result = merge_results([first, second])
    assert len(result["runs"]) == 3  # crest seed 0 from the first file only
    rows = {row["method"]: row for row in result["summary"]}
    assert rows["crest"]["final_acc"][0] == pytest.approx(0.93)
    assert rows["crest"]["speedup_vs_full"] is None  # no Full run
    assert "| w | crest | 0.1 | 93.00 ± 1.00 | +3.00 | +0.50 | - |" in format_noise_table(
        result["summary"]
    )
    assert "| - | - |" in format_table(result["summary"])  # speed-up and time vs Full
    (tmp_path / "empty.json").write_text('{"runs": []}')
    with pytest.raises(ValueError, match="no runs"):
        merge_results([tmp_path / "empty.json"])


def test_run_verdict_applies_the_tests_rule_to_the_run_means() -> None:
    config = JobConfig(num_examples=10_000, num_classes=10)
    limit = config.auto_max_loss_excess * math.log(10)

    def test(rc: float, rr: float, excess: float | None) -> dict:
        return {"coresets_rate": rc, "random_rate": rr, "loss_excess": excess}

    assert auto_verdict([], config) is None
    assert auto_verdict([test(2e-3, 1e-3, 0.2), test(0.0, 1e-3, 0.2)], config) == "coresets"
    assert auto_verdict([test(1e-3, 2e-3, 0.2), test(1e-3, 1.5e-3, 0.2)], config) == "random"
    # Faster coresets that chase high-loss examples on average lose; one such test does not.
    chasing = [test(2e-3, 1e-3, limit + 0.3), test(2e-3, 1e-3, limit - 0.2)]
    assert auto_verdict(chasing, config) == "random"
    assert auto_verdict(chasing, config, num_classes=100) == "coresets"  # the bar scales: ln C
    assert auto_verdict([test(2e-3, 1e-3, limit - 0.2)] * 2, config) == "coresets"
    assert auto_verdict([test(2e-3, 1e-3, None)], config) == "coresets"  # runs before the rule
    assert auto_verdict([test(2e-3, 1e-3, -0.1)] * 2, config) == "random"  # easier: too few
    ended_early = {"coresets_rate": None, "random_rate": None, "loss_excess": limit + 0.3}
    assert auto_verdict([ended_early], config) == "random"
    assert auto_verdict([ended_early, test(2e-3, 1e-3, limit - 0.4)], config) == "coresets"


def test_monitor_table_sets_each_auto_run_against_crest_and_random() -> None:
    def run(method: str, final: float, curve_acc: list[float], extra: dict | None = None) -> dict:
        curve = [[step, 0.0, acc] for step, acc in zip((50, 100, 150, 200), curve_acc, strict=True)]
        return {"workload": "w", "method": method, "train_frac": 0.1, "seed": 0, "steps": 200,
                "final_acc": final, "curve": curve, "per_class_recall": [0.0] * 10,
                "extra": extra or {}}  # fmt: skip

    chasing = {"coresets_rate": 2e-3, "random_rate": 1e-3, "loss_excess": 2.0}
    tests = [
        {**chasing, "step": 60, "decision": "random: coresets select ..."},
        {**chasing, "step": 160, "decision": "coresets: probe loss falls ..."},
    ]
    runs = [
        run("random", 0.90, [0.5, 0.6, 0.7, 0.9]),
        run("crest", 0.89, [0.6, 0.7, 0.7, 0.89]),
        run("auto", 0.905, [0.5, 0.6, 0.7, 0.905], {"auto_tests": tests, "crest_step_share": 0.4}),
    ]
    table = format_monitor_table(runs).splitlines()
    assert len(table) == 3  # header, rule, the auto run
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    assert cells[3:] == ["coresets 0 of 1", "+10.00", "coresets 1 of 1", "-0.50", "random",
                         "-1.00", "+0.50", "40%"]  # fmt: skip
    # A run made with its own bars is summarised against them: excess 2.0 is within 3 x ln 10.
    own = {"auto_rule": {"auto_max_loss_excess": 3.0}}
    runs[2]["extra"] |= own
    cells = [c.strip() for c in format_monitor_table(runs).splitlines()[2].split("|")[1:-1]]
    assert cells[7] == "coresets"
