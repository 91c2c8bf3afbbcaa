"""Selection benchmark: the facility-location kernel, its alternatives, and the Ray pool.

Measures, on CPU:

* kernel time of a CREST region (P subsets x C classes problems of n candidates, dimension d,
  budget m) for the default region at 1 and 2 torch threads, and versus each of P, C, n, d, m;
* the same region solved one problem at a time (one kernel call each), by ``submodlib``'s lazy
  greedy per problem (the reference code's solver, timed with its similarity matrix built in
  numpy; skipped with the reason when it is not installed), and by a plain Python loop;
* one large problem (20,000 candidates, d=512, budget 1,000) in a subprocess: wall time and
  peak resident memory (``ru_maxrss``);
* Ray pool throughput with 1 and 2 CPU actors, several concurrent clients from two jobs.

Usage: ``crest bench selection [--quick]``; prints markdown tables, writes JSON. Timings on a
shared machine are indicative only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from crest.worker.selection import select_groups
from crest.worker.selector import SelectionRequest


@dataclass(frozen=True)
class Region:
    """One CREST region's selection: ``subsets x classes`` problems."""

    subsets: int = 5  # P
    classes: int = 10  # C
    per_class: int = 50  # candidates per problem
    dim: int = 10  # d
    budget: int = 13  # m per problem

    @property
    def problems(self) -> int:
        return self.subsets * self.classes

    def request(self, seed: int = 0, job: str = "") -> SelectionRequest:
        """Softmax-minus-onehot-like embeddings, problems laid out subset-major as in CREST."""
        rng = np.random.default_rng(seed)
        rows = self.problems * self.per_class
        logits = rng.standard_normal((rows, self.dim)) * 3
        probs = np.exp(logits - logits.max(1, keepdims=True))
        probs /= probs.sum(1, keepdims=True)
        groups = np.repeat(np.arange(self.problems), self.per_class)
        probs[np.arange(rows), groups % min(self.classes, self.dim)] -= 1.0
        budgets = np.full(self.problems, self.budget, dtype=np.int64)
        return SelectionRequest(probs.astype(np.float32), groups, budgets, job_id=job)


@dataclass(frozen=True)
class SelectionPlan:
    region: Region = Region()
    sweeps: tuple[tuple[str, tuple[int, ...]], ...] = (
        ("subsets", (1, 5, 20)),
        ("classes", (10, 100)),
        ("per_class", (20, 50, 200)),
        ("dim", (10, 64, 512)),
        ("budget", (5, 13, 50)),
    )
    threads: tuple[int, ...] = (1, 2)
    repeats: int = 30
    baselines: bool = True
    large: tuple[int, int, int] | None = (20_000, 512, 1_000)  # candidates, dim, budget
    pool_actors: tuple[int, ...] = (1, 2)
    pool_regions: int = 64  # regions per pool measurement
    pool_clients: int = 8  # concurrent select() callers (ranks), half from each of two jobs


