"""Service benchmark: what the gRPC coordinator costs a trainer.

Measures, against ``crest serve`` in its own process on loopback (in-memory store):

* region-fetch latency (``GetRegion`` of a ready region: a rank's weighted batches) p50/p99
  with 1, 8 and 32 concurrent sessions, each in a closed loop with no think time (a stress
  test: real trainers fetch once per region);
* the time to deliver 62,500 indices with weights in one region;
* embedding ingest in MB/s (``UploadEmbeddings``, float32);
* the wall-clock overhead of the remote coordinator over the in-process one on the MNIST-1D
  CREST run (same seed, so both serve identical batches), with selection on the Ray pool;
* on that run, the region-switch latency a trainer sees, per region: its candidate forward
  pass, the upload, the coordinator's selection (queueing, object store and kernel on an actor:
  from the last embedding received to coresets ready) and the delivery of the new region.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import grpc
import numpy as np

from crest.client.remote import RemoteCoordinator
from crest.proto import convert
from crest.proto.contract import JobConfig, RegionStatus
from crest.proto.v1 import coordinator_pb2 as pb
from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc
from crest.service.server import CHANNEL_OPTIONS


class Served(NamedTuple):
    address: str  # gRPC host:port
    dashboard: str  # URL
    pid: int


@contextmanager
def coordinator_process(*args: str) -> Iterator[Served]:
    """``crest serve`` (Ray selector unless ``args`` say otherwise, dashboard on a free port)
    in a subprocess."""
    process = subprocess.Popen(
        [sys.executable, "-m", "crest.cli", "serve", "--port", "0", "--dashboard-port", "0",
         "--log-level", "WARNING", *args],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = [process.stdout.readline() if process.stdout else "" for _ in range(2)]
        if "listening on" not in lines[0]:
            raise RuntimeError(f"crest serve did not start: {''.join(lines)}")
        yield Served(lines[0].split("listening on ")[1].strip(),
                     lines[1].split(" on ")[1].strip().rstrip("/"), process.pid)  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=60)
        if process.stdout is not None:
            process.stdout.close()


def ready_job(remote: RemoteCoordinator, config: JobConfig, dim: int = 10) -> str:
    """A job whose first region is selected (fake embeddings), ready to serve batches."""
    labels = np.arange(config.num_examples) % config.num_classes
    job_id = remote.create_job(config, labels)
    view = remote.get_region(job_id, 0, 0)
    rng = np.random.default_rng(0)
    embeddings = rng.random((len(view.candidates), dim), dtype=np.float32)
    losses = np.ones(len(view.candidates), np.float32)
    remote.submit_embeddings(job_id, 0, view.region_id, view.candidates, embeddings, losses)
    assert remote.get_region(job_id, 0, 0).status is RegionStatus.READY
    return job_id


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "calls": len(ordered),
        "p50_ms": 1e3 * ordered[len(ordered) // 2],
        "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "mean_ms": 1e3 * statistics.fmean(ordered),
    }


async def _fetch_loop(address: str, job_ids: list[str], seconds: float) -> list[float]:
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        latencies: list[float] = []

        async def session(job_id: str) -> None:
            request = pb.GetRegionRequest(job_id=job_id, rank=0, step=0, page=0)
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                started = time.perf_counter()
                reply = await stub.GetRegion(request, timeout=30)
                convert.region_from_pb(reply)  # the client's decoding is part of a fetch
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(session(job_id) for job_id in job_ids))
        return latencies


def fetch_latency(address: str, sessions: int, seconds: float) -> dict[str, float]:
    config = JobConfig(num_examples=20_000, num_classes=10, batch_size=128, seed=1)
    with RemoteCoordinator(address) as remote:
        job_ids = [ready_job(remote, config) for _ in range(sessions)]
    latencies = asyncio.run(_fetch_loop(address, job_ids, seconds))
    return {"sessions": sessions, **_percentiles(latencies),
            "fetches_per_s": len(latencies) / seconds}  # fmt: skip


def big_region_delivery(address: str, repeats: int) -> dict[str, float]:
    """One region carrying >= 62,500 indices with weights (481 coresets of 130)."""
    config = JobConfig(
        num_examples=200_000, num_classes=10, batch_size=125, num_coresets=481,
        max_coresets=481, subset_size=375, check_sample_size=256, seed=2,
    )  # fmt: skip
    with RemoteCoordinator(address) as remote:
        job_id = ready_job(remote, config)
        timings, count = [], 0
        for _ in range(repeats):
            started = time.perf_counter()
            view = remote.get_region(job_id, 0, 0)
            timings.append(time.perf_counter() - started)
            count = sum(len(indices) for indices, _ in view.batches)
    return {"indices": count, **_percentiles(timings)}


def ingest(address: str, dim: int, rows: int) -> dict[str, float]:
    """Upload throughput of one rank's embeddings (float32, chunked under 4 MiB)."""
    subset = 1000
    config = JobConfig(
        num_examples=max(rows, 20_000), num_classes=10, batch_size=128, subset_size=subset,
        num_coresets=rows // subset, max_coresets=rows // subset, seed=3,
    )  # fmt: skip
    labels = np.arange(config.num_examples) % 10
    with RemoteCoordinator(address) as remote:
        job_id = remote.create_job(config, labels)
        view = remote.get_region(job_id, 0, 0)
        n = len(view.candidates)
        embeddings = np.random.default_rng(0).random((n, dim), dtype=np.float32)
        losses = np.ones(n, np.float32)
        started = time.perf_counter()
        remote.submit_embeddings(job_id, 0, view.region_id, view.candidates, embeddings, losses)
        seconds = time.perf_counter() - started
    megabytes = (embeddings.nbytes + 12 * n) / 1e6
    return {"rows": n, "dim": dim, "megabytes": megabytes, "seconds": seconds,
            "mb_per_s": megabytes / seconds}  # fmt: skip


