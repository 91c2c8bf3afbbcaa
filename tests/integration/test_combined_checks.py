"""Data-parallel ranks (gloo, DDP, one process each) that combine their check reports and
share their region fetches and uploads: one ReportCheck per check, one fetch per region step
and one upload per region for all ranks, the decisions and batches of separate reports,
fetches and uploads; ranks that disagree on combining fail at once; ranks that resume from
their checkpoints in new processes continue with an uninterrupted run's batches."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from crest.client.remote import RemoteCoordinator
from crest.service.telemetry import RpcTelemetry
from tests.integration.conftest import LoopbackCoordinator, start_loopback, stop_loopback
from tests.training import blobs, job_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def observed() -> Iterator[tuple[LoopbackCoordinator, RpcTelemetry]]:
    rpc = RpcTelemetry()
    handle, server, health_task = start_loopback(rpc=rpc)
    try:
        yield handle, rpc
    finally:
        stop_loopback(handle, server, health_task)


def run_ranks(address: str, tmp_path: Path, jobs: list[list[str]]) -> list[dict[str, Any]]:
    """One gloo process group of ``len(jobs)`` processes (its files in ``tmp_path``); rank r
    trains ``jobs[r]`` in turn (``JOB=COMBINE`` each, see
    :mod:`tests.integration.ddp_rank_main`)."""
    world = len(jobs)
    tmp_path.mkdir(exist_ok=True)
    init, outs = tmp_path / "group", [tmp_path / f"rank{r}.json" for r in range(world)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    module = [sys.executable, "-m", "tests.integration.ddp_rank_main", address, str(init)]
    processes = [
        subprocess.Popen(
            [*module, str(rank), str(world), str(outs[rank]), *jobs[rank]], cwd=ROOT, env=env
        )
        for rank in range(world)
    ]
    try:
        for process in processes:
            assert process.wait(timeout=300) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [json.loads(out.read_text()) for out in outs]


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_combine_their_checks_into_one_report_with_the_same_decisions(
    observed: tuple[LoopbackCoordinator, RpcTelemetry], tmp_path: Path, world: int
) -> None:
    loopback, rpc = observed
    config = job_config(world_size=world, epochs=2)
    with RemoteCoordinator(loopback.address) as remote:
        for job_id in ("combined", "separate", "mixed"):
            remote.create_job(config, blobs()[1].numpy(), job_id=job_id)
    # Then a job whose ranks disagree (rank 0 requires combining, the others refuse it).
    jobs = [["combined=auto", "separate=false", f"mixed={'true' if r == 0 else 'false'}"]
            for r in range(world)]  # fmt: skip
    ranks = run_ranks(loopback.address, tmp_path, jobs)

    def regions(job_id: str) -> list[tuple]:
        status = loopback.local.job_status(job_id)
        assert status.finished
        return [(r.start_step, r.end_step, r.end_reason, r.checks) for r in status.regions]

    assert regions("combined") == regions("separate"), "bit-identical checks and regions"
    checks = sum(len(r[3]) for r in regions("combined"))
    assert checks > 0 and len(regions("combined")) > 1
    assert [r["combined"]["reports"] for r in ranks] == [checks] + [0] * (world - 1)
    assert [r["separate"]["reports"] for r in ranks] == [checks] * world
    assert rpc.method("ReportCheck").calls == checks * (1 + world), "what the server answered"
    # Region fetches: rank 0 alone fetches for all ranks (at each region switch, and while
    # the ranks embed and wait for the selection), at most as often as any rank alone did.
    shared = [r["combined"]["fetches"] for r in ranks]
    separate = [r["separate"]["fetches"] for r in ranks]
    assert shared[1:] == [0] * (world - 1) and len(regions("combined")) <= shared[0]
    assert shared[0] <= min(separate) and sum(separate) >= world * len(regions("separate"))
    assert rpc.method("GetRegion").calls == sum(shared) + sum(separate), "one page each"
    # Uploads: rank 0 alone uploads, once per region for all ranks (one stream each: small).
    uploads = [r["combined"]["uploads"] for r in ranks]
    assert uploads == [len(regions("combined"))] + [0] * (world - 1)
    assert [r["separate"]["uploads"] for r in ranks] == [len(regions("separate"))] * world
    assert rpc.method("UploadEmbeddings").calls == uploads[0] * (1 + world)
    for rank in ranks:
        assert rank["combined"]["batches"] == rank["separate"]["batches"]
    served = [rank["combined"]["batches"] for rank in ranks]
    assert all(len(s) == config.total_steps for s in served)
    for step, batches in enumerate(zip(*served, strict=True)):
        assert {b[0] for b in batches} == {step}, "steps in lockstep"
        assert len({b[3] for b in batches}) == 1, "every rank switches regions at the same step"
        indices = [i for b in batches for i in b[1]]
        assert len(indices) == len(set(indices)), "coresets are disjoint across ranks"
    refusing = list(range(1, world))
    for rank in ranks:  # every rank fails at the session's start, none hangs at a check
        assert (
            f"ranks [0] ask for combined checks, ranks {refusing} refuse them"
            in (rank["mixed"]["error"])
        )


def test_ranks_share_their_fetches_on_the_service_side_with_the_same_batches(
    observed: tuple[LoopbackCoordinator, RpcTelemetry], tmp_path: Path
) -> None:
    loopback, _ = observed
    world = 2
    config = job_config(world_size=world, epochs=2, selection_side="service", max_staleness=12)
    with RemoteCoordinator(loopback.address) as remote:
        for job_id in ("shared", "separate"):
            remote.create_job(config, blobs()[1].numpy(), job_id=job_id)
    ranks = run_ranks(loopback.address, tmp_path, [["shared=auto", "separate=false"]] * world)
    status = loopback.local.job_status("shared")
    assert status.finished and status.selection_side == "service"
    assert any(r.embedded_by == "service" for r in status.regions)
    for rank in ranks:
        assert rank["shared"]["batches"] == rank["separate"]["batches"]
    shared = [r["shared"]["fetches"] for r in ranks]
    assert shared[1] == 0 and len(status.regions) <= shared[0]
    assert shared[0] <= min(r["separate"]["fetches"] for r in ranks)
    served = [rank["shared"]["batches"] for rank in ranks]
    for batches in zip(*served, strict=True):
        assert len({(b[0], b[3]) for b in batches}) == 1, "same steps, same-step switches"
        indices = [i for b in batches for i in b[1]]
        assert len(indices) == len(set(indices)), "coresets are disjoint across ranks"


def test_sharing_ranks_resume_in_new_processes_with_the_batches_of_an_uninterrupted_run(
    observed: tuple[LoopbackCoordinator, RpcTelemetry], tmp_path: Path
) -> None:
    loopback, _ = observed
    world = 2
    config = job_config(world_size=world, epochs=2)
    with RemoteCoordinator(loopback.address) as remote:
        for job_id in ("whole", "mid", "switch"):
            remote.create_job(config, blobs()[1].numpy(), job_id=job_id)
    whole = [r["whole"]["batches"] for r in run_ranks(loopback.address, tmp_path / "whole",
                                                       [["whole=auto"]] * world)]  # fmt: skip
    regions = loopback.local.job_status("whole").regions
    assert len(regions) > 3
    # Mid-region with a check in flight (sent after the step before), stopped 4 steps later;
    # and at a region switch: the resumed ranks fetch a region that waits for their embeddings.
    mid = next(c.step for r in regions[1:] for c in r.checks if c.step + 2 < r.end_step) + 1
    saved = {"mid": (mid, mid + 4), "switch": (regions[2].end_step - 1,) * 2}
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()

    def jobs(stop: bool) -> list[list[str]]:
        return [[f"{job}=auto:{checkpoints}:{save}:{end if stop else 'end'}"
                 for job, (save, end) in saved.items()]] * world  # fmt: skip

    first = run_ranks(loopback.address, tmp_path / "first", jobs(stop=True))
    for rank in range(world):  # each resumed rank sends its part of the check again
        state = torch.load(checkpoints / f"mid.rank{rank}.pt", weights_only=True)["crest"]
        assert state["pending_check"]["step"] == mid - 1
    resumed = run_ranks(loopback.address, tmp_path / "resumed", jobs(stop=False))
    for job, (save, end) in saved.items():
        status = loopback.local.job_status(job)
        assert status.finished
        assert [(r.start_step, r.end_step) for r in status.regions] == [
            (r.start_step, r.end_step) for r in regions
        ]
        for rank in range(world):
            assert first[rank][job]["batches"] == whole[rank][: end + 1]
            assert resumed[rank][job]["batches"] == whole[rank][save + 1 :], (job, rank)
        # Rank 0 alone fetches and uploads for both ranks, again after resuming: once per
        # region that the first ranks had not reached (the switch's next one included).
        uploads = sum(r.start_step > end for r in regions)
        assert [r[job]["uploads"] for r in resumed] == [uploads, 0], job
        assert resumed[1][job]["fetches"] == 0
    for batches in zip(*whole, strict=True):
        indices = [i for b in batches for i in b[1]]
        assert len(indices) == len(set(indices)), "coresets are disjoint across ranks"
