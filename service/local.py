"""The coordinator in the trainer's own process, behind the same interface as the remote one.

:class:`LocalCoordinator` runs a :class:`JobManager` on a private event-loop thread and
offers the synchronous :class:`crest.proto.contract.Coordinator` methods, so a training loop
written against it runs unchanged against a remote coordinator. It checks its caller's
arguments with the remote client's functions (:mod:`crest.proto.requests`) and sends its
replies through the wire's conversions (a large region in pages, as remotely): the same input
succeeds or fails, with the same error, in both modes, and a job that runs here runs remotely.
A job's status holds here the regions whose statistics the job keeps (the last
``STATS_KEPT``); remotely more of its oldest ones may be left out to fit a message
(``JobStatus.regions_omitted`` counts them, ``omitted_totals`` sums them). Its calls
are no RPCs: the gRPC server's per-method metrics (:class:`crest.service.telemetry.RpcTelemetry`)
do not count them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import numpy as np

from crest.proto import convert, requests
from crest.proto.contract import (
    CheckDecision,
    CheckReport,
    JobConfig,
    JobStatus,
    RegionView,
    SessionInfo,
)
from crest.service.job import UploadChunk
from crest.service.manager import JobManager

T = TypeVar("T")


class LocalCoordinator:
    """Synchronous, thread-safe facade over an in-process :class:`JobManager`."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="crest-coordinator", daemon=True
        )
        self._thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run a coroutine on the manager's event loop (e.g. a dashboard server beside it:
        everything that touches the manager must run on this one loop)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def create_job(self, config: JobConfig, labels: np.ndarray, job_id: str | None = None) -> str:
        """Create a job in this process, or find the job ``job_id`` names.

        As :meth:`crest.proto.contract.Coordinator.create_job`: ``labels`` are ``(N,)``
        integers in ``[0, num_classes)`` (numpy or a CPU tensor; map string or sparse labels
        with ``np.unique(raw, return_inverse=True)``), every class has an example unless
        ``config.allow_empty_classes``, and with ``job_id`` the call is idempotent. The job
        lives as long as this coordinator; to resume after the process ended, create it again
        with the checkpoint's ``job_id`` (and the same config and labels) and load the
        session's state dict, which carries the job (:meth:`restore_job`).

        Raises:
            InvalidArgument: an invalid config, ``job_id`` or labels.
            FailedPrecondition: ``job_id`` exists with another config or other labels.
        """
        config, labels = requests.job(config, labels)
        return self._call(self.manager.create_job(config, labels, job_id))

    def open_session(self, job_id: str, rank: int) -> SessionInfo:
        return self._call(self.manager.open_session(job_id, rank))

    def get_region(self, job_id: str, rank: int, step: int) -> RegionView:
        """As remotely: the region through the wire's pages (one for a region that fits one
        message), so that both modes split and reassemble it alike; the arrays are the
        caller's own copies."""
        view = self._call(self.manager.get_region(job_id, rank, step))
        return convert.region_from_pb(*convert.region_to_pages(view))

    def get_regions(
        self, job_id: str, first_rank: int, num_ranks: int, step: int
    ) -> list[RegionView]:
        """As remotely: several ranks' views through the wire's pages."""
        views = self._call(self.manager.get_regions(job_id, first_rank, num_ranks, step))
        if len(views) == 1:
            return [convert.region_from_pb(*convert.region_to_pages(views[0]))]
        return convert.regions_from_pb(num_ranks, *convert.regions_to_pages(views))

    def submit_embeddings(
        self,
        job_id: str,
        rank: int,
        region_id: int,
        indices: np.ndarray,
        embeddings: np.ndarray,
        losses: np.ndarray,
    ) -> None:
        # The job checks the whole upload with crest.proto.requests.upload (as the remote
        # client does before it chunks): checking here as well would run it twice.
        self._call(
            self.manager.submit_embeddings(job_id, rank, region_id, indices, embeddings, losses)
        )

    def submit_shared_embeddings(
        self,
        job_id: str,
        first_rank: int,
        region_id: int,
        parts: Sequence[requests.RankUpload | None],
    ) -> None:
        indices, embeddings, losses, rank_rows = requests.shared_upload(parts)
        chunk = UploadChunk(indices, embeddings, losses, None, first_rank, rank_rows)
        self._call(self.manager.submit_upload(job_id, first_rank, region_id, [chunk]))

    def publish_model(
        self,
        job_id: str,
        artifact: bytes,
        inputs: np.ndarray,
        num_weights: int,
        trainer_side: str = "",
    ) -> None:
        inputs = requests.model(artifact, inputs)  # as the remote client checks it
        self._call(self.manager.publish_model(job_id, artifact, inputs, num_weights, trainer_side))

    def publish_weights(self, job_id: str, version: int, weights: np.ndarray) -> None:
        weights = convert.decode_weights(np.asarray(weights))  # bfloat16 as on the wire
        self._call(self.manager.publish_weights(job_id, version, weights))

    def report_check(self, job_id: str, rank: int, report: CheckReport) -> CheckDecision:
        return self._call(self.manager.report_check(job_id, rank, report))

    def job_status(self, job_id: str) -> JobStatus:
        # Through the wire's conversion, but whole: no message limit to leave regions out for.
        status = self._call(self.manager.job_status(job_id))
        return convert.status_from_pb(convert.status_to_pb(status, limit=None))

    # A job here dies with the trainer's process: checkpoints carry it (JobSnapshots).
    def export_job(self, job_id: str) -> bytes:
        return self._call(self.manager.export_job(job_id))

    def restore_job(self, job_id: str, snapshot: bytes) -> bool:
        return self._call(self.manager.restore_job(job_id, snapshot))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self.manager.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def __enter__(self) -> LocalCoordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
