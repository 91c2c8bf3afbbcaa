"""Check reports and region fetches combined across a job's ranks through ``torch.distributed``.

A data-parallel job already runs a process group. Instead of every rank sending its own check
report (W reports per check for the coordinator), the ranks gather their check scalars among
themselves, rank 0 sends one report on behalf of all of them, and broadcasts the decision: one
``ReportCheck`` per check, whatever the world size.

The combined report carries each scalar summed over the ranks in rank order, the order in
which the coordinator adds separate reports (:func:`crest.service.checks.decide`), and the
scalars travel as float64 (exact for the Python floats the session measures): the decisions
are bit-identical to those of separate reports.

The same ranks share their region fetches: at a region switch rank 0 asks for every rank's
view in one (paged) GetRegion and scatters them, so the coordinator answers one fetch per
region switch instead of one per rank; each rank's view is the one it would have fetched.
And their uploads: the ranks that embed gather their embeddings and losses at rank 0, which
sends them in one shared upload (chunked and streamed as one rank's), instead of one upload
per rank; the coordinator stores each rank's rows as it would have stored that rank's own.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import fields, replace
from typing import Any

import torch
import torch.distributed as dist

from crest.proto.contract import CheckDecision, CheckReport, RegionStatus, RegionView
from crest.proto.requests import RankUpload

log = logging.getLogger(__name__)

# The scalars a rank contributes, in the order of the gathered float64 row; region and step
# come along so that ranks at different checks fail loudly instead of mixing their scalars.
_REPORT_FIELDS = tuple(f.name for f in fields(CheckReport) if f.name != "ranks")
_INTEGERS = frozenset({"region_id", "step", "count"})
_DECISION_FIELDS = ("region_id", "step", "new_region", "loss", "predicted", "relative_error")
_SUMMED = tuple(name for name in _REPORT_FIELDS if name not in ("region_id", "step"))

# What a rank asks for at the session's start (``combine_checks``), as gathered.
_OFF, _ON, _AUTO = 0, 1, 2


def combine_reports(reports: Sequence[CheckReport]) -> CheckReport:
    """All ranks' reports of one check (in rank order) as one report covering them: each
    scalar summed in rank order, as :func:`crest.service.checks.decide` sums separate ones."""
    first = reports[0]
    for rank, report in enumerate(reports):
        if (report.region_id, report.step) != (first.region_id, first.step):
            raise RuntimeError(
                f"rank {rank} checked region {report.region_id} after step {report.step}, "
                f"rank 0 region {first.region_id} after step {first.step}: the ranks of a job "
                "must run the same steps (did a rank resume from another checkpoint?)"
            )
    sums = {name: sum(getattr(r, name) for r in reports) for name in _SUMMED}
    return replace(first, **sums, ranks=sum(r.ranks for r in reports))


class CheckGroup:
    """The job's ranks as the default process group's: gathers their check reports for rank 0
    and hands rank 0's decision to all. Every method is a collective: all ranks call it, in
    the same order (the session does so between the same steps on every rank)."""

    def __init__(self, rank: int, world_size: int) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = _collective_device()

    def combine(self, report: CheckReport) -> CheckReport | None:
        """This rank's report in, the combined report out on rank 0 (None on the others)."""
        row = torch.tensor([float(getattr(report, name)) for name in _REPORT_FIELDS],
                           dtype=torch.float64, device=self.device)  # fmt: skip
        rows = [torch.empty_like(row) for _ in range(self.world_size)]
        dist.all_gather(rows, row)
        # Every rank rebuilds the reports, so that all of them raise on a mismatch.
        reports = [_report(values) for values in torch.stack(rows).cpu().tolist()]
        combined = combine_reports(reports)
        return combined if self.rank == 0 else None

    def share(self, pending: Future[CheckDecision] | None) -> CheckDecision:
        """Rank 0 waits for the decision of the report it sent and broadcasts it; the others
        receive it. A failed report fails every rank (rank 0 with the error itself)."""
        values = [math.nan] * (1 + len(_DECISION_FIELDS))
        error: BaseException | None = None
        if self.rank == 0:
            assert pending is not None
            try:
                decision = pending.result()
                values = [1.0, *(float(getattr(decision, name)) for name in _DECISION_FIELDS)]
            except Exception as err:  # every rank must hear of it, or the others would hang
                error, values[0] = err, 0.0
        message = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(message, src=0)
        if error is not None:
            raise error
        ok, *received = message.cpu().tolist()
        if ok != 1.0:
            raise RuntimeError(
                "rank 0 could not report the check on behalf of all ranks: see rank 0's error"
            )
        return _decision(received)

    def share_region(self, fetch: Callable[[], list[RegionView]]) -> tuple[RegionView, bool, bool]:
        """Rank 0 fetches every rank's view of a region (``fetch``, called on rank 0 alone)
        and scatters them: this rank's view, whether every rank's is settled (READY or
        DONE), so that all ranks leave their fetch loop together, and whether any rank must
        embed, so that all ranks enter :meth:`share_upload` together. A failed fetch fails
        every rank (rank 0 with the error itself)."""
        parts: list[Any] | None = None
        error: BaseException | None = None
        if self.rank == 0:
            try:
                views = fetch()
                settled = all(v.status in (RegionStatus.READY, RegionStatus.DONE) for v in views)
                embed = any(v.status is RegionStatus.EMBED for v in views)
                parts = [(view, settled, embed, "") for view in views]
            except Exception as err:  # every rank must hear of it, or the others would hang
                error = err
                parts = [(None, False, False, _failure(err))] * self.world_size
        received: list[Any] = [None]
        dist.scatter_object_list(received, parts, src=0)
        if error is not None:
            raise error
        view, settled, embed, failure = received[0]
        if failure:
            raise RuntimeError(
                f"rank 0 could not fetch the region for all ranks ({failure}): see rank 0's error"
            )
        return view, settled, embed

    def share_upload(
        self, part: RankUpload | None, send: Callable[[list[RankUpload | None]], None]
    ) -> None:
        """Rank 0 gathers every rank's ``(indices, embeddings, losses)`` (None: a rank with
        nothing to embed) and sends them all (``send``, called on rank 0 alone), so that only
        rank 0 uploads. A failed upload fails every rank (rank 0 with the error itself)."""
        parts: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(part, parts, dst=0)
        error: BaseException | None = None
        outcome = [""]
        if self.rank == 0:
            assert parts is not None
            try:
                send(parts)
            except Exception as err:  # every rank must hear of it, or the others would hang
                error, outcome[0] = err, _failure(err)
        dist.broadcast_object_list(outcome, src=0)
        if error is not None:
            raise error
        if outcome[0]:
            raise RuntimeError(
                f"rank 0 could not upload the embeddings of all ranks ({outcome[0]}): see "
                "rank 0's error"
            )

    def barrier(self) -> None:
        dist.barrier()