def remote_overhead(address: str, dashboard: str, repeats: int) -> dict[str, Any]:
    """MNIST-1D CREST run (f=0.1, seed 0): in-process vs remote coordinator, same batches;
    and the region-switch latency of the remote runs."""
    from crest.compare import CrestSetup, TrainSetup, run_crest, warm_up
    from crest.embedded import local_coordinator
    from crest.workloads import mnist1d

    data = mnist1d()
    train = TrainSetup()
    warm_up(data, train)
    totals: dict[str, list[float]] = {"in-process": [], "remote": []}
    accuracy = {}
    for _ in range(repeats):
        with local_coordinator() as local:
            result = run_crest(data, train, CrestSetup(), 0.1, 0, local, progress=False)
            totals["in-process"].append(result.seconds["total"])
            accuracy["in-process"] = result.final_acc
        with RemoteCoordinator(address) as remote:
            result = run_crest(data, train, CrestSetup(), 0.1, 0, remote, progress=False)
            totals["remote"].append(result.seconds["total"])
            accuracy["remote"] = result.final_acc
            switch = region_switch(result.extra["timings"], _selections(dashboard, remote))
    best = {kind: min(values) for kind, values in totals.items()}
    return {
        "seconds": totals,
        "best_seconds": best,
        "overhead_pct": 100 * (best["remote"] / best["in-process"] - 1),
        "final_acc": accuracy,
        "region_switch_ms": switch,
    }


def _selections(dashboard: str, remote: RemoteCoordinator) -> list[dict[str, Any]]:
    """The coordinator's selection events of the newest job (its dashboard's JSON API)."""
    with urllib.request.urlopen(f"{dashboard}/api/jobs", timeout=30) as reply:
        jobs = json.loads(reply.read())
    newest = jobs[-1]["job_id"]
    with urllib.request.urlopen(f"{dashboard}/api/jobs/{newest}", timeout=30) as reply:
        return json.loads(reply.read())["selections"]


def region_switch(timings: dict[str, float], selections: list[dict[str, Any]]) -> dict[str, float]:
    """Mean milliseconds per region switch, split as the trainer and coordinator saw it."""
    regions = max(1, timings["regions"])
    selection = [s["seconds"] for s in selections if not s["fallback"]]
    server = statistics.fmean(selection) if selection else 0.0
    forward = timings["embed"] / regions
    upload = timings["upload"] / regions
    wait = timings["select"] / regions
    return {
        "candidate_forward": 1e3 * forward,
        "upload": 1e3 * upload,
        "selection": 1e3 * server,  # queueing + object store + kernel on an actor
        "delivery": 1e3 * max(0.0, wait - server),
        "total_without_forward": 1e3 * (upload + wait),
    }


def run_service_bench(quick: bool = False) -> dict[str, Any]:
    seconds = 2.0 if quick else 8.0
    with coordinator_process() as (address, dashboard, _):
        latency = [fetch_latency(address, n, seconds) for n in (1, 8, 32)]
        delivery = big_region_delivery(address, 5 if quick else 30)
        throughput = ingest(address, dim=256, rows=20_000 if quick else 100_000)
        overhead = remote_overhead(address, dashboard, 1 if quick else 2)
    return {
        "benchmark": "service",
        "quick": quick,
        "fetch_latency": latency,
        "deliver_62500": delivery,
        "ingest": throughput,
        "remote_overhead": overhead,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = ["| measure | value | target |", "|---|---|---|"]
    for row in result["fetch_latency"]:
        lines.append(
            f"| region fetch, {row['sessions']} sessions | p50 {row['p50_ms']:.2f} ms, "
            f"p99 {row['p99_ms']:.2f} ms ({row['fetches_per_s']:.0f}/s) "
            f"| {'p99 <= 5 ms' if row['sessions'] == 32 else ''} |"
        )
    d = result["deliver_62500"]
    lines.append(
        f"| deliver {d['indices']:,} indices + weights | p50 {d['p50_ms']:.1f} ms, "
        f"p99 {d['p99_ms']:.1f} ms | <= 20 ms |"
    )
    i = result["ingest"]
    lines.append(
        f"| embedding ingest ({i['rows']:,} x {i['dim']} float32) | {i['mb_per_s']:.0f} MB/s "
        f"| >= 300 MB/s |"
    )
    o = result["remote_overhead"]
    lines.append(
        f"| MNIST-1D CREST run, remote vs in-process | {o['best_seconds']['remote']:.2f} s vs "
        f"{o['best_seconds']['in-process']:.2f} s ({o['overhead_pct']:+.1f}%) | <= 5% |"
    )
    r = o["region_switch_ms"]
    lines.append(
        f"| region switch seen by the trainer, per region | forward {r['candidate_forward']:.1f} "
        f"+ upload {r['upload']:.1f} + selection {r['selection']:.1f} + delivery "
        f"{r['delivery']:.1f} ms ({r['total_without_forward']:.1f} ms without the forward pass) "
        f"| <= 20 ms without the forward pass |"
    )
    return "\n".join(lines)