def quick_plan(plan: SelectionPlan = SelectionPlan()) -> SelectionPlan:
    """A short version (about a minute): fewer sweep points, a smaller large problem."""
    return replace(
        plan,
        sweeps=(("subsets", (1, 20)), ("per_class", (20, 200)), ("dim", (64,))),
        repeats=10,
        large=(4_000, 128, 200),
        pool_regions=24,
    )


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """Median and minimum wall time in milliseconds (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": float(np.median(times)), "min_ms": float(np.min(times))}


def _tensors(request: SelectionRequest) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(request.embeddings),
        torch.from_numpy(request.groups),
        torch.from_numpy(request.budgets),
    )


def kernel_time(region: Region, repeats: int) -> dict[str, float]:
    embeddings, groups, budgets = _tensors(region.request())
    return timed(lambda: select_groups(embeddings, groups, budgets), repeats)


def per_problem_time(region: Region, repeats: int) -> dict[str, float]:
    """One kernel call per problem (the unbatched path)."""
    embeddings, _, _ = _tensors(region.request())
    n = region.per_class
    zeros, budget = torch.zeros(n, dtype=torch.long), torch.tensor([region.budget])
    blocks = [embeddings[p * n : (p + 1) * n] for p in range(region.problems)]
    return timed(lambda: [select_groups(b, zeros, budget) for b in blocks], repeats)


def _numpy_similarity(points: np.ndarray) -> np.ndarray:
    diff = points[:, None, :] - points[None, :, :]
    return np.exp(-np.sqrt((diff * diff).sum(-1)) / points.shape[1])


def submodlib_time(region: Region, repeats: int) -> dict[str, Any]:
    """submodlib's lazy greedy, one problem at a time, as the reference code calls it."""
    try:
        from submodlib import FacilityLocationFunction
    except ImportError as err:
        return {"skipped": f"submodlib is not installed ({err}); pip install submodlib-py"}
    request = region.request()
    n = region.per_class
    blocks = [
        request.embeddings[p * n : (p + 1) * n].astype(np.float64) for p in range(region.problems)
    ]

    def solve() -> list[list[int]]:
        picks = []
        for points in blocks:
            sim = _numpy_similarity(points)
            fl = FacilityLocationFunction(n=n, mode="dense", sijs=sim, separate_rep=False)
            chosen = fl.maximize(
                budget=region.budget, optimizer="LazyGreedy", stopIfZeroGain=False,
                stopIfNegativeGain=False, verbose=False, show_progress=False,
            )  # fmt: skip
            picks.append([int(j) for j, _ in chosen])
        return picks

    result: dict[str, Any] = timed(solve, max(1, repeats // 5))
    ours = select_groups(*_tensors(request))[0].view(region.problems, -1) % n
    same = sum(p == o for p, o in zip(solve(), ours.tolist(), strict=True))
    result["same_selection_frac"] = same / region.problems
    return result


def python_loop_time(region: Region) -> dict[str, float]:
    """Plain Python greedy (lists) per problem on a numpy similarity matrix; one run."""
    request = region.request()
    n = region.per_class

    def solve() -> None:
        for p in range(region.problems):
            sim = _numpy_similarity(request.embeddings[p * n : (p + 1) * n].astype(np.float64))
            rows = sim.tolist()
            cover, chosen = [0.0] * n, []
            for _ in range(region.budget):
                best, best_value = -1, -math.inf
                for j in range(n):
                    if j in chosen:
                        continue
                    value = sum(max(rows[i][j], cover[i]) for i in range(n))
                    if value > best_value:
                        best, best_value = j, value
                chosen.append(best)
                cover = [max(c, s) for c, s in zip(cover, rows[best], strict=True)]

    return timed(solve, 1)


# ------------------------------------------------------------------ the large problem
def large_problem(candidates: int, dim: int, budget: int, threads: int) -> dict[str, float]:
    """Run :func:`_large_main` in a fresh process; its peak RSS is the kernel's footprint."""
    cmd = [sys.executable, "-m", "crest.bench.selection", "--large", str(candidates),
           str(dim), str(budget), str(threads)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _large_main(candidates: int, dim: int, budget: int, threads: int) -> None:
    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(200, dim, generator=gen)
    points = torch.randn(candidates, dim, generator=gen).mul_(0.5)
    points += centers[torch.randint(0, 200, (candidates,), generator=gen)]
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    rows, _, weights = select_groups(points, torch.zeros(candidates, dtype=torch.long),
                                     torch.tensor([budget]))  # fmt: skip
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert len(rows) == budget and int(weights.sum()) == candidates
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "before_mib": before}))


# ------------------------------------------------------------------------ Ray pool
def pool_throughput(plan: SelectionPlan) -> dict[str, Any]:
    """Regions per second through :class:`RaySelector` with 1 and 2 CPU actors."""
    import ray

    from crest.worker.ray_pool import RaySelector, init_ray

    started = not ray.is_initialized()
    init_ray(num_cpus=2, object_store_bytes=256 * 2**20)
    requests = [plan.region.request(seed, job=f"job{seed % 2}") for seed in range(8)]
    out: dict[str, Any] = {}
    try:
        for actors in plan.pool_actors:
            pool = RaySelector(num_actors=actors, cpus_per_actor=1, deadline_s=300)
            try:
                asyncio.run(_drive(pool, requests, len(requests)))  # warm up
                start = time.perf_counter()
                asyncio.run(_drive(pool, requests, plan.pool_regions, plan.pool_clients))
                out[f"{actors}_actors"] = plan.pool_regions / (time.perf_counter() - start)
            finally:
                pool.close()
    finally:
        if started:
            ray.shutdown()
    if 1 in plan.pool_actors and 2 in plan.pool_actors:
        out["speedup_2_vs_1"] = out["2_actors"] / out["1_actors"]
    return out


async def _drive(pool: Any, requests: list[SelectionRequest], total: int, clients: int = 8):
    """``clients`` concurrent callers, each selecting regions until ``total`` are done."""
    todo = iter(range(total))

    async def client() -> None:
        for i in todo:
            await pool.select(requests[i % len(requests)])

    await asyncio.gather(*(client() for _ in range(clients)))