def check_group(combine: bool | None, rank: int, world_size: int) -> CheckGroup | None:
    """How this rank's session reports checks: through a :class:`CheckGroup`, or by itself
    (None).

    ``combine``: True requires combined checks, False refuses them, None (auto) combines when
    the default process group is the job's ranks: its size the job's world size and each
    process's rank its session's. Wherever the group spans the job's world size, the ranks
    agree first (a collective, also with ``combine=False``), so that a job whose ranks would
    mix both kinds of reports fails at once on every rank instead of hanging at a check.

    Raises:
        ValueError: ``combine=True`` without a process group of the job's ranks, or ranks
            that asked for different things.
    """
    spans = dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size
    if not spans:
        if combine:
            found = (
                f"a process group of {dist.get_world_size()} ranks"
                if dist.is_available() and dist.is_initialized()
                else "no process group"
            )
            raise ValueError(
                f"combine_checks=True needs torch.distributed's default process group to hold "
                f"the job's {world_size} ranks; found {found}"
            )
        return None
    asked = _AUTO if combine is None else (_ON if combine else _OFF)
    mine = torch.tensor([asked, rank, dist.get_rank()], dtype=torch.int64,
                        device=_collective_device())  # fmt: skip
    rows = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(rows, mine)
    table = [row.cpu().tolist() for row in rows]
    wishes = {wish for wish, _, _ in table}
    aligned = all(session == process for _, session, process in table)
    if _ON in wishes and _OFF in wishes:
        raise ValueError(
            "ranks disagree on combine_checks: ranks "
            f"{[process for wish, _, process in table if wish == _ON]} ask for combined checks, "
            f"ranks {[process for wish, _, process in table if wish == _OFF]} refuse them; "
            "pass the same value on every rank"
        )
    if _ON in wishes and not aligned:
        raise ValueError(
            "combine_checks=True needs each process's rank in the default process group to "
            "be its session's rank; found (session rank, process rank) "
            f"{[(session, process) for _, session, process in table if session != process]}"
        )
    if _OFF in wishes or not aligned:
        return None
    log.info("rank %d: checks combined across the job's %d ranks, rank 0 reports", rank,
             world_size)  # fmt: skip
    return CheckGroup(rank, world_size)


def _failure(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _collective_device() -> torch.device:
    """Where the default group's collectives take their tensors: the GPU for NCCL alone."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _report(values: Sequence[float]) -> CheckReport:
    named: dict[str, Any] = {
        name: int(value) if name in _INTEGERS else value
        for name, value in zip(_REPORT_FIELDS, values, strict=True)
    }
    return CheckReport(**named)


def _decision(values: Sequence[float]) -> CheckDecision:
    region_id, step, new_region, loss, predicted, relative_error = values
    return CheckDecision(int(region_id), int(step), bool(new_region), loss, predicted,
                         relative_error)  # fmt: skip
