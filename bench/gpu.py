"""GPU check: the selection kernel, a selector actor and a trainer on the GPU, in minutes.

``crest bench gpu`` runs each check on the first CUDA device, or where there is none on the
CPU, labelled ``cpu (no GPU)`` (CI runs that fallback, in seconds):

* **kernel**: one synthetic CREST region solved on the CPU and on the device
  (:func:`~crest.worker.selector.run_selection`); the selections must be identical.
* **selector actor**: a :class:`~crest.worker.ray_pool.RaySelector` of one actor that asks Ray
  for a GPU (``gpu_share``) answers the region and embeds candidates with W1's exported model
  (the service side); it reports its device, and its answers must be the CPU's.
* **W1 random**, **W1 crest** and **W1 crest, service side**: short MNIST-1D runs with the
  trainer's model, batches and evaluation on the device
  (:attr:`crest.compare.TrainSetup.device`); CREST's coordinator is in-process, its selector
  (which embeds, on the service side) on the device too.

A failing check is a row that says why, and the command exits non-zero. Prints a table,
writes ``results/gpu.json``. Timings are indicative (first calls, a shared machine).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from crest.bench.selection import Region, timed
from crest.compare import CrestSetup, TrainSetup, machine, run_baseline, run_crest, warm_up
from crest.worker.model import ExportedModel, export_model, model_weights
from crest.worker.problems import EmbedRequest
from crest.worker.selector import SelectionResult, run_selection
from crest.workloads import WORKLOADS, cnn1d

REGION = Region(per_class=200, dim=32, budget=20)  # 50 problems x 200 rows


@dataclass(frozen=True)
class GpuPlan:
    region: Region = REGION
    repeats: int = 5  # kernel timings (after one warm-up call)
    ray: bool = True  # the selector actor's check (False: skipped, e.g. without Ray)
    gpu_share: float = 1.0
    cpus_per_actor: float = 1.0
    num_samples: int = 5_000  # MNIST-1D: 4,000 train / 1,000 test
    epochs: float = 10.0  # of the full run the fraction is taken from
    train_frac: float = 0.5
    seed: int = 0


def device_label() -> tuple[str, str]:
    """``(torch device, how the table names it)``."""
    if torch.cuda.is_available():
        return "cuda", f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu", "cpu (no GPU)"


def same_selection(a: SelectionResult, b: SelectionResult) -> bool:
    return (
        np.array_equal(a.rows, b.rows)
        and np.array_equal(a.groups, b.groups)
        and np.array_equal(a.weights, b.weights)
    )


def check_kernel(plan: GpuPlan, device: str, label: str) -> dict[str, Any]:
    request = plan.region.request(plan.seed)
    want = run_selection(request, "cpu")
    cpu = timed(lambda: run_selection(request, "cpu"), plan.repeats)["median_ms"]
    if device == "cpu":
        rows = f"{len(want.rows)} rows selected"
        return {"device": label, "ok": True, "cpu_ms": cpu, "time": f"cpu {cpu:.1f} ms",
                "result": rows}  # fmt: skip
    on_device = timed(lambda: run_selection(request, device), plan.repeats)["median_ms"]
    same = same_selection(run_selection(request, device), want)
    return {
        "device": label,
        "ok": same,
        "cpu_ms": cpu,
        "device_ms": on_device,
        "time": f"cpu {cpu:.1f} ms, {device} {on_device:.1f} ms ({cpu / on_device:.1f}x)",
        "result": f"{len(want.rows)} rows, " + ("equal to cpu" if same else "DIFFERS from cpu"),
    }


def check_actor(plan: GpuPlan, device: str, label: str) -> dict[str, Any]:
    import ray

    from crest.worker.ray_pool import RaySelector, init_ray

    request = plan.region.request(plan.seed)
    started = not ray.is_initialized()
    begin = time.perf_counter()
    init_ray(object_store_bytes=256 * 2**20)
    try:
        pool = RaySelector(num_actors=1, gpu_share=plan.gpu_share,
                           cpus_per_actor=plan.cpus_per_actor, deadline_s=300)  # fmt: skip
        try:
            ready = time.perf_counter() - begin
            first = time.perf_counter()
            got = asyncio.run(pool.select(request))
            answer_ms = (time.perf_counter() - first) * 1e3
            embedding = embed_request(plan)
            first = time.perf_counter()
            embedded = asyncio.run(pool.embed(embedding))
            embed_ms = (time.perf_counter() - first) * 1e3
            (actor_device,) = pool.actor_devices
        finally:
            pool.close()
    finally:
        if started:
            ray.shutdown()
    same = same_selection(got, run_selection(request, "cpu"))
    reference = ExportedModel(embedding.artifact)
    reference.load_weights(embedding.weights)
    want = reference.embed(embedding.inputs, embedding.labels)
    close = np.allclose(embedded.embeddings, want[0], atol=1e-4) and np.allclose(
        embedded.losses, want[1], atol=1e-4
    )
    expected = "cuda" if device == "cuda" else "cpu"
    return {
        "device": label if actor_device == expected else f"{actor_device} (expected {expected})",
        "ok": same and close and actor_device == expected,
        "ready_s": ready,
        "answer_ms": answer_ms,
        "embed_ms": embed_ms,
        "actor_device": actor_device,
        "time": f"ready {ready:.1f} s, first answer {answer_ms:.0f} ms, "
        f"first embedding {embed_ms:.0f} ms",
        "result": ("selection equal to cpu" if same else "selection DIFFERS from cpu")
        + (", embeddings equal" if close else ", embeddings DIFFER"),
    }


def embed_request(plan: GpuPlan) -> EmbedRequest:
    """W1's model, exported, and 2,048 candidates to embed with it (the service side)."""
    torch.manual_seed(plan.seed)
    model = cnn1d(40, 32, 10)
    inputs = torch.randn(2048, 40)
    artifact = export_model(model, inputs[:4])
    return EmbedRequest(
        job_id="gpu-check", model_id=hashlib.sha256(artifact).hexdigest()[:16],
        artifact=artifact, weights=model_weights(model), inputs=inputs.numpy(),
        labels=np.arange(2048, dtype=np.int64) % 10,
    )  # fmt: skip