# ----------------------------------------------------------------------------- run
def run_selection_bench(plan: SelectionPlan, *, ray_pool: bool = True) -> dict[str, Any]:
    region = plan.region
    result: dict[str, Any] = {
        "plan": asdict(plan),
        "machine": {"python": platform.python_version(), "torch": torch.__version__,
                    "cpus": torch.get_num_threads(), "processor": platform.processor()},
    }  # fmt: skip
    result["default"] = {}
    with torch_threads(1):
        kernel_time(region, plan.repeats)  # discarded: the first timed configuration ran slow
    for threads in plan.threads:
        with torch_threads(threads):
            result["default"][f"{threads}_threads"] = {
                "batched": kernel_time(region, plan.repeats),
                "per_problem": per_problem_time(region, max(1, plan.repeats // 3)),
            }
    with torch_threads(1):
        if plan.baselines:
            result["default"]["submodlib_lazy_per_problem"] = submodlib_time(region, plan.repeats)
            result["default"]["python_loop_per_problem"] = python_loop_time(region)
        result["sweeps"] = [
            {"param": name, "value": value,
             **kernel_time(replace(region, **{name: value}), plan.repeats)}
            for name, values in plan.sweeps for value in values
        ]  # fmt: skip
    if plan.large is not None:
        result["large"] = {"candidates": plan.large[0], "dim": plan.large[1],
                           "budget": plan.large[2], "threads": max(plan.threads),
                           **large_problem(*plan.large, max(plan.threads))}  # fmt: skip
    if ray_pool:
        result["pool"] = pool_throughput(plan)
    return result


def format_tables(result: dict[str, Any]) -> str:
    lines = ["### Default region (P=5, C=10, 50 candidates, d=10, budget 13)", "",
             "| path | threads | median ms | min ms |", "|---|---|---|---|"]  # fmt: skip
    default = result["default"]
    for key, row in default.items():
        if key.endswith("_threads"):
            for path, t in row.items():
                lines.append(f"| {path} | {key[0]} | {t['median_ms']:.3f} | {t['min_ms']:.3f} |")
    for name in ("submodlib_lazy_per_problem", "python_loop_per_problem"):
        t = default.get(name)
        if t is None:
            continue
        if "skipped" in t:
            lines.append(f"| {name} | 1 | skipped: {t['skipped']} | |")
        else:
            lines.append(f"| {name} | 1 | {t['median_ms']:.3f} | {t['min_ms']:.3f} |")
    lazy = default.get("submodlib_lazy_per_problem", {})
    if "median_ms" in lazy:
        batched = default["1_threads"]["batched"]["median_ms"]
        lines.append(f"\nbatched (1 thread) vs submodlib lazy greedy per problem: "
                     f"{lazy['median_ms'] / batched:.0f}x faster; same selection in "
                     f"{100 * lazy['same_selection_frac']:.0f}% of problems")  # fmt: skip
    lines += ["", "### Kernel time versus one parameter (1 thread)", "",
              "| parameter | value | problems x rows | median ms | min ms |",
              "|---|---|---|---|---|"]  # fmt: skip
    base = result["plan"]["region"]
    for row in result["sweeps"]:
        region = {**base, row["param"]: row["value"]}
        shape = f"{region['subsets'] * region['classes']} x {region['per_class']}"
        lines.append(f"| {row['param']} | {row['value']} | {shape} | "
                     f"{row['median_ms']:.3f} | {row['min_ms']:.3f} |")  # fmt: skip
    if "large" in result:
        big = result["large"]
        lines += [
            "",
            "### One large problem",
            "",
            "| candidates | dim | budget | threads | seconds | peak RSS MiB | before MiB |",
            "|---|---|---|---|---|---|---|",
            f"| {big['candidates']} | {big['dim']} | {big['budget']} | {big['threads']} "
            f"| {big['seconds']:.1f} | {big['peak_mib']:.0f} | {big['before_mib']:.0f} |",
        ]
    if "pool" in result:
        pool = result["pool"]
        lines += ["", "### Ray pool throughput (default regions, 8 concurrent callers)", "",
                  "| actors | regions/s |", "|---|---|"]  # fmt: skip
        lines += [f"| {k.split('_')[0]} | {v:.1f} |" for k, v in pool.items() if k.endswith("s")]
        if "speedup_2_vs_1" in pool:
            lines.append(f"\nspeed-up 2 vs 1 actors: {pool['speedup_2_vs_1']:.2f}x")
    return "\n".join(lines)


if __name__ == "__main__" and sys.argv[1:2] == ["--large"]:
    _large_main(*(int(a) for a in sys.argv[2:6]))
