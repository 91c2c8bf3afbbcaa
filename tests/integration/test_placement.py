"""``crest serve --coordinator-cores A --selector-cores B``: the coordinator process on A, its
selector thread on B, and the same batches as an unpinned coordinator."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

from crest.client.remote import RemoteCoordinator
from crest.embedded import local_coordinator
from crest.worker.placement import available_cores
from tests.integration.test_processes import CoordinatorProcess
from tests.training import blobs, job_config, train

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(len(available_cores()) < 2, reason="needs two cores"),
]


def thread_cores(pid: int) -> list[tuple[int, ...]]:
    """The cores each thread of process ``pid`` may run on."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            found.append(tuple(sorted(os.sched_getaffinity(int(task.name)))))
    return found


def test_serve_pins_itself_and_its_selector_thread_apart() -> None:
    coordinator_core, selector_core = available_cores()[:2]
    labels = blobs()[1].numpy()
    config = job_config(seed=3)
    with local_coordinator() as local:
        expected = train(local, local.create_job(config, labels))[1]

    flags = ("--coordinator-cores", str(coordinator_core), "--selector-cores", str(selector_core))
    with CoordinatorProcess(*flags) as coordinator:
        assert coordinator.process is not None
        with RemoteCoordinator(coordinator.address) as remote:
            served = train(remote, remote.create_job(config, labels, job_id="pinned"))[1]
        cores = thread_cores(coordinator.process.pid)
        output = coordinator.stop()
        assert coordinator.process.returncode == 0, output
    assert served == expected
    # The in-process selector's one thread on its core; every other thread on the coordinator's.
    assert cores.count((selector_core,)) == 1, cores
    assert set(cores) == {(coordinator_core,), (selector_core,)}, cores
