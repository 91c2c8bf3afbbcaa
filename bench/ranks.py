"""Many-rank benchmark: what one job of W ranks costs the coordinator (``crest bench service
--ranks 1024``).

Simulated ranks, no model: every rank makes the RPCs a real trainer makes (trainer side,
fake embeddings), in lockstep, as fast as the coordinator answers:

* at a region switch, each rank fetches its region (``GetRegion``), uploads its candidates'
  embeddings (``UploadEmbeddings``) and fetches the region again for its batches;
* after every ``check_interval`` steps (k, from the job), a check: one ``ReportCheck`` per
  rank (``per-rank``: ranks without a process group), or one by rank 0 for all
  (``combined``: ranks of one ``torch.distributed`` group; the all-reduce is not simulated).

Per mode: RPCs per training step by method, and so RPCs per second for a job training at
``--steps-per-s`` (10 by default); p50/p99 latency of a check (send to decision: a per-rank
report waits for its peers' reports) and of a region fetch; the coordinator process's CPU
seconds per training step. Regions end where the coordinator's checks end them (the check
losses are seeded noise around the region's initial loss), so both modes see the same
decisions and the same regions.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from crest.client.remote import RemoteCoordinator
from crest.proto import convert, steps
from crest.proto.contract import CheckReport, JobConfig, RegionStatus, RegionView
from crest.proto.v1 import coordinator_pb2 as pb
from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc
from crest.service.server import CHANNEL_OPTIONS

MODES = ("per-rank", "combined")
EMBEDDING_DIM = 4


def rank_config(ranks: int, seed: int = 0) -> JobConfig:
    """A job sized so that each rank draws small regions: the RPCs, not the selection, are
    measured (2 coresets of 20 examples per rank per region, candidates 40 per coreset)."""
    return JobConfig(
        num_examples=ranks * 400,
        num_classes=10,
        batch_size=20,
        world_size=ranks,
        subset_size=40,
        num_coresets=2,
        adaptive=False,
        check_interval=3,
        check_sample_size=20,
        epochs=1,
        train_frac=1.0,
        seed=seed,
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux ``/proc``)."""
    fields_ = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields_[11]) + int(fields_[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class _Run:
    calls: Counter[str] = field(default_factory=Counter)
    check_s: list[float] = field(default_factory=list)
    fetch_s: list[float] = field(default_factory=list)
    decisions: list[tuple[int, bool]] = field(default_factory=list)
    steps: int = 0
    regions: int = 0


class _SimulatedJob:
    """The RPCs of one job's ranks, driven in lockstep."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, job_id: str, config: JobConfig, mode: str):
        self.stub, self.job_id, self.config, self.mode = stub, job_id, config, mode
        self.ranks = range(config.world_size)
        self.run = _Run()
        self.rng = np.random.default_rng(config.seed)
        self.seq = dict.fromkeys(self.ranks, 0)

    async def _fetch(self, rank: int, step: int) -> RegionView:
        started = time.perf_counter()
        reply = await self.stub.GetRegion(
            pb.GetRegionRequest(job_id=self.job_id, rank=rank, step=step), timeout=120
        )
        view = convert.region_from_pb(reply)  # the client's decoding is part of a fetch
        self.run.fetch_s.append(time.perf_counter() - started)
        self.run.calls["GetRegion"] += 1
        return view

    async def _upload(self, rank: int, region: RegionView) -> None:
        candidates = region.candidates
        rng = np.random.default_rng([self.config.seed, rank, region.region_id])
        self.seq[rank] += 1
        chunk = pb.EmbeddingChunk(
            job_id=self.job_id, rank=rank, region_id=region.region_id, seq=self.seq[rank],
            indices=convert.to_array(candidates),
            embeddings=convert.to_array(
                rng.random((len(candidates), EMBEDDING_DIM), dtype=np.float32)
            ),
            losses=convert.to_array(np.ones(len(candidates), np.float32)),
            stream_chunks=1,
        )  # fmt: skip
        await self.stub.UploadEmbeddings(iter([chunk]), timeout=120)
        self.run.calls["UploadEmbeddings"] += 1

    async def _region(self, step: int) -> RegionView | None:
        """Every rank's region at ``step`` (embedded and selected): rank 0's view."""
        views = await asyncio.gather(*(self._fetch(rank, step) for rank in self.ranks))
        if views[0].status is RegionStatus.DONE:
            return None
        if views[0].status is RegionStatus.EMBED:
            pairs = zip(self.ranks, views, strict=True)
            await asyncio.gather(*(self._upload(rank, view) for rank, view in pairs))
            views = await asyncio.gather(*(self._fetch(rank, step) for rank in self.ranks))
        if not all(v.status is RegionStatus.READY for v in views):
            raise RuntimeError(f"region at step {step} not ready after every rank embedded")
        self.run.regions += 1
        return views[0]

    def _reports(self, region: RegionView, step: int) -> list[CheckReport]:
        count = len(region.check_indices)
        noise = self.rng.normal(0.0, 0.06, len(self.ranks))  # check losses around L_0
        return [
            CheckReport(region_id=region.region_id, step=step,
                        loss_sum=count * region.initial_loss * (1 + n), count=count,
                        linear=0.0, quadratic=0.0, curvature=1.0)
            for n in noise
        ]  # fmt: skip

    async def _report(self, rank: int, report: CheckReport) -> pb.CheckDecision:
        started = time.perf_counter()
        reply = await self.stub.ReportCheck(
            convert.report_to_pb(self.job_id, rank, report), timeout=120
        )
        self.run.check_s.append(time.perf_counter() - started)
        self.run.calls["ReportCheck"] += 1
        return reply

    async def _check(self, region: RegionView, step: int) -> bool:
        """One check after ``step``; True when it ends the region."""
        reports = self._reports(region, step)
        if self.mode == "combined":
            total = reports[0]
            for other in reports[1:]:  # rank order, as crest.client.ranks adds them
                total = CheckReport(
                    region_id=total.region_id, step=step,
                    loss_sum=total.loss_sum + other.loss_sum, count=total.count + other.count,
                    linear=0.0, quadratic=0.0, curvature=total.curvature + other.curvature,
                    ranks=total.ranks + 1,
                )  # fmt: skip
            decisions = [await self._report(0, total)]
        else:
            decisions = await asyncio.gather(
                *(self._report(rank, r) for rank, r in zip(self.ranks, reports, strict=True))
            )
        self.run.decisions.append((step, decisions[0].new_region))
        return decisions[0].new_region

    async def train(self, max_steps: int) -> _Run:
        await asyncio.gather(
            *(self.stub.OpenSession(pb.OpenSessionRequest(job_id=self.job_id, rank=rank),
                                    timeout=120) for rank in self.ranks)
        )  # fmt: skip
        self.run.calls["OpenSession"] += len(self.ranks)
        step = 0
        while step < max_steps:
            region = await self._region(step)
            if region is None:
                break
            end = region.end_step
            for at in range(region.start_step, region.end_step):
                if at >= end or at >= max_steps:
                    break
                step = at + 1
                due = steps.check_due(at, region.start_step, region.check_interval, end)
                if due and await self._check(region, at):
                    end = min(end, steps.end_after_failed_check(at))
            step = min(end, max_steps)
        self.run.steps = step
        return self.run


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50_ms": math.nan, "p99_ms": math.nan}
    ordered = sorted(samples)
    return {
        "p50_ms": 1e3 * ordered[len(ordered) // 2],
        "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


async def _simulate(address: str, job_id: str, config: JobConfig, mode: str, steps_: int):
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        job = _SimulatedJob(pb_grpc.CoordinatorStub(channel), job_id, config, mode)
        return await job.train(steps_)


def measure(address: str, pid: int, ranks: int, mode: str, steps_: int,
            steps_per_s: float) -> dict[str, Any]:  # fmt: skip
    """One job of ``ranks`` simulated ranks for ``steps_`` steps in ``mode``."""
    config = rank_config(ranks)
    labels = np.arange(config.num_examples) % config.num_classes
    with RemoteCoordinator(address) as remote:
        job_id = remote.create_job(config, labels)
    cpu, started = cpu_seconds(pid), time.perf_counter()
    run = asyncio.run(_simulate(address, job_id, config, mode, steps_))
    seconds, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu
    per_step = {name: count / run.steps for name, count in sorted(run.calls.items())}
    total = sum(run.calls.values()) - run.calls["OpenSession"]  # once per job, not per step
    return {
        "ranks": ranks,
        "mode": mode,
        "steps": run.steps,
        "regions": run.regions,
        "checks": len(run.decisions),
        "decisions": run.decisions,
        "rpcs": dict(run.calls),
        "rpcs_per_step": per_step,
        "rpcs_per_s_at_pace": total / run.steps * steps_per_s,
        "steps_per_s": steps_per_s,
        "check": _percentiles(run.check_s),
        "fetch": _percentiles(run.fetch_s),
        "coordinator_cpu_s_per_step": cpu / run.steps,
        "wall_s": seconds,
    }


def run_ranks_bench(ranks: list[int], steps_: int, steps_per_s: float) -> dict[str, Any]:
    from crest.bench.service import coordinator_process

    rows = []
    with coordinator_process("--selector", "inprocess") as served:
        for count in ranks:
            for mode in MODES:
                rows.append(measure(served.address, served.pid, count, mode, steps_,
                                    steps_per_s))  # fmt: skip
                print(format_row(rows[-1]), flush=True)
    return {"benchmark": "service-ranks", "steps": steps_, "rows": rows}


HEADER = (
    "| ranks | mode | steps | regions | checks | RPCs/step (ReportCheck, GetRegion, Upload) "
    "| RPCs/s at 10 steps/s | check p50 / p99 ms | fetch p50 / p99 ms | coordinator CPU ms/step |"
)


def format_row(row: dict[str, Any]) -> str:
    per = row["rpcs_per_step"]
    return (
        f"| {row['ranks']} | {row['mode']} | {row['steps']} | {row['regions']} | {row['checks']} "
        f"| {per.get('ReportCheck', 0):.1f}, {per.get('GetRegion', 0):.1f}, "
        f"{per.get('UploadEmbeddings', 0):.1f} | {row['rpcs_per_s_at_pace']:,.0f} "
        f"| {row['check']['p50_ms']:.1f} / {row['check']['p99_ms']:.1f} "
        f"| {row['fetch']['p50_ms']:.1f} / {row['fetch']['p99_ms']:.1f} "
        f"| {1e3 * row['coordinator_cpu_s_per_step']:.1f} |"
    )


def format_table(result: dict[str, Any]) -> str:
    return "\n".join([HEADER, "|" + "---|" * 10, *map(format_row, result["rows"])])
