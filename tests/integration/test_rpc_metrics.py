"""The gRPC server's per-method metrics: a real server on loopback, real calls that succeed
and fail, read back from the dashboard's ``/metrics`` and ``/api/rpc``; and the status codes of
endings the Coordinator's own handlers never produce (escaped exceptions, deadlines,
cancellations), through the same interceptor."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from crest.client.remote import RemoteCoordinator
from crest.proto import convert
from crest.proto.errors import InvalidArgument, NotFound, Unauthenticated
from crest.proto.v1 import coordinator_pb2 as pb
from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc
from crest.service.dashboard import RpcMethod, create_dashboard
from crest.service.server import CHANNEL_OPTIONS, SERVICE, RpcMetricsInterceptor
from crest.service.telemetry import LATENCY_BUCKETS, RpcTelemetry
from tests.integration.conftest import LoopbackCoordinator, start_loopback, stop_loopback
from tests.service.dashboard_helpers import WAIT_S, get, get_json, serving
from tests.training import blobs, job_config

pytestmark = pytest.mark.integration

METHODS = {m.name for m in pb.DESCRIPTOR.services_by_name["Coordinator"].methods}
TOKEN = "rpc-token"


@pytest.fixture
def observed() -> Iterator[tuple[LoopbackCoordinator, RpcTelemetry]]:
    rpc = RpcTelemetry()
    handle, server, health_task = start_loopback(rpc=rpc)
    try:
        yield handle, rpc
    finally:
        stop_loopback(handle, server, health_task)


def _samples(url: str) -> dict[tuple[str, tuple], float]:
    status, body, _ = get(f"{url}/metrics")
    assert status == 200
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def _make_calls(address: str) -> str:
    """Calls with known outcomes (the counts _EXPECTED lists); returns the job's id."""
    labels = blobs()[1].numpy()
    with RemoteCoordinator(address, retry_s=5) as remote:
        job_id = remote.create_job(job_config(), labels)  # a client stream
        remote.open_session(job_id, 0)
        for _ in range(3):
            remote.job_status(job_id)
        with pytest.raises(NotFound):
            remote.job_status("no-such-job")
        with pytest.raises(InvalidArgument, match="rank"):
            remote.open_session(job_id, 3)
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        bad = pb.EmbeddingChunk(job_id=job_id, rank=0, seq=1, stream_chunks=-1)
        with pytest.raises(grpc.RpcError) as err:  # client streams that fail
            stub.UploadEmbeddings(iter([bad]), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        headless = pb.CreateJobRequest(labels=convert.to_array(labels))
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateJob(iter([headless]), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:  # bytes that are no message
            channel.unary_unary(f"/{SERVICE}/GetRegion")(b"\xff\xff\xff\xff\x0f", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:  # no such method: not recorded
            channel.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"", timeout=30)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        health = health_pb2_grpc.HealthStub(channel)  # health calls are not recorded
        health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=30)
    return job_id


_EXPECTED = {  # method -> {code: calls} after _make_calls
    "CreateJob": {"OK": 1, "INVALID_ARGUMENT": 1},
    "OpenSession": {"OK": 1, "INVALID_ARGUMENT": 1},
    "GetJobStatus": {"OK": 3, "NOT_FOUND": 1},
    "UploadEmbeddings": {"INVALID_ARGUMENT": 1},
    "GetRegion": {"INVALID_ARGUMENT": 1},
}


def test_calls_by_method_and_status_and_their_latency_reach_metrics_and_the_api(
    observed: tuple[LoopbackCoordinator, RpcTelemetry],
) -> None:
    handle, rpc = observed
    _make_calls(handle.address)
    assert {m: c.codes for m, c in rpc.methods.items() if c.calls} == _EXPECTED
    assert rpc.methods.keys() == METHODS  # every method has a row from the start

    with serving(handle.local, create_dashboard(handle.manager, rpc=rpc)) as url:
        samples = _samples(url)
        api = [RpcMethod.model_validate(m) for m in get_json(f"{url}/api/rpc")]
    calls = {
        (dict(labels)["method"], dict(labels)["code"]): value
        for (name, labels), value in samples.items()
        if name == "crest_rpc_calls_total"
    }
    assert calls == {(m, code): n for m, codes in _EXPECTED.items() for code, n in codes.items()}
    bounds = [f"{b:g}" for b in LATENCY_BUCKETS] + ["+Inf"]
    for method in METHODS:
        total = sum(_EXPECTED.get(method, {}).values())
        label = (("method", method),)
        assert samples["crest_rpc_latency_seconds_count", label] == total
        buckets = [
            samples["crest_rpc_latency_seconds_bucket", (("le", le), *label)] for le in bounds
        ]
        assert buckets == sorted(buckets) and buckets[-1] == total
        assert (samples["crest_rpc_latency_seconds_sum", label] > 0) == (total > 0)

    assert [m.method for m in api] == sorted(METHODS)
    for m in api:
        codes = _EXPECTED.get(m.method, {})
        assert m.codes == codes
        assert (m.calls, m.errors) == (
            sum(codes.values()),
            sum(codes.values()) - codes.get("OK", 0),
        )
        if m.calls:
            assert m.mean_seconds is not None and m.p50_seconds is not None
            assert m.p99_seconds is not None
            assert 0 < m.p50_seconds <= m.p99_seconds <= LATENCY_BUCKETS[-1]
        else:
            assert (m.mean_seconds, m.p50_seconds, m.p99_seconds) == (None, None, None)


def test_a_dashboard_without_a_grpc_server_has_no_rpc_metrics(
    observed: tuple[LoopbackCoordinator, RpcTelemetry],
) -> None:
    handle, _ = observed
    with serving(handle.local, create_dashboard(handle.manager)) as url:
        assert get_json(f"{url}/api/rpc") == []
        assert not any(name.startswith("crest_rpc") for name, _ in _samples(url))


def test_calls_refused_for_a_wrong_token_count_as_unauthenticated() -> None:
    rpc = RpcTelemetry()
    handle, server, health_task = start_loopback(token=TOKEN, rpc=rpc)
    try:
        wrong = RemoteCoordinator(handle.address, token="wrong", retry_s=5)
        with wrong, pytest.raises(Unauthenticated):
            wrong.job_status("any")
        right = RemoteCoordinator(handle.address, token=TOKEN, retry_s=5)
        with right, pytest.raises(NotFound):
            right.job_status("any")
        assert rpc.method("GetJobStatus").codes == {"UNAUTHENTICATED": 1, "NOT_FOUND": 1}
    finally:
        stop_loopback(handle, server, health_task)


class _Broken(RpcTelemetry):
    def record(self, method: str, code: str, seconds: float) -> None:
        raise RuntimeError("the metrics broke")


def test_metrics_that_fail_never_break_a_call(caplog: pytest.LogCaptureFixture) -> None:
    handle, server, health_task = start_loopback(rpc=_Broken())
    try:
        with (
            caplog.at_level(logging.ERROR, logger="crest.service.server"),
            RemoteCoordinator(handle.address, retry_s=5) as remote,
        ):
            job_id = remote.create_job(job_config(), blobs()[1].numpy())
            assert remote.job_status(job_id).job_id == job_id
            with pytest.raises(NotFound):
                remote.job_status("no-such-job")
        logged = [r for r in caplog.records if "could not record" in r.getMessage()]
        assert len(logged) == 1, "logged once"
    finally:
        stop_loopback(handle, server, health_task)


def test_labels_are_sent_whole_through_the_observed_stream(
    observed: tuple[LoopbackCoordinator, RpcTelemetry],
) -> None:
    """The interceptor passes a client stream on untouched: a job made of several label
    messages is the job sent."""
    handle, rpc = observed
    labels = np.arange(1200) % 4
    header = pb.CreateJobRequest(header=pb.JobHeader(config=convert.config_to_pb(job_config())))
    parts = [pb.CreateJobRequest(labels=convert.to_array(p)) for p in np.split(labels, 4)]
    with grpc.insecure_channel(handle.address, options=CHANNEL_OPTIONS) as channel:
        reply = pb_grpc.CoordinatorStub(channel).CreateJob(iter([header, *parts]), timeout=30)
    status = handle.local.job_status(reply.job_id)
    assert list(status.class_sizes) == [300] * 4
    assert rpc.method("CreateJob").codes == {"OK": 1}


async def _slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await asyncio.sleep(WAIT_S)
    return b""


async def _raises(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise ValueError("a bug")


async def _sets_code(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    context.set_code(grpc.StatusCode.FAILED_PRECONDITION)
    return b""


def test_escaped_exceptions_set_codes_deadlines_and_cancellations_get_their_codes() -> None:
    """Handlers the Coordinator never has (it aborts on every error), served under its
    methods' names by a real server with the interceptor."""

    async def main() -> dict[str, dict[str, int]]:
        rpc = RpcTelemetry()
        server = grpc.aio.server(interceptors=[RpcMetricsInterceptor(rpc)])
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(behavior)
            for name, behavior in [
                ("GetRegion", _slow), ("GetJobStatus", _raises), ("OpenSession", _sets_code),
            ]
        }  # fmt: skip
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary(f"/{SERVICE}/GetRegion")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(b"", timeout=0.5)
                assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                cancelled = call(b"", timeout=WAIT_S)
                await asyncio.sleep(0.5)
                cancelled.cancel()
                for name, code in [
                    ("GetJobStatus", grpc.StatusCode.UNKNOWN),
                    ("OpenSession", grpc.StatusCode.FAILED_PRECONDITION),
                ]:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await channel.unary_unary(f"/{SERVICE}/{name}")(b"", timeout=WAIT_S)
                    assert err.value.code() == code
            deadline = time.monotonic() + WAIT_S  # the server learns of the cancel by itself
            while rpc.method("GetRegion").calls < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            return {m: c.codes for m, c in rpc.methods.items() if c.calls}
        finally:
            await server.stop(0)

    assert asyncio.run(main()) == {
        "GetRegion": {"DEADLINE_EXCEEDED": 1, "CANCELLED": 1},
        "GetJobStatus": {"UNKNOWN": 1},
        "OpenSession": {"FAILED_PRECONDITION": 1},
    }
