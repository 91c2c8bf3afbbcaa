"""Property-based fuzzing of every RPC: malformed or random messages never crash the
coordinator, never come back as UNKNOWN/INTERNAL, and a rejected request changes nothing."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crest.bench.faults import ALLOWED  # the statuses a request may get (one list)
from crest.client.remote import RemoteCoordinator
from crest.proto.v1 import coordinator_pb2 as pb
from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc
from tests.integration.conftest import start_loopback, stop_loopback
from tests.training import blobs, job_config

pytestmark = pytest.mark.integration

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JOB = "fuzzed"
METHODS = pb.DESCRIPTOR.services_by_name["Coordinator"].methods_by_name


@pytest.fixture(scope="module")
def target():
    handle, server, health_task = start_loopback(wait_s=0.5)
    with RemoteCoordinator(handle.address) as remote:
        remote.create_job(job_config(), blobs()[1].numpy(), job_id=JOB)
        candidates = remote.get_region(JOB, 0, 0).candidates
    channel = grpc.insecure_channel(handle.address)
    yield pb_grpc.CoordinatorStub(channel), channel, candidates
    channel.close()
    stop_loopback(handle, server, health_task)


def state(stub) -> tuple[pb.JobStatus, int]:
    status = stub.GetJobStatus(pb.JobStatusRequest(job_id=JOB), timeout=30).status
    committed = stub.OpenSession(pb.OpenSessionRequest(job_id=JOB, rank=0), timeout=30)
    return status, committed.committed_seq


def outcome(call) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def check(stub, call) -> None:
    before = state(stub)
    code = outcome(call)
    assert code in ALLOWED, code
    if code is not grpc.StatusCode.OK:
        assert state(stub) == before, f"a request rejected with {code.name} changed the job"


job_ids = st.sampled_from([JOB, "", "other", "\x00", "x" * 200])
ranks = st.one_of(st.integers(-3, 3), st.integers(-(2**31), 2**31 - 1))
steps = st.one_of(st.integers(-5, 200), st.integers(-(2**63), 2**63 - 1))
dtypes = st.integers(-1, 6)


@st.composite
def arrays(draw, candidates: np.ndarray | None = None) -> pb.Array:
    shape = draw(st.lists(st.integers(-2, 9), max_size=3))
    if candidates is not None and draw(st.booleans()):
        picked = draw(st.lists(st.sampled_from(candidates.tolist()), min_size=1, max_size=8))
        return pb.Array(dtype=pb.INT64, shape=[len(picked)], data=np.array(picked).tobytes())
    data = draw(st.binary(max_size=300))
    return pb.Array(dtype=draw(dtypes), shape=shape, data=data)


@FUZZ
@given(
    raw=st.binary(max_size=200),
    method=st.sampled_from(sorted(METHODS)),  # every RPC the proto declares
)
def test_random_bytes(target, raw: bytes, method: str) -> None:
    stub, channel, _ = target
    if METHODS[method].client_streaming:
        call = channel.stream_unary(f"/crest.v1.Coordinator/{method}")
        check(stub, lambda: call(iter([raw, raw]), timeout=30))
    else:
        call = channel.unary_unary(f"/crest.v1.Coordinator/{method}")
        check(stub, lambda: call(raw, timeout=30))


@FUZZ
@given(data=st.data())
def test_random_uploads(target, data) -> None:
    stub, _, candidates = target
    chunks = [
        pb.EmbeddingChunk(
            job_id=data.draw(job_ids),
            rank=data.draw(ranks),
            region_id=data.draw(st.integers(-2, 3)),
            seq=data.draw(st.integers(-2, 3)),
            indices=data.draw(arrays(candidates)),
            embeddings=data.draw(arrays()),
            losses=data.draw(arrays()),
        )
        for _ in range(data.draw(st.integers(0, 3)))
    ]
    check(stub, lambda: stub.UploadEmbeddings(iter(chunks), timeout=30))


@FUZZ
@given(data=st.data())
def test_random_job_creation(target, data) -> None:
    stub, _, _ = target
    config = pb.JobConfig(
        num_examples=data.draw(st.integers(-5, 3000)), num_classes=data.draw(st.integers(-2, 8)),
        batch_size=data.draw(st.integers(-1, 4000)), tau=data.draw(st.floats(allow_nan=True)),
        train_frac=data.draw(st.floats(-1, 2)), world_size=data.draw(st.integers(-1, 5)),
    )  # fmt: skip
    messages = [pb.CreateJobRequest(header=pb.JobHeader(job_id=data.draw(job_ids),
                                                        config=config))]  # fmt: skip
    messages += [pb.CreateJobRequest(labels=data.draw(arrays()))
                 for _ in range(data.draw(st.integers(0, 2)))]  # fmt: skip
    check(stub, lambda: stub.CreateJob(iter(messages), timeout=30))


@FUZZ
@given(data=st.data())
def test_random_unary_calls(target, data) -> None:
    stub, _, _ = target
    finite = st.floats(allow_nan=True, allow_infinity=True)
    calls = {
        "open": lambda: stub.OpenSession(
            pb.OpenSessionRequest(job_id=data.draw(job_ids), rank=data.draw(ranks)), timeout=30),
        "region": lambda: stub.GetRegion(
            pb.GetRegionRequest(job_id=data.draw(job_ids), rank=data.draw(ranks),
                                step=data.draw(steps)), timeout=30),
        "check": lambda: stub.ReportCheck(
            pb.CheckReport(job_id=data.draw(job_ids), rank=data.draw(ranks),
                           region_id=data.draw(st.integers(-1, 2)), step=data.draw(steps),
                           loss_sum=data.draw(finite), count=data.draw(st.integers(-2, 10)),
                           linear=data.draw(finite), quadratic=data.draw(finite),
                           curvature=data.draw(finite)), timeout=30),
        "status": lambda: stub.GetJobStatus(
            pb.JobStatusRequest(job_id=data.draw(job_ids)), timeout=30),
        "list": lambda: stub.ListJobs(pb.ListJobsRequest(), timeout=30),
        # Never the fuzzed job itself: deleting it is a legal change.
        "delete": lambda: stub.DeleteJob(
            pb.DeleteJobRequest(job_id=data.draw(job_ids.filter(lambda j: j != JOB))),
            timeout=30),
    }  # fmt: skip
    check(stub, calls[data.draw(st.sampled_from(sorted(calls)))])


def test_the_coordinator_still_serves_after_fuzzing(target) -> None:
    stub, _, _ = target
    status, committed = state(stub)
    assert status.job_id == JOB
    assert committed >= 0
