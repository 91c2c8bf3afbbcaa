"""Job lifecycle and honest status codes against real components: gRPC on loopback, a real
redis-server, and the ``crest jobs`` command."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from crest.client.remote import RemoteCoordinator
from crest.proto.errors import DataLoss, NotFound, ResourceExhausted
from crest.proto.v1 import coordinator_pb2 as pb
from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc
from crest.service.store import RedisStore
from tests.integration.conftest import (
    LoopbackCoordinator,
    RedisServer,
    crest_command,
    start_loopback,
    stop_loopback,
    wait_for_port,
)
from tests.training import blobs, job_config, train

pytestmark = pytest.mark.integration
TOKEN = "lifecycle-token"


@pytest.fixture
def on_redis(redis_server: RedisServer) -> Iterator[LoopbackCoordinator]:
    handle, server, health_task = start_loopback(RedisStore(redis_server.url), finished_ttl_s=0)
    try:
        yield handle
    finally:
        stop_loopback(handle, server, health_task)


def keys(redis_server: RedisServer) -> list[str]:
    with redis.Redis(port=redis_server.port) as client:
        return sorted(key.decode() for key in client.keys("*"))


def wait_until(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} after {timeout} s"
        time.sleep(0.1)


def test_delete_job_through_grpc_removes_its_redis_keys(
    on_redis: LoopbackCoordinator, redis_server: RedisServer
) -> None:
    labels = blobs()[1].numpy()
    with RemoteCoordinator(on_redis.address) as remote:
        remote.create_job(job_config(), labels, job_id="doomed")
        remote.create_job(job_config(), labels, job_id="kept")
        train(remote, "doomed")  # a journal, snapshots and a finish time
    assert "crest:job:doomed:snapshot" in keys(redis_server)
    assert "crest:finished" in keys(redis_server)
    with grpc.insecure_channel(on_redis.address) as channel:
        stub = pb_grpc.CoordinatorStub(channel)
        listed = stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs
        assert [(j.job_id, j.finished) for j in listed] == [("doomed", True), ("kept", False)]
        assert listed[0].finished_at > 0 and listed[0].expires_at == 0  # no expiry configured
        assert stub.DeleteJob(pb.DeleteJobRequest(job_id="doomed"), timeout=30).deleted
        assert not stub.DeleteJob(pb.DeleteJobRequest(job_id="doomed"), timeout=30).deleted
        with pytest.raises(grpc.RpcError) as err:
            stub.GetJobStatus(pb.JobStatusRequest(job_id="doomed"), timeout=30)
        assert err.value.code() is grpc.StatusCode.NOT_FOUND
    assert keys(redis_server) == ["crest:job:kept:snapshot", "crest:jobs"]
    with redis.Redis(port=redis_server.port) as client:
        assert client.smembers("crest:jobs") == {b"kept"}


def test_finished_jobs_expire_with_their_redis_keys(redis_server: RedisServer) -> None:
    handle, server, health_task = start_loopback(RedisStore(redis_server.url),
                                                 finished_ttl_s=0.5)  # fmt: skip
    try:
        with RemoteCoordinator(handle.address) as remote:
            job_id = remote.create_job(job_config(), blobs()[1].numpy(), job_id="brief")
            train(remote, job_id)
        wait_until(lambda: keys(redis_server) == [], "expired")
        assert handle.manager.job_ids() == []
    finally:
        stop_loopback(handle, server, health_task)


def test_a_job_lost_by_a_redis_restarted_empty_is_data_loss_not_a_retry(
    on_redis: LoopbackCoordinator, redis_server: RedisServer
) -> None:
    binary = shutil.which("redis-server")
    assert binary is not None
    with RemoteCoordinator(on_redis.address, retry_s=300) as remote:
        remote.create_job(job_config(), blobs()[1].numpy(), job_id="lost")
        redis_server.process.terminate()
        redis_server.process.wait(timeout=30)
        fresh = subprocess.Popen(
            [binary, "--port", str(redis_server.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            wait_for_port(redis_server.port)
            with pytest.raises(DataLoss, match="create the job again"):
                remote.get_region("lost", 0, 0)  # opens the region: a write
            with pytest.raises(NotFound):
                remote.get_region("lost", 0, 0)
            assert remote.create_job(job_config(), blobs()[1].numpy(), job_id="lost") == "lost"
        finally:
            fresh.terminate()
            fresh.wait(timeout=30)


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                          timeout=30)  # fmt: skip
    return reply.status


def test_a_job_over_the_store_value_limit_fails_precisely_and_health_says_so(
    redis_server: RedisServer,
) -> None:
    store = RedisStore(redis_server.url)
    handle, server, health_task = start_loopback(store, snapshot_every=1)
    serving = health_pb2.HealthCheckResponse.SERVING
    try:
        with RemoteCoordinator(handle.address, retry_s=300) as remote:
            remote.create_job(job_config(), blobs()[1].numpy(), job_id="huge")
            wait_until(lambda: health(handle.address) == serving, "SERVING")
            with redis.Redis(port=redis_server.port) as client:
                store.max_value_bytes = client.strlen("crest:job:huge:snapshot") - 1
            with pytest.raises(ResourceExhausted, match="value limit"):
                remote.get_region("huge", 0, 0)
            wait_until(lambda: health(handle.address) != serving, "NOT_SERVING")
            with pytest.raises(ResourceExhausted):  # while it lasts
                remote.get_region("huge", 0, 0)
            with grpc.insecure_channel(handle.address) as channel:
                pb_grpc.CoordinatorStub(channel).DeleteJob(pb.DeleteJobRequest(job_id="huge"),
                                                           timeout=30)  # fmt: skip
            wait_until(lambda: health(handle.address) == serving, "SERVING again")
    finally:
        stop_loopback(handle, server, health_task)


def crest_jobs(*args: str, token: str = TOKEN) -> subprocess.CompletedProcess:
    return subprocess.run(crest_command("jobs", *args, "--token", token), capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_crest_jobs_list_and_delete_against_a_real_server() -> None:
    handle, server, health_task = start_loopback(token=TOKEN)
    try:
        with RemoteCoordinator(handle.address, token=TOKEN) as remote:
            for job_id in ("alpha", "beta"):
                remote.create_job(job_config(), blobs()[1].numpy(), job_id=job_id)
        address = ("--address", handle.address)
        listed = crest_jobs("list", *address)
        assert listed.returncode == 0, listed.stderr
        lines = listed.stdout.splitlines()
        assert lines[0].split() == ["JOB", "NAME", "STEP", "FINISHED", "EXPIRES"]
        assert [line.split()[0] for line in lines[1:]] == ["alpha", "beta"]
        deleted = crest_jobs("delete", "alpha", *address)
        assert (deleted.returncode, deleted.stdout.strip()) == (0, "deleted alpha")
        again = crest_jobs("delete", "alpha", *address)
        assert again.returncode == 0 and "no job alpha" in again.stdout
        assert handle.manager.job_ids() == ["beta"]
        refused = crest_jobs("delete", "beta", *address, token="wrong")
        assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
        assert handle.manager.job_ids() == ["beta"]
    finally:
        stop_loopback(handle, server, health_task)
