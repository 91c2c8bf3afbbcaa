"""The gRPC coordinator: ``crest.v1.Coordinator`` over a :class:`JobManager`.

Each handler validates and converts its request, calls the manager, and maps errors through
:func:`crest.proto.errors.status_of`: a client sees INVALID_ARGUMENT, NOT_FOUND,
FAILED_PRECONDITION, RESOURCE_EXHAUSTED, UNAUTHENTICATED, DATA_LOSS or UNAVAILABLE (the only
one worth retrying), never UNKNOWN. With coordinator replicas, every call naming a job first
claims it (:meth:`JobManager.claim`); a job another replica owns fails with UNAVAILABLE and the
owner's ``host:port`` in the ``crest-owner`` trailing metadata.
Requests are parsed by our own deserializers so that malformed bytes become INVALID_ARGUMENT
too. Message size limits are set explicitly; a configured token guards every RPC, health and
reflection included; the health service reports SERVING only while the store and the selector
answer and every job's state can be stored. Given an :class:`RpcTelemetry`, the server counts
its calls per method and final status and times them (:class:`RpcMetricsInterceptor`).
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from crest.proto import convert
from crest.proto.errors import (
    OWNER_METADATA,
    CrestError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NotOwner,
    ResourceExhausted,
    invalid_fields,
    status_of,
)
from crest.proto.v1 import coordinator_pb2 as pb
from crest.service.job import UploadChunk
from crest.service.manager import JobManager, check_job_id
from crest.service.telemetry import RpcTelemetry

log = logging.getLogger(__name__)

_SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["Coordinator"]
SERVICE = _SERVICE_DESCRIPTOR.full_name  # "crest.v1.Coordinator"
# Room above the 4 MiB message limit for framing, so that a full-size chunk is accepted.
RECEIVE_LIMIT = convert.MAX_MESSAGE_BYTES + convert.MESSAGE_OVERHEAD_BYTES
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", RECEIVE_LIMIT),
    ("grpc.max_send_message_length", RECEIVE_LIMIT),
]
HEALTH_PERIOD_S = 1.0
# The most one JobListing takes: two strings of at most 128 characters (4 bytes each in
# UTF-8), six numbers, and their tags and lengths.
_MAX_LISTING_BYTES = 2 * (128 * 4 + 3) + 6 * 11 + 3
# Regions of fewer candidates are encoded on the event loop (cheaper than a thread's hop).
_INLINE_REGION_ROWS = 1 << 16
# The RPCs RpcMetricsInterceptor records: every one with a single reply (all of them today).
_OBSERVED = frozenset(m.name for m in _SERVICE_DESCRIPTOR.methods if not m.server_streaming)

# gRPC's handler factory for each (request streaming, reply streaming) kind of RPC.
_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


@dataclass(frozen=True)
class _Malformed:
    """What a request deserializer yields for bytes that are no valid message."""

    error: str


def _parser(message_type: type[Message]) -> Callable[[bytes], Message | _Malformed]:
    def parse(raw: bytes) -> Message | _Malformed:
        try:
            return message_type.FromString(raw)
        except (DecodeError, ValueError, RuntimeError) as err:  # malformed wire data
            return _Malformed(f"malformed {message_type.__name__}: {err}")

    return parse


def _checked(request: Any) -> Any:
    if isinstance(request, _Malformed):
        raise InvalidArgument(request.error)
    return request


def _handler(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Map crest errors (and invalid input) to their gRPC status; nothing escapes as UNKNOWN."""

    @functools.wraps(method)
    async def wrapper(
        self: CoordinatorService, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        try:
            return await method(self, request, context)
        except NotOwner as err:  # another replica owns the job: the client goes there
            owner = ((OWNER_METADATA, err.owner),) if err.owner else ()
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err), trailing_metadata=owner)
        except CrestError as err:
            await context.abort(grpc.StatusCode[status_of(err)], str(err))
        except ValidationError as err:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, str(invalid_fields("request", err))
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}")

    return wrapper


