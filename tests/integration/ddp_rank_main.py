"""One data-parallel rank (gloo, DDP) in its own process:
``python -m tests.integration.ddp_rank_main ADDR INIT_FILE RANK WORLD OUT JOB=COMBINE...``.

Trains the test MLP on each job in turn, with ``combine_checks`` = ``auto`` (None), ``true``
or ``false``, and writes per job the batches it saw, how many check reports and region
fetches and uploads it sent, and the error that stopped it (if any) as JSON.

``JOB=COMBINE:DIR:SAVE_AT:STOP_AT`` trains through a checkpoint instead
(:func:`tests.training.train_with_checkpoint`, ``DIR/JOB.rankR.pt``): resumes from it if it
exists, saves it after step SAVE_AT, stops after step STOP_AT (``end``: trains to the end).
"""

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from crest.client.remote import RemoteCoordinator
from tests.training import train, train_with_checkpoint

COMBINE = {"auto": None, "true": True, "false": False}


class CountingReports:
    """The coordinator, counting this rank's ReportCheck calls, region fetches and uploads."""

    def __init__(self, inner: RemoteCoordinator) -> None:
        self.inner = inner
        self.reports = 0
        self.fetches = 0
        self.uploads = 0

    def report_check(self, *args: Any) -> Any:
        self.reports += 1
        return self.inner.report_check(*args)

    def get_region(self, *args: Any) -> Any:
        self.fetches += 1
        return self.inner.get_region(*args)

    def get_regions(self, *args: Any) -> Any:
        self.fetches += 1
        return self.inner.get_regions(*args)

    def submit_embeddings(self, *args: Any) -> Any:
        self.uploads += 1
        return self.inner.submit_embeddings(*args)

    def submit_shared_embeddings(self, *args: Any) -> Any:
        self.uploads += 1
        return self.inner.submit_shared_embeddings(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def main(address: str, init_file: str, rank: str, world: str, out: str, *jobs: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=int(rank),
                            world_size=int(world), timeout=timedelta(seconds=120))  # fmt: skip
    results = {}
    with RemoteCoordinator(address, retry_s=120) as remote:
        for job in jobs:
            job_id, spec = job.split("=")
            combine, *checkpoint = spec.split(":")
            counting = CountingReports(remote)
            session_args = dict(rank=int(rank), wrap=DistributedDataParallel,
                                combine_checks=COMBINE[combine])  # fmt: skip
            try:
                if checkpoint:
                    where, save_at, stop_at = checkpoint
                    served = train_with_checkpoint(
                        counting,  # type: ignore[arg-type]
                        job_id,
                        Path(where) / f"{job_id}.rank{rank}.pt",
                        int(save_at),
                        None if stop_at == "end" else int(stop_at),
                        **session_args,  # type: ignore[arg-type]
                    )
                else:
                    _, served = train(counting, job_id, **session_args)  # type: ignore[arg-type]
                results[job_id] = {"batches": served, "reports": counting.reports,
                                   "fetches": counting.fetches,
                                   "uploads": counting.uploads}  # fmt: skip
            except ValueError as err:
                results[job_id] = {"error": str(err)}
    dist.destroy_process_group()
    with open(out, "w") as sink:
        json.dump(results, sink)


if __name__ == "__main__":
    main(*sys.argv[1:])
