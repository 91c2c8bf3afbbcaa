"""Many-rank benchmark: what one job of W ranks costs the coordinator (``crest bench service
--ranks 1024``).

Simulated ranks, no model on their side: every rank makes the RPCs a real trainer makes, in
lockstep, as fast as the coordinator answers. Modes:

* ``per-rank`` (ranks without a process group): at a region switch each rank fetches its
  region (``GetRegion``), uploads its candidates' embeddings (``UploadEmbeddings``, fake ones)
  and fetches the region again for its batches; after every ``check_interval`` steps (k, from
  the job) each rank reports the check (``ReportCheck``);
* ``combined``: the same, but rank 0 reports each check for all ranks (ranks of one
  ``torch.distributed`` group; the all-gather is not simulated);
* ``shared``: combined checks, and rank 0 fetches every rank's region in one request (paged,
  ``GetRegionRequest.num_ranks``; the scatter to the ranks is not simulated); each rank still
  uploads its own embeddings;
* ``shared-upload``: as ``shared``, and rank 0 uploads every rank's embeddings in one shared
  upload (``EmbeddingChunk.rank_rows``, in chunks and streams as the client sends it; the
  gather at rank 0 is not simulated);
* ``shared-service``: as ``shared`` on the service side: rank 0 publishes a tiny exported
  model once (``PublishModel``) and its weights once per region (``PublishWeights``), the
  coordinator's selectors embed; no uploads.

Two coordinators: :func:`run_replica_bench` runs ``shared-service`` jobs against one ``crest
serve`` and twice as many against two replicas (a private redis-server, leases), each job
driven at the replica that owns it and training at ``--steps-per-s`` (the modes above train
as fast as the coordinator answers).

Per mode: RPCs per training step by method, and so RPCs per second for a job training at
``--steps-per-s`` (10 by default); p50/p99 latency of a check (send to decision: a per-rank
report waits for its peers' reports) and of a region fetch (a shared fetch: all its pages;
the job's first region apart, as it waits for its selection); the coordinator process's CPU
seconds per training step. Regions end where the coordinator's checks end them (the check
losses are seeded noise around the region's initial loss), so the trainer-side modes see the
same decisions and the same regions.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from crest.client.ranks import combine_reports
from crest.client.remote import RemoteCoordinator
from crest.proto import convert, requests, steps
from crest.proto.contract import CheckReport, JobConfig, RegionStatus, RegionView
from crest.proto.v1 import coordinator_pb2 as pb
from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc
from crest.service.server import CHANNEL_OPTIONS

MODES = ("per-rank", "combined", "shared", "shared-upload", "shared-service")
EMBEDDING_DIM = 4
ONCE_PER_JOB = ("OpenSession", "PublishModel")  # not counted in the per-step rates


def rank_config(ranks: int, seed: int = 0, side: str = "trainer") -> JobConfig:
    """A job sized so that each rank draws small regions: the RPCs, not the selection, are
    measured (2 coresets of 20 examples per rank per region, candidates 40 per coreset)."""
    return JobConfig(
        selection_side=side,
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
    fetch_s: list[float] = field(default_factory=list)  # after the job's first region
    first_fetch_s: list[float] = field(default_factory=list)  # of its first region
    decisions: list[tuple[int, bool]] = field(default_factory=list)
    steps: int = 0
    regions: int = 0
    pages: int = 0  # the most pages a shared fetch took


class _SimulatedJob:
    """The RPCs of one job's ranks, driven in lockstep."""

    def __init__(self, stub: pb_grpc.CoordinatorStub, address: str, job_id: str,
                 config: JobConfig, mode: str, step_s: float = 0.0):  # fmt: skip
        self.stub, self.address, self.job_id = stub, address, job_id
        self.step_s = step_s  # a training step's time (0: as fast as the coordinator answers)
        self.config, self.mode = config, mode
        self.shared, self.service = mode.startswith("shared"), mode == "shared-service"
        self.ranks = range(config.world_size)
        self.run = _Run()
        self.rng = np.random.default_rng(config.seed)
        self.seq = dict.fromkeys(self.ranks, 0)
        self.published = -1  # service side: the weights version last published

    async def _fetch(self, rank: int, step: int) -> RegionView:
        started = time.perf_counter()
        reply = await self.stub.GetRegion(
            pb.GetRegionRequest(job_id=self.job_id, rank=rank, step=step), timeout=120
        )
        view = convert.region_from_pb(reply)  # the client's decoding is part of a fetch
        self._fetched(step, started)
        self.run.calls["GetRegion"] += 1
        return view

    async def _fetch_shared(self, step: int) -> list[RegionView]:
        """Rank 0's fetch of every rank's view: one request per page."""
        started = time.perf_counter()

        def ask(page: int, region_id: int = 0) -> pb.GetRegionRequest:
            return pb.GetRegionRequest(job_id=self.job_id, rank=0, step=step, page=page,
                                       region_id=region_id, num_ranks=len(self.ranks))  # fmt: skip

        pages = [await self.stub.GetRegion(ask(0), timeout=120)]
        for page in range(1, pages[0].num_pages):
            pages.append(await self.stub.GetRegion(ask(page, pages[0].region_id), timeout=120))
        views = convert.regions_from_pb(len(self.ranks), *pages)
        self._fetched(step, started)
        self.run.calls["GetRegion"] += len(pages)
        self.run.pages = max(self.run.pages, len(pages))
        return views

    def _fetched(self, step: int, started: float) -> None:
        # The first region waits for its selection (on the service side for the model's
        # export and first embedding too): a job's start, apart from the steady state.
        fetches = self.run.fetch_s if step > 0 else self.run.first_fetch_s
        fetches.append(time.perf_counter() - started)

    async def _fetch_all(self, step: int) -> list[RegionView]:
        if self.shared:
            return await self._fetch_shared(step)
        return list(await asyncio.gather(*(self._fetch(rank, step) for rank in self.ranks)))

    def _embeddings(self, rank: int, region: RegionView) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.config.seed, rank, region.region_id])
        embeddings = rng.random((len(region.candidates), EMBEDDING_DIM), dtype=np.float32)
        return embeddings, np.ones(len(region.candidates), np.float32)

    async def _upload_shared(self, waiting: list[tuple[int, RegionView]]) -> None:
        """Rank 0's upload of every waiting rank's embeddings: streams of chunks."""
        mine = dict(waiting)
        parts = [(mine[r].candidates, *self._embeddings(r, mine[r])) if r in mine else None
                 for r in self.ranks]  # fmt: skip
        indices, embeddings, losses, rank_rows = requests.shared_upload(parts)
        region_id = waiting[0][1].region_id
        chunks = convert.upload_chunks(self.job_id, 0, region_id, self.seq[0] + 1, indices,
                                       embeddings, losses, rank_rows)  # fmt: skip
        self.seq[0] += len(chunks)
        for start in range(0, len(chunks), convert.MAX_STREAM_CHUNKS):
            stream = chunks[start : start + convert.MAX_STREAM_CHUNKS]
            for chunk in stream:
                chunk.stream_chunks = len(stream)
            await self.stub.UploadEmbeddings(iter(stream), timeout=120)
            self.run.calls["UploadEmbeddings"] += 1

    async def _upload(self, rank: int, region: RegionView) -> None:
        candidates = region.candidates
        embeddings, losses = self._embeddings(rank, region)
        self.seq[rank] += 1
        chunk = pb.EmbeddingChunk(
            job_id=self.job_id, rank=rank, region_id=region.region_id, seq=self.seq[rank],
            indices=convert.to_array(candidates),
            embeddings=convert.to_array(embeddings), losses=convert.to_array(losses),
            stream_chunks=1,
        )  # fmt: skip
        await self.stub.UploadEmbeddings(iter([chunk]), timeout=120)
        self.run.calls["UploadEmbeddings"] += 1

    async def _publish(self, view: RegionView, step: int) -> None:
        """Rank 0 on the service side: the model once, the weights of ``step`` (or of the
        step the coordinator asks for), each version once."""
        artifact, inputs, weights = _tiny_model(self.config)
        remote = RemoteCoordinator(self.address, call_timeout_s=120)
        try:
            if view.wants_model:
                await asyncio.to_thread(remote.publish_model, self.job_id, artifact, inputs,
                                        len(weights))  # fmt: skip
                self.run.calls["PublishModel"] += 1
            version = view.wants_weights if view.wants_weights >= 0 else step
            if view.wants_weights >= 0 or version != self.published:
                await asyncio.to_thread(remote.publish_weights, self.job_id, version, weights)
                self.run.calls["PublishWeights"] += 1
                self.published = version
        finally:
            remote.close()

    async def _region(self, step: int) -> RegionView | None:
        """Every rank's region at ``step`` (embedded and selected): rank 0's view."""
        views = await self._fetch_all(step)
        for _ in range(100):
            if views[0].status is RegionStatus.DONE:
                return None
            if all(v.status is RegionStatus.READY for v in views):
                break
            waiting = [(r, v) for r, v in zip(self.ranks, views, strict=True)
                       if v.status is RegionStatus.EMBED]  # fmt: skip
            if waiting and self.mode == "shared-upload":
                await self._upload_shared(waiting)
            elif waiting:
                await asyncio.gather(*(self._upload(rank, view) for rank, view in waiting))
            elif views[0].wants_model or views[0].wants_weights >= 0:
                await self._publish(views[0], step)
            views = await self._fetch_all(step)
        else:
            raise RuntimeError(f"region at step {step} not ready after 100 fetches")
        self.run.regions += 1
        if self.service and step == views[0].start_step:  # the next region's weights
            await self._publish(views[0], step)
        return views[0]

    def _reports(self, region: RegionView, step: int) -> list[CheckReport]:
        count = len(region.check_indices)
        noise = self.rng.normal(0.0, 0.06, len(self.ranks))  # check losses around L_0
        # The service side's L_0 is the trainer's to measure (NaN: the trainer side's).
        base = region.initial_loss if region.initial_loss > 0 else 2.0
        origin = count * base if self.service else math.nan
        return [
            CheckReport(region_id=region.region_id, step=step,
                        loss_sum=count * base * (1 + n), count=count,
                        linear=0.0, quadratic=0.0, curvature=1.0, initial_loss_sum=origin)
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
        if self.mode != "per-rank":
            # rank order, as crest.client.ranks adds them
            total = combine_reports(reports)
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
                if self.step_s:
                    await asyncio.sleep(self.step_s)
                due = steps.check_due(at, region.start_step, region.check_interval, end)
                if due and await self._check(region, at):
                    end = min(end, steps.end_after_failed_check(at))
            step = min(end, max_steps)
        self.run.steps = step
        return self.run


@functools.cache
def _tiny_model(config: JobConfig) -> tuple[bytes, np.ndarray, np.ndarray]:
    """A linear model over random inputs, exported: ``(artifact, inputs, weights)``."""
    import torch

    from crest.worker.model import export_model, model_weights

    torch.manual_seed(config.seed)
    model = torch.nn.Linear(EMBEDDING_DIM, config.num_classes)
    inputs = np.random.default_rng(config.seed).random(
        (config.num_examples, EMBEDDING_DIM), dtype=np.float32
    )
    artifact = export_model(model, torch.from_numpy(inputs[:4]))
    return artifact, inputs, model_weights(model)


def _percentiles(samples: list[float]) -> dict[str, float]:
    if not samples:
        return {"p50_ms": math.nan, "p99_ms": math.nan}
    ordered = sorted(samples)
    return {
        "p50_ms": 1e3 * ordered[len(ordered) // 2],
        "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
    }


async def _simulate(jobs: list[tuple[str, str, JobConfig]], mode: str, steps_: int,
                    step_s: float = 0.0) -> list[_Run]:  # fmt: skip
    """Jobs ``(address, job_id, config)`` at once, each through its own channel."""
    async with contextlib.AsyncExitStack() as stack:
        simulated = []
        for address, job_id, config in jobs:
            channel = await stack.enter_async_context(
                grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            )
            stub = pb_grpc.CoordinatorStub(channel)
            simulated.append(_SimulatedJob(stub, address, job_id, config, mode, step_s))
        return list(await asyncio.gather(*(job.train(steps_) for job in simulated)))


def _row(run: _Run, ranks: int, mode: str, steps_per_s: float, cpu_s: float,
         seconds: float) -> dict[str, Any]:  # fmt: skip
    per_step = {name: count / run.steps for name, count in sorted(run.calls.items())}
    total = sum(n for name, n in run.calls.items() if name not in ONCE_PER_JOB)
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
        "region_pages": run.pages,
        "check": _percentiles(run.check_s),
        "fetch": _percentiles(run.fetch_s),
        "first_region_fetch_max_ms": 1e3 * max(run.first_fetch_s, default=math.nan),
        "coordinator_cpu_s_per_step": cpu_s / run.steps,
        "wall_s": seconds,
    }


def _create_jobs(owners: list[str], ranks: int, count: int, mode: str) -> list[tuple]:
    """``count`` jobs, job i created at (and so owned by) replica ``i % len(owners)``."""
    side = "service" if mode == "shared-service" else "trainer"
    jobs = []
    for number in range(count):
        config = rank_config(ranks, seed=number, side=side)
        labels = np.arange(config.num_examples) % config.num_classes
        address = owners[number % len(owners)]
        with RemoteCoordinator(address) as remote:
            jobs.append((address, remote.create_job(config, labels), config))
    return jobs


def measure(address: str, pid: int, ranks: int, mode: str, steps_: int,
            steps_per_s: float) -> dict[str, Any]:  # fmt: skip
    """One job of ``ranks`` simulated ranks for ``steps_`` steps in ``mode``."""
    jobs = _create_jobs([address], ranks, 1, mode)
    cpu, started = cpu_seconds(pid), time.perf_counter()
    (run,) = asyncio.run(_simulate(jobs, mode, steps_))
    seconds, cpu = time.perf_counter() - started, cpu_seconds(pid) - cpu
    return _row(run, ranks, mode, steps_per_s, cpu, seconds)


def measure_replicas(served: list[Any], ranks: int, jobs_: int, mode: str, steps_: int,
                     steps_per_s: float) -> dict[str, Any]:  # fmt: skip
    """``jobs_`` jobs at once, split across the replicas ``served`` (their owners), each
    training at ``steps_per_s``."""
    jobs = _create_jobs([s.address for s in served], ranks, jobs_, mode)
    cpu, started = [cpu_seconds(s.pid) for s in served], time.perf_counter()
    runs = asyncio.run(_simulate(jobs, mode, steps_, 1.0 / steps_per_s))
    seconds = time.perf_counter() - started
    cpu = [cpu_seconds(s.pid) - before for s, before in zip(served, cpu, strict=True)]
    rows = [_row(run, ranks, mode, steps_per_s, math.nan, seconds) for run in runs]
    check = [t for run in runs for t in run.check_s]
    fetch = [t for run in runs for t in run.fetch_s]
    first = [t for run in runs for t in run.first_fetch_s]
    trained = sum(run.steps for run in runs)
    return {
        "replicas": len(served),
        "jobs": jobs_,
        "ranks": ranks,
        "mode": mode,
        "steps": [run.steps for run in runs],
        "regions": [run.regions for run in runs],
        "rpcs_per_s_per_job": [row["rpcs_per_s_at_pace"] for row in rows],
        "check": _percentiles(check),
        "fetch": _percentiles(fetch),
        "first_region_fetch_max_ms": 1e3 * max(first, default=math.nan),
        # Each replica's CPU over the steps of the jobs it owns.
        "coordinator_cpu_s_per_step": [c / (trained / len(served)) for c in cpu],
        "wall_s": seconds,
        "jobs_rows": rows,
    }


def run_ranks_bench(
    ranks: list[int],
    steps_: int,
    steps_per_s: float,
    modes: tuple[str, ...] = MODES,
    replicas: bool = True,
    replica_steps: int = 150,
) -> dict[str, Any]:
    from crest.bench.service import coordinator_process

    rows = []
    with coordinator_process("--selector", "inprocess") as served:
        for count in ranks:
            for mode in modes:
                rows.append(measure(served.address, served.pid, count, mode, steps_,
                                    steps_per_s))  # fmt: skip
                print(format_row(rows[-1]), flush=True)
    result: dict[str, Any] = {"benchmark": "service-ranks", "steps": steps_, "rows": rows}
    if replicas:
        result["replica_steps"] = replica_steps
        result["replicas"] = [
            run_replica_bench(count, replica_steps, steps_per_s) for count in ranks
        ]
    return result


def run_replica_bench(ranks: int, steps_: int, steps_per_s: float,
                      mode: str = "shared-service") -> list[dict[str, Any]]:  # fmt: skip
    """One job against one coordinator, then two jobs against two replicas (one each), both
    with a private redis-server store and leases; the jobs train at ``steps_per_s`` (the
    service side prepares each region while the one before trains, as in a real job)."""
    from crest.bench.faults import RedisServer
    from crest.bench.service import coordinator_process

    rows = []
    for names in (("solo",), ("a", "b")):
        with tempfile.TemporaryDirectory() as workdir, \
                RedisServer(Path(workdir), fsync="everysec") as redis, \
                contextlib.ExitStack() as stack:  # fmt: skip
            served = [
                stack.enter_context(coordinator_process(
                    "--selector", "inprocess", "--store", redis.url, "--lease-s", "5",
                    "--replica-id", name,
                ))
                for name in names
            ]  # fmt: skip
            rows.append(measure_replicas(served, ranks, len(names), mode, steps_, steps_per_s))
            print(format_replica_row(rows[-1]), flush=True)
    return rows


HEADER = (
    "| ranks | mode | steps | regions | checks | RPCs/step (ReportCheck, GetRegion, Upload, "
    "PublishWeights) | RPCs/s at 10 steps/s | check p50 / p99 ms | fetch p50 / p99 ms "
    "| coordinator CPU ms/step |"
)


def format_row(row: dict[str, Any]) -> str:
    per = row["rpcs_per_step"]
    return (
        f"| {row['ranks']} | {row['mode']} | {row['steps']} | {row['regions']} | {row['checks']} "
        f"| {per.get('ReportCheck', 0):.2f}, {per.get('GetRegion', 0):.2f}, "
        f"{per.get('UploadEmbeddings', 0):.2f}, {per.get('PublishWeights', 0):.2f} "
        f"| {row['rpcs_per_s_at_pace']:,.1f} "
        f"| {row['check']['p50_ms']:.1f} / {row['check']['p99_ms']:.1f} "
        f"| {row['fetch']['p50_ms']:.1f} / {row['fetch']['p99_ms']:.1f} "
        f"| {1e3 * row['coordinator_cpu_s_per_step']:.1f} |"
    )


REPLICA_HEADER = (
    "| replicas | jobs (ranks each) | mode | RPCs/s per job at 10 steps/s | check p50 / p99 ms "
    "| fetch p50 / p99 ms | CPU ms per step, each replica |"
)


def format_replica_row(row: dict[str, Any]) -> str:
    rates = ", ".join(f"{r:.1f}" for r in row["rpcs_per_s_per_job"])
    cpu = ", ".join(f"{1e3 * c:.1f}" for c in row["coordinator_cpu_s_per_step"])
    return (
        f"| {row['replicas']} | {row['jobs']} ({row['ranks']}) | {row['mode']} "
        f"| {row['steps'][0]}, {row['regions'][0]} | {rates} "
        f"| {row['check']['p50_ms']:.1f} / {row['check']['p99_ms']:.1f} "
        f"| {row['fetch']['p50_ms']:.1f} / {row['fetch']['p99_ms']:.1f} | {cpu} |"
    )


def format_table(result: dict[str, Any]) -> str:
    lines = [HEADER, "|" + "---|" * 10, *map(format_row, result["rows"])]
    for rows in result.get("replicas", []):
        lines += ["", REPLICA_HEADER, "|" + "---|" * 8, *map(format_replica_row, rows)]
    return "\n".join(lines)