def check_training(
    method: str, side: str = "trainer"
) -> Callable[[GpuPlan, str, str], dict[str, Any]]:
    def check(plan: GpuPlan, device: str, label: str) -> dict[str, Any]:
        from crest.embedded import local_coordinator

        data = WORKLOADS["w1"](plan.num_samples)
        setup = TrainSetup(epochs=plan.epochs, evals=2, device=device)
        warm_up(data, setup)  # CUDA's and torch's first-call costs land on no row
        if method == "random":
            run = run_baseline(data, setup, plan.train_frac, plan.seed, progress=False)
        else:
            with local_coordinator(device) as coordinator:
                run = run_crest(data, setup, CrestSetup(selection_side=side), plan.train_frac,
                                plan.seed, coordinator, progress=False)  # fmt: skip
        seconds = run.seconds["total"] + run.seconds["eval"]
        return {
            "device": label,
            "ok": run.steps > 0,
            "steps": run.steps,
            "seconds": seconds,
            "accuracy": run.final_acc,
            "time": f"{seconds:.1f} s, {run.steps} steps",
            "result": f"test accuracy {100 * run.final_acc:.1f}%",
        }

    return check


CHECKS: dict[str, Callable[[GpuPlan, str, str], dict[str, Any]]] = {
    "kernel": check_kernel,
    "selector actor": check_actor,
    "W1 random, trainer": check_training("random"),
    "W1 crest, trainer": check_training("crest"),
    "W1 crest, service side": check_training("crest", "service"),
}


def run_gpu_check(plan: GpuPlan = GpuPlan()) -> dict[str, Any]:
    """Every check in turn; one that raises becomes a failed row with the error."""
    device, label = device_label()
    rows = []
    for name, check in CHECKS.items():
        if name == "selector actor" and not plan.ray:
            rows.append({"check": name, "device": "-", "ok": True, "time": "-",
                         "result": "skipped"})  # fmt: skip
            continue
        begin = time.perf_counter()
        try:
            row = check(plan, device, label)
        except Exception as err:  # a check script reports, it does not stop at the first
            row = {"device": label, "ok": False, "time": "-",
                   "result": f"FAILED: {type(err).__name__}: {err}"}  # fmt: skip
        rows.append({"check": name, **row, "wall_s": time.perf_counter() - begin})
    return {
        "benchmark": "gpu",
        "device": label,
        "machine": machine(),
        "plan": asdict(plan),
        "rows": rows,
        "ok": all(row["ok"] for row in rows),
    }


def format_table(result: dict[str, Any]) -> str:
    lines = ["| check | device | time | result | ok |", "|---|---|---|---|---|"]
    for row in result["rows"]:
        ok = "yes" if row["ok"] else "NO"
        lines.append(
            f"| {row['check']} | {row['device']} | {row['time']} | {row['result']} | {ok} |"
        )
    return "\n".join(lines)
