"""Which probe signal would tell auto's tests right: the same auto runs as the e2e benchmark,
with every test's per-example probe losses recorded, and each signal's verdicts recomputed
at the same tests (offline: the runs follow the clipped loss, the signal auto uses).

Usage: ``python -m crest.bench.auto_signals KNOWN.json OUT.json [WORKLOAD:FRAC ...]``
(default ``w1:0.1 w2:0.1 w3:0.2``, seeds 0-2). ``KNOWN.json``: an e2e result holding the
Random and CREST runs of the same workloads, fractions and seeds (the known answers).

Signals, each a mean over the probe: ``clipped`` (each loss clipped at ln C: auto's),
``unclipped`` (the plain held-out loss), ``miss`` (the share of examples whose loss exceeds
ln 2, i.e. whose label has probability under 1/2: an upper bound of the error rate that needs
no predictions, only the losses the trainer sends).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crest.compare import METHODS, CrestSetup, TrainSetup, run_crest, warm_up
from crest.embedded import local_coordinator
from crest.service import job as job_module
from crest.service import strategy as strategy_module
from crest.workloads import WORKLOADS

SIGNALS: dict[str, Callable[[np.ndarray, int], float]] = {
    "clipped": lambda losses, classes: float(np.minimum(losses, math.log(classes)).mean()),
    "unclipped": lambda losses, classes: float(losses.mean()),
    "miss": lambda losses, classes: float((losses > math.log(2)).mean()),
}

# What the running job measured: [step, probe losses] per test region, and each test's window.
measured: list[tuple[int, np.ndarray]] = []
windows: list[list[list[int]]] = []
window_rates = strategy_module.window_rates  # the policy's rates, before record() hooks them


def record() -> None:
    """Hook the job's probe measurement and the policy's rates (one process, runs in turn)."""
    measure = job_module.JobState._measure_probe

    def measure_probe(self: job_module.JobState, region: Any) -> None:
        if region.probe_slots.size:
            step = region.weights_version if region.embedded_by == "service" else region.start_step
            measured.append((int(step), region.losses[region.probe_slots].astype(np.float64)))
        measure(self, region)

    def rates(window: list[list[int]], points: list[list[float]]) -> Any:
        windows.append([list(arm) for arm in window])
        return window_rates(window, points)

    job_module.JobState._measure_probe = measure_probe  # type: ignore[method-assign]
    strategy_module.window_rates = rates


def verdict(rates: tuple[float, float] | None) -> str | None:
    if rates is None:
        return None
    rc, rr = rates
    return "coresets" if rc - rr >= 0 else "random"  # auto_min_gain 1


def half_gaps(known: dict[tuple, dict[str, Any]], key: tuple) -> list[float]:
    """CREST - Random test accuracy (points) averaged over each half's evaluations."""
    random, crest = known[(*key, "random")], known[(*key, "crest")]
    half = random["steps"] / 2
    return [
        statistics.fmean(
            100 * (c[2] - r[2])
            for r, c in zip(random["curve"], crest["curve"], strict=True)
            if (r[0] <= half) == first
        )
        for first in (True, False)
    ]


def main(argv: list[str]) -> None:
    known_path, out, *cases = argv
    known = {
        (r["workload"], r["train_frac"], r["seed"], r["method"]): r
        for r in json.loads(Path(known_path).read_text())["runs"]
    }
    record()
    train, results = TrainSetup(), []
    crest = CrestSetup(**METHODS["auto"])
    with local_coordinator() as coordinator:
        for case in cases or ["w1:0.1", "w2:0.1", "w3:0.2"]:
            workload, frac = case.split(":")
            data = WORKLOADS[workload]()
            warm_up(data, train)
            for seed in (0, 1, 2):
                measured.clear()
                windows.clear()
                run = run_crest(data, train, crest, float(frac), seed, coordinator, False)
                key = (run.workload, run.train_frac, seed)
                gaps = half_gaps(known, key)
                final_gap = 100 * (
                    known[(*key, "crest")]["final_acc"] - known[(*key, "random")]["final_acc"]
                )
                classes = data.num_classes
                tests = []
                # Each test at its measure region's end, as the e2e table places it.
                steps = [t["step"] for t in run.extra["auto_tests"]]
                for window, step in zip(windows, steps, strict=False):
                    row: dict[str, Any] = {"step": step, "first_half": step < run.steps / 2}
                    for name, signal in SIGNALS.items():
                        points = [[s, signal(losses, classes)] for s, losses in measured]
                        rates = window_rates(window, points)
                        row[name] = {"rates": rates, "verdict": verdict(rates)}
                    tests.append(row)
                results.append(
                    {
                        "workload": run.workload,
                        "frac": run.train_frac,
                        "seed": seed,
                        "final_acc": run.final_acc,
                        "gaps": gaps,
                        "final_gap": final_gap,
                        "tests": tests,
                    }
                )
                print(f"{case} seed {seed}: {len(tests)} tests", flush=True)
    table = summary(results)
    Path(out).write_text(
        json.dumps({"benchmark": "auto_signals", "runs": results, "table": table}, indent=1)
    )
    print(table)


def summary(results: list[dict[str, Any]]) -> str:
    """Per signal and workload: tests whose verdict matches the sign of that half's CREST -
    Random gap (a gap >= 0 counts as a CREST lead), per half; and runs whose verdict on the
    rates averaged over all tests matches the sign of the final CREST - Random."""
    lines = [
        "| workload | signal | 1st half right | 2nd half right | run verdict right |",
        "|---|---|---|---|---|",
    ]
    for workload in dict.fromkeys(r["workload"] for r in results):
        runs = [r for r in results if r["workload"] == workload]
        for name in SIGNALS:
            cells = []
            for first in (True, False):
                right = total = 0
                for run in runs:
                    answer = "coresets" if run["gaps"][0 if first else 1] >= 0 else "random"
                    for test in run["tests"]:
                        if test["first_half"] == first and test[name]["verdict"]:
                            total += 1
                            right += test[name]["verdict"] == answer
                cells.append(f"{right} of {total}")
            right = 0
            for run in runs:
                rates = [t[name]["rates"] for t in run["tests"] if t[name]["rates"]]
                mean = (
                    statistics.fmean(r[0] for r in rates),
                    statistics.fmean(r[1] for r in rates),
                )
                answer = "coresets" if run["final_gap"] >= 0 else "random"
                right += verdict(mean) == answer
            cells.append(f"{right} of {len(runs)}")
            lines.append(f"| {workload} | {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
