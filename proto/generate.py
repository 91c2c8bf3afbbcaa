"""Generate the Python modules of the ``.proto`` files (``make proto``).

protoc names generated modules after the ``.proto`` file's path relative to its include root.
The files live in ``proto/v1/`` but import as ``crest.proto.v1``, so they are compiled from a
scratch tree laid out as ``crest/proto/v1/``: the generated imports then resolve with no hand
edits. Run with the pinned grpcio-tools; a test regenerates and compares.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
PACKAGE = ("crest", "proto")
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def proto_files() -> list[Path]:
    return sorted(PROTO_DIR.rglob("*.proto"))


def generate(out_dir: Path) -> list[Path]:
    """Compile every ``.proto`` under ``proto/`` into ``out_dir`` (mirroring ``proto/``)."""
    from grpc_tools import protoc  # dev dependency, pinned in pyproject.toml

    written = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        package_dir = root.joinpath(*PACKAGE)
        sources = []
        for proto in proto_files():
            target = package_dir / proto.relative_to(PROTO_DIR)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(proto, target)
            sources.append(str(target.relative_to(root)))
        args = [
            "protoc",
            f"-I{root}",
            f"--python_out={root}",
            f"--pyi_out={root}",
            f"--grpc_python_out={root}",
            *sources,
        ]
        if protoc.main(args) != 0:
            raise RuntimeError(f"protoc failed: {' '.join(args)}")
        for path in sorted(package_dir.rglob("*")):
            if path.name.endswith(SUFFIXES):
                destination = out_dir / path.relative_to(package_dir)
                destination.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, destination)
                written.append(destination)
    return written


if __name__ == "__main__":
    for path in generate(PROTO_DIR):
        print(path.relative_to(PROTO_DIR.parent), file=sys.stderr)
