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


def status_of_job(stub, job_id: str) -> pb.JobStatus:
    return stub.GetJobStatus(pb.JobStatusRequest(job_id=job_id), timeout=30).status


def upload_code(stub, *chunks) -> grpc.StatusCode:
    try:
        stub.UploadEmbeddings(iter(chunks), timeout=30)
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_bad_uploads_get_precise_codes_and_change_nothing(loopback, stub) -> None:
    job_id, view = make_job(loopback)
    before = status_of_job(stub, job_id)
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
    assert status_of_job(stub, job_id) == before
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


class _LostReply(grpc.RpcError):
    """What a client sees when its deadline passes after the coordinator did the work."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return "deadline exceeded (injected after the call completed)"


def test_a_retried_create_job_creates_one_job(loopback: LoopbackCoordinator) -> None:
    labels = blobs()[1].numpy()
    with RemoteCoordinator(loopback.address, retry_s=60) as remote:
        stub = remote._stub
        real, attempts = stub.CreateJob, []

        def reply_lost_three_times(requests, **kwargs):
            reply = real(requests, **kwargs)  # the coordinator creates (or finds) the job
            attempts.append(reply.job_id)
            if len(attempts) <= 3:
                raise _LostReply()
            return reply

        stub.CreateJob = reply_lost_three_times
        job_id = remote.create_job(job_config(), labels)
    assert attempts == [job_id] * 4
    assert loopback.manager.job_ids() == [job_id]


def test_an_upload_stream_is_committed_all_or_nothing(loopback, stub) -> None:
    job_id, view = make_job(loopback)
    before = status_of_job(stub, job_id)
    nan = np.ones((8, 4), np.float32)
    nan[3, 1] = np.nan
    later = chunk(job_id, view, seq=2, indices=convert.to_array(view.candidates[8:16]),
                  embeddings=convert.to_array(nan))  # fmt: skip
    empty = chunk(job_id, view, indices=convert.to_array(np.zeros(0, np.int64)),
                  embeddings=convert.to_array(np.zeros((0, 4), np.float32)),
                  losses=convert.to_array(np.zeros(0, np.float32)))  # fmt: skip
    other_rank = chunk(job_id, view, seq=2, rank=1)
    too_many = [chunk(job_id, view, seq=s) for s in range(1, convert.MAX_STREAM_CHUNKS + 2)]
    assert upload_code(stub, chunk(job_id, view), later) == grpc.StatusCode.INVALID_ARGUMENT
    assert upload_code(stub, empty) == grpc.StatusCode.INVALID_ARGUMENT
    assert upload_code(stub, chunk(job_id, view), other_rank) == grpc.StatusCode.INVALID_ARGUMENT
    assert upload_code(stub, *too_many) == grpc.StatusCode.RESOURCE_EXHAUSTED
    stated = [chunk(job_id, view, seq=s, stream_chunks=3) for s in (1, 2, 3)]
    for chunk_i, seq in zip(stated, (1, 2, 3), strict=True):
        chunk_i.indices.CopyFrom(convert.to_array(view.candidates[8 * seq : 8 * seq + 8]))
    assert upload_code(stub, *stated[:2]) == grpc.StatusCode.INVALID_ARGUMENT  # cut short
    assert upload_code(stub, *stated, stated[2]) == grpc.StatusCode.INVALID_ARGUMENT  # 4 of 3
    assert status_of_job(stub, job_id) == before
    session = stub.OpenSession(pb.OpenSessionRequest(job_id=job_id, rank=0), timeout=30)
    assert session.committed_seq == 0  # the valid first chunks were not kept
    assert stub.UploadEmbeddings(iter(stated), timeout=30).committed_seq == 3  # still 1 next


class _BrokenStream(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "stream broken (injected)"


def _upload_and_select(remote: RemoteCoordinator, job_id: str) -> tuple[int, list]:
    view = remote.get_region(job_id, 0, 0)
    embeddings = np.random.default_rng(1).random((len(view.candidates), 6)).astype(np.float32)
    losses = np.linspace(0.5, 2.0, len(view.candidates)).astype(np.float32)
    remote.submit_embeddings(job_id, 0, view.region_id, view.candidates, embeddings, losses)
    ready = remote.get_region(job_id, 0, 0)
    committed = remote.open_session(job_id, 0).committed_seq
    return committed, [(i.tolist(), w.tolist()) for i, w in ready.batches]


def test_a_stream_broken_midway_and_resent_gives_the_same_state(loopback, monkeypatch) -> None:
    monkeypatch.setattr(convert, "rows_per_chunk", lambda dim, itemsize, ranks=1: 40)  # many chunks
    monkeypatch.setattr(convert, "MAX_STREAM_CHUNKS", 4)  # several streams per upload
    labels = blobs()[1].numpy()
    with RemoteCoordinator(loopback.address, retry_s=60) as remote:
        remote.create_job(job_config(), labels, job_id="whole")
        expected = _upload_and_select(remote, "whole")

        remote.create_job(job_config(), labels, job_id="broken")
        stub = remote._stub
        real, sent = stub.UploadEmbeddings, []

        def flaky(requests, **kwargs):
            chunks = list(requests)
            sent.append([c.seq for c in chunks])
            if len(sent) == 2:  # the second stream breaks after two of its chunks

                def two_then_break():
                    yield from chunks[:2]
                    raise RuntimeError("connection lost")

                with pytest.raises(grpc.RpcError):
                    real(two_then_break(), **kwargs)
                raise _BrokenStream()
            return real(iter(chunks), **kwargs)

        stub.UploadEmbeddings = flaky
        got = _upload_and_select(remote, "broken")
    assert sent[1] == sent[2] == [5, 6, 7, 8]  # nothing of the broken stream was committed
    assert got == expected


def test_an_oversized_job_id_is_invalid_argument_on_every_rpc(loopback, stub) -> None:
    huge = "j" * 9000  # echoed into a status message, it overflowed gRPC's 8 KiB metadata
    _, view = make_job(loopback)
    header = pb.JobHeader(job_id=huge, config=convert.config_to_pb(job_config()))
    calls = {
        "CreateJob": lambda: stub.CreateJob(iter([pb.CreateJobRequest(header=header)]),
                                            timeout=30),
        "OpenSession": lambda: stub.OpenSession(pb.OpenSessionRequest(job_id=huge), timeout=30),
        "GetRegion": lambda: stub.GetRegion(pb.GetRegionRequest(job_id=huge), timeout=30),
        "UploadEmbeddings": lambda: stub.UploadEmbeddings(iter([chunk(huge, view)]), timeout=30),
        "ReportCheck": lambda: stub.ReportCheck(pb.CheckReport(job_id=huge), timeout=30),
        "GetJobStatus": lambda: stub.GetJobStatus(pb.JobStatusRequest(job_id=huge), timeout=30),
    }  # fmt: skip
    for name, call in calls.items():
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert "1-128 printable characters" in err.value.details(), name
        assert len(err.value.details()) < 200, name


def test_config_errors_are_invalid_argument_listing_the_fields(loopback) -> None:
    labels = blobs()[1].numpy()
    bad = job_config().model_copy(update={"tau": -1.0, "batch_size": 0})  # skips validation
    expected = "invalid job config: batch_size: .* tau: Input should be greater than or equal"
    remote = RemoteCoordinator(loopback.address, retry_s=5)
    with remote, pytest.raises(InvalidArgument, match=expected):
        remote.create_job(bad, labels)
    with local_coordinator() as local, pytest.raises(InvalidArgument, match=expected):
        local.create_job(bad, labels)
    with pytest.raises(InvalidArgument, match=r"^invalid job config: num_classes: .*\(got 1\)"):
        job_config(num_classes=1)


def test_a_long_job_list_comes_in_replies_under_the_limit(loopback, stub, monkeypatch) -> None:
    from crest.service import server

    longest = pb.JobListing(job_id="\u4e00" * 128, name="\u4e00" * 128, step=2**62,
                            total_steps=2**62, finished=True, world_size=4096,
                            finished_at=1e12, expires_at=1e12)  # fmt: skip
    assert pb.ListJobsReply(jobs=[longest]).ByteSize() <= server._MAX_LISTING_BYTES
    labels = blobs()[1].numpy()
    with RemoteCoordinator(loopback.address) as remote:
        for job_id in ("c", "a", "b"):
            remote.create_job(job_config(), labels, job_id=job_id)
    assert not stub.ListJobs(pb.ListJobsRequest(), timeout=30).more  # all in one reply
    # As if every line were 4 MiB: one job a reply.
    room = convert.MAX_MESSAGE_BYTES - convert.MESSAGE_OVERHEAD_BYTES
    monkeypatch.setattr(server, "_MAX_LISTING_BYTES", room - 1)
    replies, after = [], ""
    while True:
        reply = stub.ListJobs(pb.ListJobsRequest(after=after), timeout=30)
        replies.append([j.job_id for j in reply.jobs])
        if not reply.more:
            break
        after = reply.jobs[-1].job_id
    assert replies == [["a"], ["b"], ["c"]]
