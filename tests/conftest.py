"""Shared fixtures: one local Ray for the whole session (started only if a test needs it)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# A selection bug fails loudly in tests (in-process coordinators and `crest serve` children
# read it) instead of falling back to random batches, as production does.
os.environ.setdefault("CREST_STRICT", "1")


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A real local Ray: 2 CPUs, no dashboard, a 256 MiB object store (its default would
    claim ~30% of memory). Token authentication is off, as in CI: a local test cluster has no
    other client to keep out."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 * 2**20)
    try:
        yield
    finally:
        ray.shutdown()
