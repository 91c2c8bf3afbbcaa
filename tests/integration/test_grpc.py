"""The gRPC coordinator on loopback: same selections as in-process, precise errors."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from crest.client import Session
from crest.client.remote import RemoteCoordinator
from crest.embedded import local_coordinator
from crest.proto import convert
from crest.proto.errors import FailedPrecondition, InvalidArgument, NotFound
from crest.proto.v1 import coordinator_pb2 as pb
from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc
from crest.service.server import CHANNEL_OPTIONS
from tests.integration.conftest import LoopbackCoordinator, start_loopback, stop_loopback
from tests.training import blobs, job_config, make_model, train, train_with_checkpoint

pytestmark = pytest.mark.integration


def test_remote_and_in_process_coordinators_give_the_same_batches(
    loopback: LoopbackCoordinator,
) -> None:
    labels = blobs()[1].numpy()
    with local_coordinator() as local:
        expected = train(local, local.create_job(job_config(seed=3), labels))[1]
    with RemoteCoordinator(loopback.address) as remote:
        job_id = remote.create_job(job_config(seed=3), labels, job_id="same")
        session, served = train(remote, job_id)
        status = remote.job_status(job_id)
    assert served == expected
    assert len(status.regions) == session.timings.regions
    assert status.finished


def test_client_errors_map_back_to_crest_errors(loopback: LoopbackCoordinator) -> None:
    labels = blobs()[1].numpy()
    with RemoteCoordinator(loopback.address, retry_s=5) as remote:
        with pytest.raises(NotFound, match="unknown job"):
            remote.open_session("nope", 0)
        job_id = remote.create_job(job_config(), labels)
        with pytest.raises(InvalidArgument, match="rank"):
            remote.open_session(job_id, 3)
        with pytest.raises(InvalidArgument, match="invalid job config"):
            remote.create_job(job_config().model_copy(update={"tau": -1.0}), labels)
        with pytest.raises(FailedPrecondition, match="another config"):
            remote.create_job(job_config(seed=1), labels, job_id=job_id)
        assert remote.create_job(job_config(), labels, job_id=job_id) == job_id


@pytest.fixture
def stub(loopback: LoopbackCoordinator):
    with grpc.insecure_channel(loopback.address, options=CHANNEL_OPTIONS) as channel:
        yield pb_grpc.CoordinatorStub(channel)


def make_job(loopback: LoopbackCoordinator) -> tuple[str, object]:
    with RemoteCoordinator(loopback.address) as remote:
        job_id = remote.create_job(job_config(), blobs()[1].numpy())
        return job_id, remote.get_region(job_id, 0, 0)


def chunk(job_id: str, view, seq: int = 1, **overrides) -> pb.EmbeddingChunk:
    n = 8
    fields = dict(
        job_id=job_id, rank=0, region_id=view.region_id, seq=seq,
        indices=convert.to_array(view.candidates[:n]),
        embeddings=convert.to_array(np.ones((n, 4), np.float32)),
        losses=convert.to_array(np.ones(n, np.float32)),
    )  # fmt: skip
    return pb.EmbeddingChunk(**(fields | overrides))


def status_json(stub, job_id: str) -> str:
    return stub.GetJobStatus(pb.JobStatusRequest(job_id=job_id), timeout=30).json


def upload_code(stub, *chunks) -> grpc.StatusCode:
    try:
        stub.UploadEmbeddings(iter(chunks), timeout=30)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_bad_uploads_get_precise_codes_and_change_nothing(loopback, stub) -> None:
    job_id, view = make_job(loopback)
    before = status_json(stub, job_id)
    nan = np.ones((8, 4), np.float32)
    nan[3, 1] = np.nan
    bad_index = view.candidates[:8].copy()
    bad_index[0] = 10**9
    invalid = [
        chunk(job_id, view, embeddings=convert.to_array(nan)),
        chunk(job_id, view, indices=convert.to_array(bad_index)),
        chunk(job_id, view, indices=convert.to_array(np.repeat(view.candidates[:4], 2))),
        chunk(job_id, view, embeddings=convert.to_array(np.ones((8, 4), np.int32))),
        chunk(job_id, view, embeddings=pb.Array(dtype=pb.FLOAT32, shape=[8, 4], data=b"x")),
        chunk(job_id, view, losses=convert.to_array(np.ones(7, np.float32))),
        chunk(job_id, view, losses=convert.to_array(-np.ones(8, np.float32))),
        chunk(job_id, view, seq=0),
        chunk(job_id, view, rank=5),
    ]
    for message in invalid:
        assert upload_code(stub, message) == grpc.StatusCode.INVALID_ARGUMENT, message
    assert upload_code(stub, chunk("nope", view)) == grpc.StatusCode.NOT_FOUND
    assert upload_code(stub, chunk(job_id, view, seq=2)) == grpc.StatusCode.FAILED_PRECONDITION
    stale = chunk(job_id, view, region_id=view.region_id + 1)
    assert upload_code(stub, stale) == grpc.StatusCode.FAILED_PRECONDITION
    assert status_json(stub, job_id) == before
    assert upload_code(stub, chunk(job_id, view)) == grpc.StatusCode.OK
    assert upload_code(stub, chunk(job_id, view)) == grpc.StatusCode.OK  # a retry is skipped


def test_oversized_messages_are_resource_exhausted(loopback, stub) -> None:
    job_id, view = make_job(loopback)
    huge = chunk(job_id, view)
    huge.embeddings.data = b"\0" * (5 * 2**20)
    assert upload_code(stub, huge) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_malformed_bytes_are_invalid_argument(loopback) -> None:
    with grpc.insecure_channel(loopback.address) as channel:
        raw = channel.unary_unary("/crest.v1.Coordinator/GetRegion")
        with pytest.raises(grpc.RpcError) as err:
            raw(b"\xff\xff\xff\xff\x0f", timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_create_job_stream_is_validated(stub) -> None:
    header = pb.CreateJobRequest(header=pb.JobHeader(config=convert.config_to_pb(job_config())))
    labels = pb.CreateJobRequest(labels=convert.to_array(blobs()[1].numpy()))
    cases = [
        [labels],  # no header first
        [header],  # no labels
        [header, labels, header],  # a second header
        [header, labels, labels],  # too many labels
        [header, pb.CreateJobRequest(labels=convert.to_array(np.ones(3, np.float32)))],
    ]
    for messages in cases:
        with pytest.raises(grpc.RpcError) as err:
            stub.CreateJob(iter(messages), timeout=30)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    reply = stub.CreateJob(iter([header, labels]), timeout=30)
    assert reply.job_id


def test_checks_out_of_order_are_failed_precondition(loopback, stub) -> None:
    job_id, _ = make_job(loopback)
    report = pb.CheckReport(job_id=job_id, rank=0, region_id=0, step=5, loss_sum=1.0, count=1)
    with pytest.raises(grpc.RpcError) as err:
        stub.ReportCheck(report, timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_resume_against_a_coordinator_that_lost_the_job_fails_at_load(tmp_path) -> None:
    """A `crest serve` restarted without a durable store lost the job's progress: loading the
    checkpoint says so instead of failing later from a background thread."""
    labels, checkpoint = blobs()[1].numpy(), tmp_path / "ckpt.pt"
    first = start_loopback()
    try:
        with RemoteCoordinator(first[0].address) as remote:
            job_id = remote.create_job(job_config(seed=2), labels, job_id="lost")
            train_with_checkpoint(remote, job_id, checkpoint, 6, 10)
    finally:
        stop_loopback(*first)
    state = torch.load(checkpoint, weights_only=True)["crest"]
    assert "job" not in state  # only an in-process coordinator's jobs travel in checkpoints
    second = start_loopback()
    try:
        with RemoteCoordinator(second[0].address) as remote:
            assert remote.create_job(job_config(seed=2), labels, job_id=job_id) == job_id
            with Session(remote, job_id, model=make_model()) as session:
                with pytest.raises(FailedPrecondition, match="lost the job's progress"):
                    session.load_state_dict(state)
                assert session.step == 0
    finally:
        stop_loopback(*second)