def _timeout(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else max(0.0, remaining - 0.05)


class CoordinatorService:
    """The servicer: a few lines per RPC around the manager."""

    def __init__(self, manager: JobManager) -> None:
        self.manager = manager

    @_handler
    async def CreateJob(
        self, requests: AsyncIterator[pb.CreateJobRequest], context: grpc.aio.ServicerContext
    ) -> pb.CreateJobResponse:
        header: pb.JobHeader | None = None
        chunks: list[np.ndarray] = []
        total = 0
        async for request in requests:
            request = _checked(request)
            part = request.WhichOneof("part")
            if header is None:
                if part != "header":
                    raise InvalidArgument("the first CreateJob message must carry the header")
                header = request.header
                if header.job_id:
                    check_job_id(header.job_id)  # before any labels are buffered
                limit = header.config.num_examples
            elif part == "labels":
                labels = convert.from_array(request.labels, "labels", (pb.INT64, pb.INT32), 1)
                total += len(labels)
                if total > limit:
                    raise InvalidArgument(f"more than num_examples={limit} labels")
                chunks.append(labels)
            else:
                raise InvalidArgument("only the first CreateJob message may carry a header")
        if header is None:
            raise InvalidArgument("CreateJob needs a header")
        labels = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        config = convert.config_from_pb(header.config)
        job_id = await self.manager.create_job(config, labels, header.job_id or None)
        return pb.CreateJobResponse(job_id=job_id)

    @_handler
    async def OpenSession(
        self, request: pb.OpenSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.OpenSessionResponse:
        request = _checked(request)
        await self.manager.claim(request.job_id)
        info = await self.manager.open_session(request.job_id, request.rank)
        return convert.session_to_pb(info)

    @_handler
    async def GetRegion(
        self, request: pb.GetRegionRequest, context: grpc.aio.ServicerContext
    ) -> pb.Region:
        request = _checked(request)
        await self.manager.claim(request.job_id)
        page = request.page if request.HasField("page") else None
        if page is not None and page < 0:
            raise InvalidArgument(f"page must be >= 0, got {page}")
        num_ranks = request.num_ranks or 1
        if num_ranks > 1 and page is None:
            raise InvalidArgument("a request for several ranks (num_ranks) must name a page")
        # Pages after the first answer at once: the client holds page 0 and, should the
        # region have moved on meanwhile, starts again from it.
        views = await self.manager.get_regions(
            request.job_id, request.rank, num_ranks, request.step,
            timeout=_timeout(context), wait=not page,
        )  # fmt: skip
        if page and views[0].region_id != request.region_id:
            raise FailedPrecondition(
                f"step {request.step} is in region {views[0].region_id} now, not in region "
                f"{request.region_id} whose page {page} was asked for: fetch page 0 again"
            )

        def encode() -> pb.Region:
            if len(views) == 1:
                return convert.region_to_pb(views[0], page)
            return convert.regions_to_pb(views, page or 0)

        if sum(len(view.candidates) for view in views) < _INLINE_REGION_ROWS:
            return encode()
        # Off the loop: a large region is megabytes to copy into its page.
        return await asyncio.to_thread(encode)

    @_handler
    async def UploadEmbeddings(
        self, requests: AsyncIterator[pb.EmbeddingChunk], context: grpc.aio.ServicerContext
    ) -> pb.UploadAck:
        # The whole stream is read and checked before any of it is committed: a rejected
        # stream changes nothing. A client's cancellation ends the request stream here like a
        # proper end, so only the stated length tells a broken stream from a whole one.
        first: pb.EmbeddingChunk | None = None
        chunks: list[UploadChunk] = []
        async for request in requests:
            chunk = _checked(request)
            if first is None:
                first = chunk
                check_job_id(chunk.job_id)
                if not 0 <= chunk.stream_chunks <= convert.MAX_STREAM_CHUNKS:
                    raise InvalidArgument(
                        f"stream_chunks must lie in [0, {convert.MAX_STREAM_CHUNKS}], "
                        f"got {chunk.stream_chunks}"
                    )
            elif (chunk.job_id, chunk.rank, chunk.region_id, chunk.stream_chunks) != (
                first.job_id, first.rank, first.region_id, first.stream_chunks
            ):  # fmt: skip
                raise InvalidArgument(
                    "an upload stream carries one sender's chunks of one region, and each "
                    "states the same stream_chunks"
                )
            if len(chunks) == convert.MAX_STREAM_CHUNKS:
                raise ResourceExhausted(
                    f"an upload stream carries at most {convert.MAX_STREAM_CHUNKS} chunks"
                )
            if first.stream_chunks and len(chunks) == first.stream_chunks:
                raise InvalidArgument(f"more chunks than stream_chunks={first.stream_chunks}")
            if chunk.seq < 1:
                raise InvalidArgument(f"seq must be >= 1, got {chunk.seq}")
            indices = convert.from_array(chunk.indices, "indices", (pb.INT64,), 1)
            embeddings = convert.from_array(
                chunk.embeddings, "embeddings", (pb.FLOAT32, pb.FLOAT16), 2
            )
            losses = convert.from_array(chunk.losses, "losses", (pb.FLOAT32,), 1)
            chunks.append(UploadChunk(indices, embeddings, losses, chunk.seq, chunk.first_rank,
                                      tuple(chunk.rank_rows)))  # fmt: skip
        if first is None:  # nothing to commit, and no session named
            return pb.UploadAck(committed_seq=0)
        if first.stream_chunks and len(chunks) != first.stream_chunks:
            raise InvalidArgument(
                f"the upload stream ended after {len(chunks)} of its {first.stream_chunks} "
                "chunks: nothing was committed"
            )
        await self.manager.claim(first.job_id)
        committed = await self.manager.submit_upload(
            first.job_id, first.rank, first.region_id, chunks
        )
        return pb.UploadAck(committed_seq=committed)

    @_handler
    async def PublishModel(
        self, requests: AsyncIterator[pb.ModelChunk], context: grpc.aio.ServicerContext
    ) -> pb.PublishAck:
        header: pb.ModelHeader | None = None
        artifact = bytearray()
        inputs: list[np.ndarray] = []
        rows = 0
        shape: tuple[int, ...] = ()
        async for request in requests:
            request = _checked(request)
            part = request.WhichOneof("part")
            if header is None:
                if part != "header":
                    raise InvalidArgument("the first PublishModel message must carry the header")
                header = request.header
                check_job_id(header.job_id)
                shape = tuple(header.input_shape)
                if header.artifact_bytes < 0 or len(shape) < 1 or min(shape) < 0:
                    raise InvalidArgument(
                        f"invalid model header: artifact_bytes {header.artifact_bytes}, "
                        f"input_shape {shape}"
                    )
                size = header.artifact_bytes + 4 * math.prod(shape)
                if size > convert.MAX_PUBLISH_BYTES:
                    raise ResourceExhausted(
                        f"the model and inputs are {size} bytes, over the "
                        f"{convert.MAX_PUBLISH_BYTES}-byte limit: embed on the trainer side"
                    )
            elif part == "artifact":
                artifact += request.artifact
                if len(artifact) > header.artifact_bytes:
                    raise InvalidArgument(f"more than artifact_bytes={header.artifact_bytes}")
            elif part == "inputs":
                chunk = convert.from_array(request.inputs, "inputs", (pb.FLOAT32,), len(shape))
                rows += len(chunk)
                if chunk.shape[1:] != shape[1:] or rows > shape[0]:
                    raise InvalidArgument(
                        f"input rows of shape {chunk.shape[1:]} ({rows} so far) do not fit "
                        f"input_shape {shape}"
                    )
                inputs.append(chunk)
            else:
                raise InvalidArgument("only the first PublishModel message may carry a header")
        if header is None:
            raise InvalidArgument("PublishModel needs a header")
        await self.manager.claim(header.job_id)
        if header.trainer_side:
            empty = np.zeros((0,), np.float32)
            await self.manager.publish_model(header.job_id, b"", empty, 0, header.trainer_side)
            return pb.PublishAck()
        if len(artifact) != header.artifact_bytes or rows != shape[0]:
            raise InvalidArgument(
                f"the PublishModel stream ended early: {len(artifact)} of "
                f"{header.artifact_bytes} artifact bytes, {rows} of {shape[0]} input rows"
            )
        values = np.concatenate(inputs) if inputs else np.zeros(shape, np.float32)
        await self.manager.publish_model(header.job_id, bytes(artifact), values, header.num_weights)
        return pb.PublishAck()

    @_handler
    async def PublishWeights(
        self, requests: AsyncIterator[pb.WeightsChunk], context: grpc.aio.ServicerContext
    ) -> pb.PublishAck:
        first: pb.WeightsChunk | None = None
        parts: list[np.ndarray] = []
        filled = 0
        async for request in requests:
            request = _checked(request)
            if first is None:
                first = request
                check_job_id(first.job_id)
                if not 0 < first.size <= convert.MAX_PUBLISH_BYTES // 4:
                    raise InvalidArgument(
                        f"weights size must lie in [1, {convert.MAX_PUBLISH_BYTES // 4}], "
                        f"got {first.size}"
                    )
            elif (request.job_id, request.version, request.size) != (
                first.job_id, first.version, first.size
            ):  # fmt: skip
                raise InvalidArgument("a weights stream carries one version of one job")
            if request.offset != filled:
                raise InvalidArgument(
                    f"weights chunk at offset {request.offset}, expected {filled}"
                )
            values = convert.from_array(request.weights, "weights", (pb.FLOAT32, pb.BFLOAT16), 1)
            values = convert.decode_weights(values)
            filled += len(values)
            if filled > first.size:
                raise InvalidArgument(f"more than size={first.size} weights")
            parts.append(values)
        if first is None:
            raise InvalidArgument("PublishWeights needs at least one chunk")
        if filled != first.size:
            raise InvalidArgument(f"the weights stream ended after {filled} of {first.size}")
        weights = np.concatenate(parts).astype(np.float32)
        await self.manager.claim(first.job_id)
        await self.manager.publish_weights(first.job_id, first.version, weights)
        return pb.PublishAck()

    @_handler
    async def ReportCheck(
        self, request: pb.CheckReport, context: grpc.aio.ServicerContext
    ) -> pb.CheckDecision:
        request = _checked(request)
        await self.manager.claim(request.job_id)
        decision = await self.manager.report_check(
            request.job_id, request.rank, convert.report_from_pb(request),
            timeout=_timeout(context),
        )  # fmt: skip
        return convert.decision_to_pb(decision)

    @_handler
    async def GetJobStatus(
        self, request: pb.JobStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.JobStatusReply:
        request = _checked(request)
        await self.manager.claim(request.job_id)
        status = await self.manager.job_status(request.job_id)
        return pb.JobStatusReply(status=convert.status_to_pb(status))

    @_handler
    async def ListJobs(
        self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobsReply:
        request = _checked(request)
        reply = pb.ListJobsReply()
        ttl = self.manager.finished_ttl_s
        room = convert.MAX_MESSAGE_BYTES - convert.MESSAGE_OVERHEAD_BYTES
        for job_id in sorted(j for j in self.manager.job_ids() if j > request.after):
            if reply.ByteSize() > room - _MAX_LISTING_BYTES:
                reply.more = True  # the client asks again, after the last id here
                break
            try:
                status = await self.manager.job_status(job_id)
                finished_at = self.manager.finished_at(job_id) or 0.0
            except NotFound:  # deleted while we read
                continue
            reply.jobs.add(
                job_id=job_id, name=status.config.name or "", step=status.step,
                total_steps=status.total_steps, finished=status.finished,
                world_size=status.config.world_size, finished_at=finished_at,
                expires_at=finished_at + ttl if finished_at and ttl > 0 else 0.0,
            )  # fmt: skip
        return reply

    @_handler
    async def DeleteJob(
        self, request: pb.DeleteJobRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteJobReply:
        request = _checked(request)
        await self.manager.claim(request.job_id)
        return pb.DeleteJobReply(deleted=await self.manager.delete_job(request.job_id))

    def handler(self) -> grpc.GenericRpcHandler:
        """The method handlers of every RPC the service descriptor declares, each served by
        the servicer method of the same name, with the request and reply types and the
        streaming kinds the descriptor states (no second list to keep in step with the
        proto: an RPC without a servicer method fails here, at startup)."""
        handlers = {}
        for method in _SERVICE_DESCRIPTOR.methods:
            implementation = getattr(self, method.name, None)
            if implementation is None:
                raise NotImplementedError(f"{SERVICE}/{method.name} has no servicer method")
            handlers[method.name] = _FACTORIES[(method.client_streaming, method.server_streaming)](
                implementation,
                _parser(GetMessageClass(method.input_type)),
                GetMessageClass(method.output_type).SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


class TokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Refuses every call whose ``authorization`` metadata is not ``Bearer <token>``."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        metadata = dict(handler_call_details.invocation_metadata or ())
        presented = str(metadata.get("authorization", "")).encode()
        if hmac.compare_digest(presented, self._expected):
            return await continuation(handler_call_details)
        return _refuse(await continuation(handler_call_details))


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc is untyped
    """Records each Coordinator call's method, final status code and latency in ``telemetry``.

    The latency runs from the handler's start (a client-streaming call's first message) to
    its reply or error. The final code is the one the client sees: OK, the code of an
    ``abort`` or ``set_code``, UNKNOWN for an exception that escaped, and CANCELLED or
    DEADLINE_EXCEEDED when the call was cancelled. Health and reflection calls are not
    recorded, nor calls of unknown methods. Recording never breaks a call: a failure to
    record is logged once and otherwise ignored.

    Put it first among the interceptors, so that calls others refuse (a wrong token) count.
    """

    def __init__(self, telemetry: RpcTelemetry) -> None:
        self._telemetry = telemetry
        self._warned = False
        for method in _OBSERVED:  # every method has a row (and zero counts) from the start
            telemetry.method(method)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        service, _, method = str(handler_call_details.method).rpartition("/")
        if handler is None or service != f"/{SERVICE}" or method not in _OBSERVED:
            return handler
        streams = handler.request_streaming
        behavior = handler.stream_unary if streams else handler.unary_unary
        return _FACTORIES[(streams, False)](
            self._observed(method, behavior),
            handler.request_deserializer,
            handler.response_serializer,
        )

    def _observed(
        self, method: str, behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
    ) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as err:  # abort() raises too, after setting the code
                error = err
                raise
            finally:
                self._record(method, context, error, time.perf_counter() - start)

        return observed

    def _record(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        error: BaseException | None,
        seconds: float,
    ) -> None:
        try:
            if isinstance(error, asyncio.CancelledError):
                remaining = context.time_remaining()
                expired = remaining is not None and remaining <= 0
                code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            else:
                code = context.code() or (grpc.StatusCode.UNKNOWN if error else grpc.StatusCode.OK)
            self._telemetry.record(method, code.name, seconds)
        except Exception:
            if not self._warned:
                self._warned = True
                log.exception("could not record an RPC's metrics (logged once)")


def _refuse(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")

    async def deny_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong token")
        yield  # pragma: no cover (makes this an async generator for streaming replies)

    streams_reply = handler is not None and handler.response_streaming
    streams_request = handler is not None and handler.request_streaming
    method = deny_stream if streams_reply else deny
    return _FACTORIES[(streams_request, streams_reply)](method)


async def create_server(
    manager: JobManager,
    address: str = "127.0.0.1:0",
    *,
    token: str | None = None,
    tls: tuple[bytes, bytes] | None = None,
    rpc: RpcTelemetry | None = None,
) -> tuple[grpc.aio.Server, int, asyncio.Task[None]]:
    """Build and start the gRPC server (call inside the manager's event loop).

    Args:
        manager: the started job manager.
        address: ``host:port``; port 0 picks a free one (tests).
        token: if set, every RPC must carry ``authorization: Bearer <token>``.
        tls: ``(certificate chain PEM, private key PEM)`` to serve TLS.
        rpc: if set, every Coordinator call is counted and timed there (the dashboard's
            ``/metrics`` and overview show it when given the same object).

    Returns:
        ``(server, port, health_task)``; cancel the task when the server stops.
    """
    interceptors = [RpcMetricsInterceptor(rpc)] if rpc is not None else []
    if token:
        interceptors.append(TokenInterceptor(token))
    server = grpc.aio.server(interceptors=interceptors, options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers((CoordinatorService(manager).handler(),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )  # fmt: skip
    if tls is not None:
        credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
        port = server.add_secure_port(address, credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not bind {address}")
    await server.start()
    health_task = asyncio.create_task(_watch_health(manager, health_servicer))
    return server, port, health_task


async def _watch_health(manager: JobManager, servicer: health.aio.HealthServicer) -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    while True:
        try:
            ok = await asyncio.wait_for(manager.healthy(), HEALTH_PERIOD_S * 2)
        except Exception:
            ok = False
        for service in ("", SERVICE):
            await servicer.set(service, serving if ok else not_serving)
        await asyncio.sleep(HEALTH_PERIOD_S)
