"""The gRPC handler table is the service descriptor's: every RPC, its types and its kinds."""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import pytest

from crest.proto.v1 import coordinator_pb2 as pb
from crest.service.server import SERVICE, CoordinatorService

COORDINATOR = pb.DESCRIPTOR.services_by_name["Coordinator"]


def lookup(handler: grpc.GenericRpcHandler, name: str) -> grpc.RpcMethodHandler | None:
    return handler.service(SimpleNamespace(method=f"/{SERVICE}/{name}", invocation_metadata=()))


def test_every_rpc_of_the_proto_has_a_handler_of_its_kind_and_types() -> None:
    handler = CoordinatorService(manager=None).handler()  # type: ignore[arg-type]
    assert len(COORDINATOR.methods) >= 8
    for method in COORDINATOR.methods:
        served = lookup(handler, method.name)
        assert served is not None, method.name
        assert served.request_streaming == method.client_streaming, method.name
        assert served.response_streaming == method.server_streaming, method.name
        request = served.request_deserializer(b"")
        assert request.DESCRIPTOR is method.input_type, method.name
    assert lookup(handler, "NoSuchRpc") is None


def test_an_rpc_without_a_servicer_method_fails_at_startup(monkeypatch) -> None:
    monkeypatch.delattr(CoordinatorService, "DeleteJob")
    with pytest.raises(NotImplementedError, match="DeleteJob has no servicer method"):
        CoordinatorService(manager=None).handler()  # type: ignore[arg-type]
