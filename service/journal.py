"""The job journal: every accepted change to a job as an event that replays it.

Events name a :class:`~crest.service.job.JobState` method and its arguments; applying the same
events to the same snapshot gives the same state, because the state machine is deterministic.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from crest.proto.contract import CheckReport
from crest.service.codec import pack, unpack
from crest.service.job import ArchivedRegion, JobState, UploadChunk
from crest.worker.problems import SelectionResult


def opened(rank: int, step: int) -> bytes:
    """A region opened at ``step`` (asked for by ``rank``)."""
    return pack({"op": "open", "rank": rank, "step": step})


def uploaded(rank: int, region_id: int, chunks: list[UploadChunk]) -> bytes:
    """An upload received as a whole (one event, so that it replays all or nothing too)."""
    return pack(
        {
            "op": "upload",
            "rank": rank,
            "region_id": region_id,
            "chunks": [
                {
                    "seq": chunk.seq,
                    "indices": np.asarray(chunk.indices),
                    "embeddings": np.asarray(chunk.embeddings),
                    "losses": np.asarray(chunk.losses),
                    "first_rank": chunk.first_rank,
                    "rank_rows": list(chunk.rank_rows),
                }
                for chunk in chunks
            ],
        }
    )


def selected(region_id: int, result: SelectionResult, monitor: bool = True) -> bytes:
    event = {
        "op": "select",
        "region_id": region_id,
        "rows": result.rows,
        "groups": result.groups,
        "weights": result.weights,
    }
    if not monitor:  # journals written before the monitor could be skipped lack the key
        event["monitor"] = False
    return pack(event)


def served(
    region_id: int, weights_version: int, embeddings: np.ndarray, losses: np.ndarray
) -> bytes:
    """The selectors' embeddings of a service-side region."""
    return pack(
        {
            "op": "served",
            "region_id": region_id,
            "version": weights_version,
            "embeddings": embeddings,
            "losses": losses,
        }
    )


def trainer_side(reason: str) -> bytes:
    """The ranks embed from now on (the job's model could not be served)."""
    return pack({"op": "trainer_side", "reason": reason})


def fell_back(region_id: int) -> bytes:
    return pack({"op": "fallback", "region_id": region_id})


def checked(rank: int, report: CheckReport) -> bytes:
    return pack({"op": "check", "rank": rank, "report": vars(report)})


def replay(state: JobState, blob: bytes) -> None:
    """Apply one journal event to ``state``."""
    event: dict[str, Any] = unpack(blob)
    op = event["op"]
    if op == "open":
        state.open_region(event["rank"], event["step"])
    elif op == "upload":
        chunks = [UploadChunk(c["indices"], c["embeddings"], c["losses"], c["seq"],
                              c.get("first_rank", 0), tuple(c.get("rank_rows", ())))
                  for c in event["chunks"]]  # fmt: skip
        state.receive_upload(event["rank"], event["region_id"], chunks)
    elif op == "embed":  # one chunk, as journals written before whole uploads hold them
        state.receive_embeddings(
            event["rank"], event["region_id"], event["indices"], event["embeddings"],
            event["losses"], event["seq"],
        )  # fmt: skip
    elif op == "served":
        state.receive_service_embeddings(
            event["region_id"], event["version"], event["embeddings"], event["losses"]
        )
    elif op == "trainer_side":
        state.use_trainer_side(event["reason"])
    elif op == "select":
        result = SelectionResult(event["rows"], event["groups"], event["weights"])
        state.complete_selection(event["region_id"], result, event.get("monitor", True))
    elif op == "fallback":
        state.complete_fallback(event["region_id"])
    elif op == "check":
        # A report of an archived region (journaled by older coordinators) changed nothing.
        with contextlib.suppress(ArchivedRegion):
            state.record_check(event["rank"], CheckReport(**event["report"]))
    else:
        raise ValueError(f"unknown journal event {op!r}")
