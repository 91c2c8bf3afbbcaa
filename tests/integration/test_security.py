"""Token authentication on every RPC, and TLS."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message_factory import GetMessageClass
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from crest.client.remote import RemoteCoordinator
from crest.proto.errors import Unauthenticated, Unavailable
from crest.proto.v1 import coordinator_pb2 as pb
from tests.integration.conftest import start_loopback, stop_loopback
from tests.training import blobs, job_config, train

pytestmark = pytest.mark.integration
TOKEN = "s3cret-token"


@pytest.fixture
def guarded():
    handle, server, health_task = start_loopback(token=TOKEN)
    yield handle
    stop_loopback(handle, server, health_task)


COORDINATOR = pb.DESCRIPTOR.services_by_name["Coordinator"]


def call_with_empty_request(channel: grpc.Channel, method: MethodDescriptor, metadata) -> None:
    """Call one coordinator RPC with an empty request, as its streaming kinds require."""
    kind = {
        (False, False): channel.unary_unary,
        (True, False): channel.stream_unary,
        (False, True): channel.unary_stream,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    empty = GetMessageClass(method.input_type)().SerializeToString()
    request = iter([empty]) if method.client_streaming else empty
    reply = kind(f"/{COORDINATOR.full_name}/{method.name}")(request, timeout=30, metadata=metadata)
    if method.server_streaming:
        list(reply)


def every_rpc(channel: grpc.Channel, metadata) -> list[grpc.StatusCode]:
    """Call every RPC of every service once (the coordinator's, health, reflection); return
    the status codes."""
    calls = [
        # Every RPC the proto declares (from its descriptor: a new RPC is covered unedited).
        *(functools.partial(call_with_empty_request, channel, method, metadata)
          for method in COORDINATOR.methods),
        lambda: health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=30, metadata=metadata),
        lambda: list(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=30,
            metadata=metadata)),
    ]  # fmt: skip
    codes = []
    for call in calls:
        try:
            call()
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            codes.append(err.code())
    return codes


def test_every_rpc_without_the_token_is_unauthenticated(guarded) -> None:
    with grpc.insecure_channel(guarded.address) as channel:
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            codes = every_rpc(channel, metadata)
            assert codes == [grpc.StatusCode.UNAUTHENTICATED] * len(codes), metadata
        with_token = every_rpc(channel, (("authorization", f"Bearer {TOKEN}"),))
    assert grpc.StatusCode.UNAUTHENTICATED not in with_token
    assert grpc.StatusCode.UNIMPLEMENTED not in with_token  # every RPC has a handler
    assert with_token[-2:] == [grpc.StatusCode.OK, grpc.StatusCode.OK]  # health, reflection


def test_a_trainer_with_the_token_trains(guarded) -> None:
    with RemoteCoordinator(guarded.address, retry_s=5) as anon, pytest.raises(Unauthenticated):
        anon.create_job(job_config(), blobs()[1].numpy())
    with RemoteCoordinator(guarded.address, token=TOKEN) as remote:
        job_id = remote.create_job(job_config(), blobs()[1].numpy())
        _, served = train(remote, job_id)
    assert len(served) == job_config().total_steps


def make_certificate(directory: Path, name: str = "cert") -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, and its key."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate")
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return make_certificate(tmp_path)


def test_tls(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    handle, server, health_task = start_loopback(tls=(cert.read_bytes(), key.read_bytes()))
    try:
        address = f"localhost:{handle.port}"
        with RemoteCoordinator(address, tls_ca=cert) as remote:
            job_id = remote.create_job(job_config(), blobs()[1].numpy())
            assert remote.open_session(job_id, 0).total_steps == job_config().total_steps
        with RemoteCoordinator(address, retry_s=1) as plaintext, pytest.raises(Unavailable):
            plaintext.open_session(job_id, 0)
    finally:
        stop_loopback(handle, server, health_task)


def test_a_server_certificate_the_client_does_not_trust_fails_at_once(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert, key = certificate
    other_ca, _ = make_certificate(tmp_path, "other")
    handle, server, health_task = start_loopback(tls=(cert.read_bytes(), key.read_bytes()))
    try:
        # retry_s=300: a client that took this for an outage would spin for five minutes
        # and then raise Unavailable.
        remote = RemoteCoordinator(f"localhost:{handle.port}", tls_ca=other_ca, retry_s=300)
        with remote, pytest.raises(Unauthenticated, match="does not verify"):
            remote.open_session("any", 0)
    finally:
        stop_loopback(handle, server, health_task)


def probe_commands() -> dict[str, list[str]]:
    """The coordinator's health probes as the deployment files write them."""
    from tests.deploy.manifests import healthcheck_argv, k8s_object, load_compose

    probes = {"compose": healthcheck_argv(load_compose()["services"]["coordinator"])}
    (container,) = k8s_object("StatefulSet", "crest-coordinator")["spec"]["template"]["spec"][
        "containers"
    ]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probes[f"k8s {kind}"] = container[kind]["exec"]["command"]
    return probes


def test_the_deployments_health_probes_work_with_tls_on(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    """`crest health` reads CREST_TLS_CA / CREST_TLS_SERVER_NAME, so the compose healthcheck
    and the Kubernetes probes work unchanged once a deployment turns TLS on."""
    import os
    import sys

    cert, key = certificate
    handle, server, health_task = start_loopback(
        token=TOKEN, tls=(cert.read_bytes(), key.read_bytes())
    )
    try:
        base = {k: v for k, v in os.environ.items() if not k.startswith("CREST_")}
        base["CREST_TOKEN"] = TOKEN
        tls = {**base, "CREST_TLS_CA": str(cert), "CREST_TLS_SERVER_NAME": "localhost"}
        for name, argv in probe_commands().items():
            assert argv[:2] == ["crest", "health"], name
            args = [a.replace(":50051", f":{handle.port}") for a in argv[2:]]
            command = [sys.executable, "-m", "crest.cli", "health", *args]
            ok = subprocess.run(command, env=tls, capture_output=True, text=True, timeout=60)
            assert ok.returncode == 0 and "SERVING" in ok.stdout, (name, ok.stderr)
            plain = subprocess.run(command, env=base, capture_output=True, text=True, timeout=60)
            assert plain.returncode == 1, name  # plaintext against TLS: not healthy
    finally:
        stop_loopback(handle, server, health_task)
