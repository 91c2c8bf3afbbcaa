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

Coordinator replicas: given several addresses (``"a:50051,b:50051"`` or a list), the client
sends each job's calls to the replica that owns the job. A replica that does not own the job
answers UNAVAILABLE with the owner's address in the ``crest-owner`` trailing metadata, and the
client goes there; an unreachable replica sends the client on to the next address. A dead
owner's jobs are taken over by another replica once its lease expires, so a trainer rides out
a replica's death as it rides out a restart: by retrying.

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
from collections.abc import Callable, Iterator, Sequence
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
    OWNER_METADATA,
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
        address: ``host:port`` of the coordinator; with coordinator replicas, several (a list,
            or one string separated by commas): any of them, or one address in front of them
            all. Calls about a job go to the replica that owns it.
        token: sent as ``authorization: Bearer <token>`` when set.
        tls_ca: PEM file of the CA that signed the server's certificate (enables TLS).
        call_timeout_s: deadline of each call (calls that wait for peers or selection wait
            at most this long, then retry).
        connect_timeout_s: how long the first call waits for a connection before it fails
            with :class:`Unavailable` naming the address (a wrong address fails fast).
        retry_s: once the coordinator has been reached, how long to keep retrying while it
            is unreachable (e.g. restarting, or a dead replica's jobs not yet taken over)
            before giving up with :class:`Unavailable`; a WARNING is logged every few seconds
            meanwhile.
        embedding_dtype: ``"float32"`` or ``"float16"`` on the wire (half the bytes; the
            coordinator computes in float32 either way).

    Raises:
        ValueError: an unknown ``embedding_dtype``, a timeout that is not positive, or no
            address.
    """

    def __init__(
        self,
        address: str | Sequence[str],
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
        parts = address.split(",") if isinstance(address, str) else list(address)
        self.addresses = [part.strip() for part in parts if part.strip()]
        if not self.addresses:
            raise ValueError(f"no coordinator address in {address!r}")
        self.address = self.addresses[0]  # where calls go that no owner is known for
        self._owners: dict[str, str] = {}  # job id -> the replica that owns it
        self._channels: dict[str, tuple[grpc.Channel, pb_grpc.CoordinatorStub]] = {}
        self.call_timeout_s = call_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_s = retry_s
        # Set once any process of this client has reached the coordinator: from then on an
        # unreachable coordinator is an outage to ride out, not a wrong address.
        self._reached = False
        self._embedding_dtype = np.dtype(embedding_dtype)
        self._seq: dict[tuple[str, int], int] = {}  # last sequence number sent per session
        self._world_size: dict[str, int] = {}  # per job, as its sessions opened
        self._lock = threading.Lock()

    # ----------------------------------------------------------------------- plumbing
    def _stub_at(self, address: str) -> pb_grpc.CoordinatorStub:
        """The stub of this process's channel to ``address``: a forked child (a DataLoader
        worker) opens its own instead of using the parent's. Until some address has been
        reached, a new channel must connect within ``connect_timeout_s``."""
        with self._connect_lock:
            if self._pid != os.getpid():  # a new process: the parent's channels are not ours
                self._channels, self._pid = {}, os.getpid()
            if address not in self._channels:
                if self._credentials is not None:
                    channel = grpc.secure_channel(
                        address, self._credentials, options=CHANNEL_OPTIONS
                    )
                else:
                    channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
                if not self._reached:
                    self._first_connection(channel, address)
                self._channels[address] = (channel, pb_grpc.CoordinatorStub(channel))
            return self._channels[address][1]

    @property
    def _stub(self) -> pb_grpc.CoordinatorStub:
        """The stub of the default address (:attr:`address`)."""
        return self._stub_at(self.address)

    def _first_connection(self, channel: grpc.Channel, address: str) -> None:
        """Wait until ``channel`` connects, or close it and fail with a precise error."""
        ready = grpc.channel_ready_future(channel)
        try:
            ready.result(timeout=self.connect_timeout_s)
        except grpc.FutureTimeoutError:
            ready.cancel()
            channel.close()
            untrusted = self._untrusted_certificate(address)
            if untrusted is not None:  # no amount of waiting cures that
                raise Unauthenticated(
                    f"the coordinator at {address} presented a TLS certificate that "
                    f"tls_ca does not verify (wrong CA, or a certificate not for this host): "
                    f"{untrusted}"
                ) from None
            tls = "with TLS (tls_ca=...)" if self._credentials is not None else "without TLS"
            raise Unavailable(
                f"could not connect to the crest coordinator at {address} within "
                f"{self.connect_timeout_s:g} s: check that `crest serve` runs there and that "
                f"the host and port are right (its gRPC port, 50051 unless --port says "
                f"otherwise; not the dashboard's), that no firewall blocks it, and that it "
                f"serves {tls} as this client expects"
            ) from None
        self._reached = True

    def _untrusted_certificate(self, address: str) -> str | None:
        """Why the server's certificate fails verification against ``tls_ca``, if it does.

        A handshake of our own: the ready future never says why a channel did not connect,
        and a failed call names only the last address gRPC tried (``localhost`` is ::1 and
        127.0.0.1), so its message is no reliable witness.
        """
        if self._tls_ca is None:
            return None
        host, _, port = address.rpartition(":")
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

    def _call(
        self,
        name: str,
        attempt: Callable[[pb_grpc.CoordinatorStub], T],
        job_id: str | None = None,
    ) -> T:
        """Run one idempotent call, retrying while the coordinator is unreachable.

        ``attempt`` gets the stub of the replica to ask: the owner of ``job_id`` when known,
        else :attr:`address`. A redirect (UNAVAILABLE naming the owner) goes to the owner at
        once; an unreachable replica sends the next attempt to the next address. Retries last
        up to ``retry_s``, with a WARNING every :data:`WARN_EVERY_S` seconds that names the
        address and the outage so far.
        """
        started = time.monotonic()
        deadline = started + self.retry_s
        warn_at = started  # the first retry warns: a trainer should not stall silently
        delay = 0.05
        unreached: set[str] = set()  # never connected to, in this call
        redirected: set[str] = set()  # owners this call was sent to
        while True:
            address = self._owners.get(job_id, self.address) if job_id else self.address
            try:
                stub = self._stub_at(address)
            except Unavailable as err:  # the first connection failed: fail once none is left
                unreached.add(address)
                if unreached.issuperset(self.addresses):
                    if len(self.addresses) == 1:
                        raise
                    raise Unavailable(
                        f"none of the coordinator replicas {', '.join(self.addresses)} "
                        f"answered; the last one: {err}"
                    ) from None
                self._move_on(job_id, address)
                continue
            try:
                return attempt(stub)
            except grpc.RpcError as err:
                code = err.code()
                if code not in RETRYABLE or _UNTRUSTED_CERTIFICATE in (err.details() or ""):
                    raise self._permanent(err, address) from None
                owner = redirect_owner(err)
                if owner and job_id:
                    self._owners[job_id] = owner
                    if owner not in redirected:  # a live owner answers now: no pause
                        redirected.add(owner)
                        continue
                elif len(self.addresses) > 1 or job_id in self._owners:
                    self._move_on(job_id, address)
                now = time.monotonic()
                if now + delay > deadline:
                    raise Unavailable(
                        f"{name}: coordinator at {address} unavailable for "
                        f"{self.retry_s:.0f} s: {err.details()}"
                    ) from None
                if now >= warn_at:
                    log.warning(
                        "%s: crest coordinator at %s unavailable for %.1f s so far (%s: %s); "
                        "retrying for up to %.0f s",
                        name, address, now - started, code.name, err.details(),
                        self.retry_s,
                    )  # fmt: skip
                    warn_at = now + WARN_EVERY_S
                time.sleep(delay * (0.5 + random.random() / 2))
                # Capped at 0.5 s: a coordinator that is back answers within about a second
                # (a 2 s cap left trainers asleep up to 2.4 s after a restart, measured by
                # `crest bench faults`); a retry costs the coordinator one refused connection.
                delay = min(delay * 2, MAX_RETRY_DELAY_S)

    def _move_on(self, job_id: str | None, address: str) -> None:
        """After ``address`` failed: forget it as the job's owner, and make the next address
        the default when it was the default."""
        if job_id is not None and self._owners.get(job_id) == address:
            del self._owners[job_id]
        if self.address == address and address in self.addresses:
            position = self.addresses.index(address)
            self.address = self.addresses[(position + 1) % len(self.addresses)]

    def _permanent(self, err: grpc.RpcError, address: str) -> CrestError:
        """The crest error of a failure that retrying cannot cure."""
        details = err.details() or ""
        if _UNTRUSTED_CERTIFICATE in details:
            return Unauthenticated(
                f"the coordinator at {address} presented a TLS certificate that tls_ca "
                f"does not verify (wrong CA, or a certificate not for this host): {details}"
            )
        return error_for_status(err.code().name, details)

    def _unary(self, name: str, request, timeout: float | None = None):
        """One unary call about ``request.job_id`` (every unary RPC names its job)."""
        return self._call(
            name,
            lambda stub: getattr(stub, name)(request, timeout=timeout or self.call_timeout_s,
                                             metadata=self._metadata),
            request.job_id,
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
            lambda stub: stub.CreateJob(messages(), timeout=self.call_timeout_s,
                                        metadata=self._metadata),
            job_id,
        )  # fmt: skip
        return reply.job_id

    def open_session(self, job_id: str, rank: int) -> SessionInfo:
        reply = self._unary("OpenSession", pb.OpenSessionRequest(job_id=job_id, rank=rank))
        info = convert.session_from_pb(reply)
        with self._lock:
            self._seq[(job_id, rank)] = info.committed_seq
            self._world_size[job_id] = info.world_size
        return info

    def get_region(self, job_id: str, rank: int, step: int) -> RegionView:
        """The region holding ``step``: one call for a region that fits one message, else
        one per page, reassembled. Should the region move on between two pages (a check
        ended it, its selection finished), the pages are fetched again from the first."""
        return convert.region_from_pb(*self._region_pages(job_id, rank, 1, step))

    def get_regions(
        self, job_id: str, first_rank: int, num_ranks: int, step: int
    ) -> list[RegionView]:
        """The views of ``num_ranks`` ranks from ``first_rank`` of the region holding
        ``step``, in pages as :meth:`get_region`'s."""
        pages = self._region_pages(job_id, first_rank, num_ranks, step)
        return convert.regions_from_pb(num_ranks, *pages)

    def _region_pages(self, job_id: str, rank: int, num_ranks: int, step: int) -> list[pb.Region]:
        def ask(page: int, region_id: int = 0) -> pb.GetRegionRequest:
            return pb.GetRegionRequest(job_id=job_id, rank=rank, step=step, page=page,
                                       region_id=region_id, num_ranks=num_ranks)  # fmt: skip

        for _ in range(MAX_REGION_FETCHES):
            first = self._unary("GetRegion", ask(0))
            pages = [first]
            for page in range(1, first.num_pages):
                try:
                    reply = self._unary("GetRegion", ask(page, first.region_id))
                except FailedPrecondition:  # the step is in another region by now
                    break
                if not convert.same_region(first, reply):  # e.g. its selection finished
                    break
                pages.append(reply)
            else:
                return pages
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
        self._send_upload(job_id, rank, region_id, indices, embeddings, losses, ())

    def submit_shared_embeddings(
        self,
        job_id: str,
        first_rank: int,
        region_id: int,
        parts: Sequence[requests.RankUpload | None],
    ) -> None:
        """As :meth:`crest.proto.contract.Coordinator.submit_shared_embeddings`: every part
        checked, then all rows in chunks and streams as one rank's upload, each chunk saying
        whose rows it holds (rank_rows), sequenced as ``first_rank``'s chunks."""
        indices, embeddings, losses, rank_rows = requests.shared_upload(
            parts, self._embedding_dtype
        )
        # Checked before the first stream too: a later stream's rejection could not undo it.
        if job_id not in self._world_size:
            self.open_session(job_id, first_rank)
        requests.shared_ranks(first_rank, len(parts), self._world_size[job_id])
        self._send_upload(job_id, first_rank, region_id, indices, embeddings, losses, rank_rows)

    def _send_upload(
        self,
        job_id: str,
        rank: int,
        region_id: int,
        indices: np.ndarray,
        embeddings: np.ndarray,
        losses: np.ndarray,
        rank_rows: tuple[int, ...],
    ) -> None:
        """A checked upload sent by ``rank``, in chunks (:func:`convert.upload_chunks`) and
        streams of at most MAX_STREAM_CHUNKS."""
        if (job_id, rank) not in self._seq:
            self.open_session(job_id, rank)  # learns the last committed sequence number
        with self._lock:
            first = self._seq[(job_id, rank)]
            chunks = convert.upload_chunks(
                job_id, rank, region_id, first + 1, indices, embeddings, losses, rank_rows
            )
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

        def attempt(stub: pb_grpc.CoordinatorStub) -> None:
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
                stub.UploadEmbeddings(
                    iter(pending), timeout=self.call_timeout_s, metadata=self._metadata
                )

        self._call("UploadEmbeddings", attempt, job_id)

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
            lambda stub: stub.PublishModel(messages(), timeout=self.call_timeout_s,
                                           metadata=self._metadata),
            job_id,
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
            lambda stub: stub.PublishWeights(messages(), timeout=self.call_timeout_s,
                                             metadata=self._metadata),
            job_id,
        )  # fmt: skip

    def report_check(self, job_id: str, rank: int, report: CheckReport) -> CheckDecision:
        reply = self._unary("ReportCheck", convert.report_to_pb(job_id, rank, report))
        return convert.decision_from_pb(reply)

    def job_status(self, job_id: str) -> JobStatus:
        reply = self._unary("GetJobStatus", pb.JobStatusRequest(job_id=job_id))
        return convert.status_from_pb(reply.status)

    def close(self) -> None:
        with self._connect_lock:
            if self._pid == os.getpid():
                for channel, _ in self._channels.values():
                    channel.close()
            self._channels, self._pid = {}, -1

    def __enter__(self) -> RemoteCoordinator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def redirect_owner(err: grpc.RpcError) -> str:
    """The owner's address a replica sent with a redirect (``crest-owner``), or ''."""
    trailing = getattr(err, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == OWNER_METADATA:
            return value.decode() if isinstance(value, bytes) else str(value)
    return ""
