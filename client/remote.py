"""The remote coordinator: the :class:`Coordinator` interface over gRPC.

Every RPC is idempotent (see ``proto/v1/coordinator.proto``), so every call is retried with
exponential backoff while the coordinator is unreachable or restarting; a trainer rides out a
coordinator restart by itself. Job creation is made idempotent by naming the job: without a
caller's id, :meth:`RemoteCoordinator.create_job` picks a random one and sends it on every
attempt, so a retry after a lost reply finds the job instead of creating another. Uploads are
split into chunks under the message limit and numbered, and sent in streams of at most
``MAX_STREAM_CHUNKS`` chunks, each committed all or nothing; after a broken stream the client
asks which chunks were committed and resends only the rest. A region over one message comes
in pages (one call each, reassembled here); any other region in one call.

Create one client per process, after any fork (a DataLoader's workers must not inherit a
channel); it is thread-safe.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc
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
from crest.proto.errors import (
    CrestError,
    FailedPrecondition,
    Unauthenticated,
    Unavailable,
    error_for_status,
)
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
    # gRPC's own reconnect backoff (1 s growing 1.6x to 120 s) would decide when a call
    # after an outage can succeed: a 70 s outage cost 40 s more. Capped at 1 s, the client's
    # retry policy (retry_s) is what bounds an outage. min_reconnect_backoff_ms is also the
    # shortest time gRPC gives one connection attempt (TCP and TLS handshake).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.min_reconnect_backoff_ms", 2000),
]
WARN_EVERY_S = 5.0  # while retrying, one WARNING line per this many seconds of outage
MAX_RETRY_DELAY_S = 0.5  # longest sleep between two attempts of a call
LABELS_PER_CHUNK = (convert.MAX_MESSAGE_BYTES - convert.MESSAGE_OVERHEAD_BYTES) // 8
CHUNK_BYTES = convert.MAX_MESSAGE_BYTES - convert.MESSAGE_OVERHEAD_BYTES  # of a model or weights
# Fetches of a paged region's pages from the first, should the region change between pages
# (a region changes a few times in its life: selected, ended by a check; a fetch takes
# milliseconds per page).
MAX_REGION_FETCHES = 8


class RemoteCoordinator:
    """A client of ``crest serve``.

    Args:
        address: ``host:port`` of the coordinator.
        token: sent as ``authorization: Bearer <token>`` when set.
        tls_ca: PEM file of the CA that signed the server's certificate (enables TLS).
        call_timeout_s: deadline of each call (calls that wait for peers or selection wait
            at most this long, then retry).
        connect_timeout_s: how long the first call waits for a connection before it fails
            with :class:`Unavailable` naming the address (a wrong address fails fast).
        retry_s: once the coordinator has been reached, how long to keep retrying while it
            is unreachable (e.g. restarting) before giving up with :class:`Unavailable`; a
            WARNING is logged every few seconds meanwhile.
        embedding_dtype: ``"float32"`` or ``"float16"`` on the wire (half the bytes; the
            coordinator computes in float32 either way).

    Raises:
        ValueError: an unknown ``embedding_dtype`` or a timeout that is not positive.
    """

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        tls_ca: str | Path | None = None,
        call_timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        retry_s: float = 300.0,
        embedding_dtype: str = "float32",
    ) -> None:
        if embedding_dtype not in ("float32", "float16"):
            raise ValueError(f"embedding_dtype must be float32 or float16, got {embedding_dtype}")
        for name, value in [
            ("call_timeout_s", call_timeout_s),
            ("connect_timeout_s", connect_timeout_s),
            ("retry_s", retry_s),
        ]:
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value}")  # fmt: skip
        self._tls_ca = Path(tls_ca).read_bytes() if tls_ca is not None else None
        self._credentials = (
            grpc.ssl_channel_credentials(self._tls_ca) if self._tls_ca is not None else None
        )
        self._pid = -1
        self._connect_lock = threading.Lock()
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.address = address
        self.call_timeout_s = call_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_s = retry_s
        # Set once any process of this client has reached the coordinator: from then on an
        # unreachable coordinator is an outage to ride out, not a wrong address.
        self._reached = False
        self._embedding_dtype = np.dtype(embedding_dtype)
        self._seq: dict[tuple[str, int], int] = {}  # last sequence number sent per session
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------- plumbing
    @property
    def _stub(self) -> pb_grpc.CoordinatorStub:
        """The stub of this process's channel: a forked child (a DataLoader worker) opens its
        own instead of using the parent's. The first connection must succeed within
        ``connect_timeout_s``."""
        if self._pid != os.getpid():
            with self._connect_lock:
                if self._pid != os.getpid():
                    if self._credentials is not None:
                        channel = grpc.secure_channel(
                            self.address, self._credentials, options=CHANNEL_OPTIONS
                        )
                    else:
                        channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
                    if not self._reached:
                        self._first_connection(channel)
                    self._channel, self._stub_ = channel, pb_grpc.CoordinatorStub(channel)
                    self._pid = os.getpid()
        return self._stub_

    def _first_connection(self, channel: grpc.Channel) -> None:
        """Wait until ``channel`` connects, or close it and fail with a precise error."""
        ready = grpc.channel_ready_future(channel)
        try:
            ready.result(timeout=self.connect_timeout_s)
        except grpc.FutureTimeoutError:
            ready.cancel()
            channel.close()
            untrusted = self._untrusted_certificate()
            if untrusted is not None:  # no amount of waiting cures that
                raise Unauthenticated(
                    f"the coordinator at {self.address} presented a TLS certificate that "
                    f"tls_ca does not verify (wrong CA, or a certificate not for this host): "
                    f"{untrusted}"
                ) from None
            tls = "with TLS (tls_ca=...)" if self._credentials is not None else "without TLS"
            raise Unavailable(
                f"could not connect to the crest coordinator at {self.address} within "
                f"{self.connect_timeout_s:g} s: check that `crest serve` runs there and that "
                f"the host and port are right (its gRPC port, 50051 unless --port says "
                f"otherwise; not the dashboard's), that no firewall blocks it, and that it "
                f"serves {tls} as this client expects"
            ) from None
        self._reached = True

    def _untrusted_certificate(self) -> str | None:
        """Why the server's certificate fails verification against ``tls_ca``, if it does.

        A handshake of our own: the ready future never says why a channel did not connect,
        and a failed call names only the last address gRPC tried (``localhost`` is ::1 and
        127.0.0.1), so its message is no reliable witness.
        """
        if self._tls_ca is None:
            return None
        host, _, port = self.address.rpartition(":")
        host = host.strip("[]")
        context = ssl.create_default_context(cadata=self._tls_ca.decode())
        context.set_alpn_protocols(["h2"])
        try:
            addresses = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            return None
        for *_, sockaddr in addresses:
            ip, port_number = str(sockaddr[0]), int(sockaddr[1])
            try:
                with (
                    socket.create_connection((ip, port_number), timeout=2.0) as raw,
                    context.wrap_socket(raw, server_hostname=host),
                ):
                    return None  # verified: something else is wrong
            except ssl.SSLCertVerificationError as err:
                return err.verify_message or str(err)
            except OSError:
                continue  # nothing listens at this address: try the next
        return None

    def _call(self, name: str, attempt: Callable[[], T]) -> T:
        """Run one idempotent call, retrying while the coordinator is unreachable.

        Retries last up to ``retry_s``, with a WARNING every :data:`WARN_EVERY_S` seconds that
        names the address and the outage so far.
        """
        started = time.monotonic()
        deadline = started + self.retry_s
        warn_at = started  # the first retry warns: a trainer should not stall silently
        delay = 0.05
        while True:
            try:
                return attempt()
            except grpc.RpcError as err:
                code = err.code()
                if code not in RETRYABLE or _UNTRUSTED_CERTIFICATE in (err.details() or ""):
                    raise self._permanent(err) from None
                now = time.monotonic()
                if now + delay > deadline:
                    raise Unavailable(
                        f"{name}: coordinator at {self.address} unavailable for "
                        f"{self.retry_s:.0f} s: {err.details()}"
                    ) from None
                if now >= warn_at:
                    log.warning(
                        "%s: crest coordinator at %s unavailable for %.1f s so far (%s: %s); "
                        "retrying for up to %.0f s",
                        name, self.address, now - started, code.name, err.details(),
                        self.retry_s,
                    )  # fmt: skip
                    warn_at = now + WARN_EVERY_S
                time.sleep(delay * (0.5 + random.random() / 2))
                # Capped at 0.5 s: a coordinator that is back answers within about a second
                # (a 2 s cap left trainers asleep up to 2.4 s after a restart, measured by
                # `crest bench faults`); a retry costs the coordinator one refused connection.
                delay = min(delay * 2, MAX_RETRY_DELAY_S)

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
        """Create a job on the coordinator, or find the job ``job_id`` names.

        As :meth:`crest.proto.contract.Coordinator.create_job`: ``labels`` are ``(N,)``
        integers in ``[0, num_classes)`` (numpy or a CPU tensor; map string or sparse labels
        with ``np.unique(raw, return_inverse=True)``), every class has an example unless
        ``config.allow_empty_classes``, and with ``job_id`` the call is idempotent, so a
        restarted trainer passes the id it saved to find its job again (with a Redis store,
        jobs outlive coordinator restarts too). Without ``job_id`` the client picks a random
        one and sends it with every retry, so one call creates at most one job.

        Raises:
            InvalidArgument: an invalid config, ``job_id`` or labels.
            FailedPrecondition: ``job_id`` exists with another config or other labels.
            Unavailable: no coordinator reachable at :attr:`address` within
                ``connect_timeout_s`` (first call) or ``retry_s`` (later).
        """
        config, labels = requests.job(config, labels)  # as the in-process coordinator does
        # Named here, so that every retry of this call names the same job: one call creates
        # at most one job.
        job_id = job_id or uuid.uuid4().hex

        def messages() -> Iterator[pb.CreateJobRequest]:
            header = pb.JobHeader(job_id=job_id, config=convert.config_to_pb(config))
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
        """The region holding ``step``: one call for a region that fits one message, else
        one per page, reassembled. Should the region move on between two pages (a check
        ended it, its selection finished), the pages are fetched again from the first."""
        for _ in range(MAX_REGION_FETCHES):
            request = pb.GetRegionRequest(job_id=job_id, rank=rank, step=step, page=0)
            first = self._unary("GetRegion", request)
            pages = [first]
            for page in range(1, first.num_pages):
                request = pb.GetRegionRequest(job_id=job_id, rank=rank, step=step, page=page,
                                              region_id=first.region_id)  # fmt: skip
                try:
                    reply = self._unary("GetRegion", request)
                except FailedPrecondition:  # the step is in another region by now
                    break
                if not convert.same_region(first, reply):  # e.g. its selection finished
                    break
                pages.append(reply)
            else:
                return convert.region_from_pb(*pages)
        raise Unavailable(
            f"GetRegion: region of step {step} changed while its pages were fetched, "
            f"{MAX_REGION_FETCHES} times in a row"
        )

    def submit_embeddings(
        self,
        job_id: str,
        rank: int,
        region_id: int,
        indices: np.ndarray,
        embeddings: np.ndarray,
        losses: np.ndarray,
    ) -> None:
        # Checked whole, as the in-process coordinator does, before it is split into chunks.
        indices, embeddings, losses = requests.upload(
            indices, embeddings, losses, self._embedding_dtype
        )
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
                    indices=convert.to_array(indices[span]),
                    embeddings=convert.to_array(embeddings[span]),
                    losses=convert.to_array(losses[span]),
                )
                for seq, span in enumerate(spans, first + 1)
            ]
            self._seq[(job_id, rank)] = first + len(chunks)
        try:
            for start in range(0, len(chunks), convert.MAX_STREAM_CHUNKS):
                self._upload(job_id, rank, chunks[start : start + convert.MAX_STREAM_CHUNKS])
        except CrestError:
            # A rejected stream committed none of its numbers: the next upload asks which
            # were committed instead of continuing after numbers the coordinator never took.
            with self._lock:
                self._seq.pop((job_id, rank), None)
            raise

    def _upload(self, job_id: str, rank: int, chunks: list[pb.EmbeddingChunk]) -> None:
        """Send one stream of chunks (committed all or nothing), retrying until it is in."""
        retry = False

        def attempt() -> None:
            nonlocal retry
            pending = chunks
            if retry:  # after a broken stream, resend only what was not committed
                committed = self._unary(
                    "OpenSession", pb.OpenSessionRequest(job_id=job_id, rank=rank)
                ).committed_seq
                pending = [c for c in chunks if c.seq > committed]
            retry = True
            for chunk in pending:  # so that a cut-off stream commits nothing
                chunk.stream_chunks = len(pending)
            if pending:  # else the lost reply was the only thing missing
                self._stub.UploadEmbeddings(
                    iter(pending), timeout=self.call_timeout_s, metadata=self._metadata
                )

        self._call("UploadEmbeddings", attempt)

    def publish_model(
        self,
        job_id: str,
        artifact: bytes,
        inputs: np.ndarray,
        num_weights: int,
        trainer_side: str = "",
    ) -> None:
        """As :meth:`crest.proto.contract.Coordinator.publish_model`, in chunks under the
        message limit (one stream: the coordinator takes it whole or not at all)."""
        inputs = requests.model(artifact, inputs)

        def messages() -> Iterator[pb.ModelChunk]:
            header = pb.ModelHeader(
                job_id=job_id, artifact_bytes=len(artifact), input_shape=list(inputs.shape),
                trainer_side=trainer_side, num_weights=num_weights,
            )  # fmt: skip
            yield pb.ModelChunk(header=header)
            if trainer_side:
                return
            for start in range(0, len(artifact), CHUNK_BYTES):
                yield pb.ModelChunk(artifact=artifact[start : start + CHUNK_BYTES])
            rows = max(1, CHUNK_BYTES // max(1, inputs[:1].nbytes))
            for start in range(0, len(inputs), rows):
                yield pb.ModelChunk(inputs=convert.to_array(inputs[start : start + rows]))

        self._call(
            "PublishModel",
            lambda: self._stub.PublishModel(messages(), timeout=self.call_timeout_s,
                                            metadata=self._metadata),
        )  # fmt: skip

    def publish_weights(self, job_id: str, version: int, weights: np.ndarray) -> None:
        """As :meth:`crest.proto.contract.Coordinator.publish_weights`: ``weights`` float32,
        or bfloat16 as uint16 (:func:`crest.proto.convert.encode_weights`), in chunks."""
        weights = np.ascontiguousarray(weights)
        per_chunk = CHUNK_BYTES // weights.dtype.itemsize

        def messages() -> Iterator[pb.WeightsChunk]:
            for start in range(0, len(weights), per_chunk):
                yield pb.WeightsChunk(
                    job_id=job_id, version=version, size=len(weights), offset=start,
                    weights=convert.to_array(weights[start : start + per_chunk]),
                )  # fmt: skip

        self._call(
            "PublishWeights",
            lambda: self._stub.PublishWeights(messages(), timeout=self.call_timeout_s,
                                              metadata=self._metadata),
        )  # fmt: skip

    def report_check(self, job_id: str, rank: int, report: CheckReport) -> CheckDecision:
        reply = self._unary("ReportCheck", convert.report_to_pb(job_id, rank, report))
        return convert.decision_from_pb(reply)

    def job_status(self, job_id: str) -> JobStatus:
        reply = self._unary("GetJobStatus", pb.JobStatusRequest(job_id=job_id))
        return convert.status_from_pb(reply.status)

    def close(self) -> None:
        if self._pid == os.getpid():
            self._channel.close()
            self._pid = -1

    def __enter__(self) -> RemoteCoordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
