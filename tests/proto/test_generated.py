"""The committed generated code is exactly what the pinned grpcio-tools generates."""

from pathlib import Path

from crest.proto import generate


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    written = generate.generate(tmp_path)
    assert written, "no generated files"
    for path in written:
        committed = generate.PROTO_DIR / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed} is missing: run `make proto`"
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale: `make proto`"
    generated_names = {p.relative_to(tmp_path) for p in written}
    for committed in generate.PROTO_DIR.rglob("*_pb2*"):
        if committed.suffix in (".py", ".pyi"):
            relative = committed.relative_to(generate.PROTO_DIR)
            assert relative in generated_names, f"{committed} has no .proto source"


def test_generated_modules_import_under_the_package() -> None:
    from crest.proto.v1 import coordinator_pb2, coordinator_pb2_grpc

    assert coordinator_pb2.DESCRIPTOR.package == "crest.v1"
    assert coordinator_pb2.MAX_MESSAGE_BYTES == 4 * 2**20
    assert hasattr(coordinator_pb2_grpc, "CoordinatorStub")
