"""The remote coordinator: the :class:`Coordinator` interface over gRPC.

Every RPC is idempotent (see ``proto/v1/coordinator.proto``), so every call is retried with
exponential backoff while the coordinator is unreachable or restarting; a trainer rides out a
coordinator restart by itself. Uploads are split into chunks under the message limit and
numbered; after a broken stream the client asks which chunks were committed and resends only
the rest.

Create one client per process, after any fork (a DataLoader's workers must not inherit a
channel); it is thread-safe.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
import numpy as np

from crest.proto import convert
from crest.proto.contract import (
    CheckDecision,
    CheckReport,
    JobConfig,
    JobStatus,
    RegionView,
    SessionInfo,
)
from crest.proto.errors import CrestError, Unauthenticated, Unavailable, error_for_status
from crest.proto.v1 import coordinator_pb2 as pb
from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

# Transient failures only: every other status (NOT_FOUND, DATA_LOSS, RESOURCE_EXHAUSTED, ...)
# is permanent for the same request and raised at once.
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# gRPC reports a server certificate the client does not trust as UNAVAILABLE (a failed
# connection); no retry can cure it.
_UNTRUSTED_CERTIFICATE = "CERTIFICATE_VERIFY_FAILED"
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", convert.MAX_MESSAGE_BYTES + convert.MESSAGE_OVERHEAD_BYTES),
    ("grpc.max_send_message_length", convert.MAX_MESSAGE_BYTES + convert.MESSAGE_OVERHEAD_BYTES),
]
LABELS_PER_CHUNK = (convert.MAX_MESSAGE_BYTES - convert.MESSAGE_OVERHEAD_BYTES) // 8


class RemoteCoordinator:
    """A client of ``crest serve``.

    Args:
        address: ``host:port`` of the coordinator.
        token: sent as ``authorization: Bearer <token>`` when set.
        tls_ca: PEM file of the CA that signed the server's certificate (enables TLS).
        call_timeout_s: deadline of each call (calls that wait for peers or selection wait
            at most this long, then retry).
        retry_s: how long to keep retrying an unreachable coordinator before giving up with
            :class:`Unavailable`.
        embedding_dtype: ``"float32"`` or ``"float16"`` on the wire (half the bytes; the
            coordinator computes in float32 either way).
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        call_timeout_s: float = 30.0,
        retry_s: float = 300.0,
        embedding_dtype: str = "float32",
    ) -> None:
        if embedding_dtype not in ("float32", "float16"):
            raise ValueError(f"embedding_dtype must be float32 or float16, got {embedding_dtype}")
        self._credentials = (
            grpc.ssl_channel_credentials(Path(tls_ca).read_bytes()) if tls_ca is not None else None
        )
        self._pid = -1
        self._connect_lock = threading.Lock()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.address = address
        self.call_timeout_s = call_timeout_s
        self.retry_s = retry_s
        self._embedding_dtype = np.dtype(embedding_dtype)
        self._seq: dict[tuple[str, int], int] = {}  # last sequence number sent per session
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------- plumbing
    @property
    def _stub(self) -> pb_grpc.CoordinatorStub:
        """The stub of this process's channel: a forked child (a DataLoader worker) opens its
        own instead of using the parent's."""
        if self._pid != os.getpid():
            with self._connect_lock:
                if self._pid != os.getpid():
                    if self._credentials is not None:
                        channel = grpc.secure_channel(
                            self.address, self._credentials, options=CHANNEL_OPTIONS
                        )
                    else:
                        channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
                    self._channel, self._stub_ = channel, pb_grpc.CoordinatorStub(channel)
                    self._pid = os.getpid()
        return self._stub_

    def _call(self, name: str, attempt: Callable[[], T]) -> T:
        """Run one idempotent call, retrying while the coordinator is unreachable."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.05
        while True:
            try:
                return attempt()
            except grpc.RpcError as err:
                code = err.code()
                if code not in RETRYABLE or _UNTRUSTED_CERTIFICATE in (err.details() or ""):
                    raise self._permanent(err) from None
                if time.monotonic() + delay > deadline:
                    raise Unavailable(
                        f"{name}: coordinator at {self.address} unavailable for "
                        f"{self.retry_s:.0f} s: {err.details()}"
                    ) from None
                log.info("%s: %s; retrying in %.2f s", name, code.name, delay)
                time.sleep(delay * (0.5 + random.random() / 2))
                delay = min(delay * 2, 2.0)

    def _permanent(self, err: grpc.RpcError) -> CrestError:
        """The crest error of a failure that retrying cannot cure."""
        details = err.details() or ""
        if _UNTRUSTED_CERTIFICATE in details:
            return Unauthenticated(
                f"the coordinator at {self.address} presented a TLS certificate that tls_ca "
                f"does not verify (wrong CA, or a certificate not for this host): {details}"
            )
        return error_for_status(err.code().name, details)

    def _unary(self, name: str, request, timeout: float | None = None):
        method = getattr(self._stub, name)
        return self._call(
            name,
            lambda: method(request, timeout=timeout or self.call_timeout_s,
                           metadata=self._metadata),
        )  # fmt: skip

    # --------------------------------------------------------------------- coordinator
    def create_job(self, config: JobConfig, labels: np.ndarray, job_id: str | None = None) -> str:
        labels = np.asarray(labels, dtype=np.int64)

        def messages() -> Iterator[pb.CreateJobRequest]:
            header = pb.JobHeader(job_id=job_id or "", config=convert.config_to_pb(config))
            yield pb.CreateJobRequest(header=header)
            for start in range(0, len(labels), LABELS_PER_CHUNK):
                chunk = labels[start : start + LABELS_PER_CHUNK]
                yield pb.CreateJobRequest(labels=convert.to_array(chunk))

        reply = self._call(
            "CreateJob",
            lambda: self._stub.CreateJob(messages(), timeout=self.call_timeout_s,
                                         metadata=self._metadata),
        )  # fmt: skip
        return reply.job_id

    def open_session(self, job_id: str, rank: int) -> SessionInfo:
        reply = self._unary("OpenSession", pb.OpenSessionRequest(job_id=job_id, rank=rank))
        info = convert.session_from_pb(reply)
        with self._lock:
            self._seq[(job_id, rank)] = info.committed_seq
        return info

    def get_region(self, job_id: str, rank: int, step: int) -> RegionView:
        reply = self._unary("GetRegion", pb.GetRegionRequest(job_id=job_id, rank=rank, step=step))
        return convert.region_from_pb(reply)

    def submit_embeddings(
        self,
        job_id: str,
        rank: int,
        region_id: int,
        indices: np.ndarray,
        embeddings: np.ndarray,
        losses: np.ndarray,
    ) -> None:
        embeddings = np.asarray(embeddings, dtype=self._embedding_dtype)
        rows = convert.rows_per_chunk(embeddings.shape[1], embeddings.dtype.itemsize)
        if (job_id, rank) not in self._seq:
            self.open_session(job_id, rank)  # learns the last committed sequence number
        with self._lock:
            first = self._seq[(job_id, rank)]
            spans = [slice(start, start + rows) for start in range(0, len(indices), rows)]
            chunks = [
                pb.EmbeddingChunk(
                    job_id=job_id,
                    rank=rank,
                    region_id=region_id,
                    seq=seq,
                    indices=convert.to_array(np.asarray(indices[span], dtype=np.int64)),
                    embeddings=convert.to_array(embeddings[span]),
                    losses=convert.to_array(np.asarray(losses[span], dtype=np.float32)),
                )
                for seq, span in enumerate(spans, first + 1)
            ]
            self._seq[(job_id, rank)] = first + len(chunks)

        retry = False

        def attempt() -> pb.UploadAck:
            nonlocal retry
            pending = chunks
            if retry:  # after a broken stream, resend only what was not committed
                committed = self._unary(
                    "OpenSession", pb.OpenSessionRequest(job_id=job_id, rank=rank)
                ).committed_seq
                pending = [c for c in chunks if c.seq > committed]
            retry = True
            return self._stub.UploadEmbeddings(
                iter(pending), timeout=self.call_timeout_s, metadata=self._metadata
            )

        self._call("UploadEmbeddings", attempt)

    def report_check(self, job_id: str, rank: int, report: CheckReport) -> CheckDecision:
        reply = self._unary("ReportCheck", convert.report_to_pb(job_id, rank, report))
        return convert.decision_from_pb(reply)

    def job_status(self, job_id: str) -> JobStatus:
        reply = self._unary("GetJobStatus", pb.JobStatusRequest(job_id=job_id))
        return JobStatus.model_validate_json(reply.json)

    def close(self) -> None:
        if self._pid == os.getpid():
            self._channel.close()
            self._pid = -1

    def __enter__(self) -> RemoteCoordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
