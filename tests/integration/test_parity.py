"""In-process and remote coordinators agree: the same bad input fails with the same error
class and message in both modes, the same limits apply, and the same job reads the same."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from crest.client.remote import RemoteCoordinator
from crest.proto.contract import CheckReport, Coordinator
from crest.proto.errors import InvalidArgument
from tests.integration.conftest import LoopbackCoordinator
from tests.training import blobs, job_config, train

pytestmark = pytest.mark.integration

Case = Callable[[Coordinator], object]


def outcome(call: Callable[[], object]) -> tuple[type, str]:
    """The error a call raised (class and message), or ``(type(None), "")``."""
    try:
        call()
    except Exception as err:
        return type(err), str(err)
    return type(None), ""


def assert_same_errors(loopback: LoopbackCoordinator, cases: dict[str, Case]) -> None:
    """Each case fails, in-process (through the loopback's own manager) and remotely, with
    the same error; a failed call changes nothing, so one job serves every case."""
    with RemoteCoordinator(loopback.address, retry_s=5, call_timeout_s=30) as remote:
        for name, case in cases.items():
            local_error = outcome(lambda: case(loopback.local))  # noqa: B023 (called at once)
            remote_error = outcome(lambda: case(remote))  # noqa: B023
            assert local_error[0] is not type(None), f"{name}: succeeded in-process"
            assert local_error == remote_error, name


@pytest.fixture
def job(loopback: LoopbackCoordinator) -> tuple[str, np.ndarray]:
    """A job whose first region collects embeddings; its candidates for rank 0."""
    job_id = loopback.local.create_job(job_config(), blobs()[1].numpy(), job_id="parity")
    return job_id, loopback.local.get_region(job_id, 0, 0).candidates


def test_bad_job_creations_fail_alike(loopback: LoopbackCoordinator) -> None:
    labels = blobs()[1].numpy()
    config = job_config()
    out_of_range = labels.copy()
    out_of_range[0] = 7
    one_class_empty = np.where(labels == 3, 0, labels)
    loopback.local.create_job(config, labels, job_id="exists")
    cases: dict[str, Case] = {
        "float labels": lambda c: c.create_job(config, labels.astype(np.float32)),
        "string labels": lambda c: c.create_job(config, labels.astype(str)),
        "2-D labels": lambda c: c.create_job(config, np.stack([labels, labels], 1)),
        "too few labels": lambda c: c.create_job(config, labels[:-1]),
        "too many labels": lambda c: c.create_job(config, np.append(labels, 0)),
        "labels out of range": lambda c: c.create_job(config, out_of_range),
        "an empty class": lambda c: c.create_job(config, one_class_empty),
        "an invalid config": lambda c: c.create_job(
            config.model_copy(update={"tau": -1.0, "batch_size": 0}), labels
        ),
        "a config the wire cannot hold": lambda c: c.create_job(
            job_config(max_coresets=2**40), labels
        ),
        "a config value of the wrong type": lambda c: c.create_job(
            config.model_copy(update={"tau": "high"}), labels
        ),
        "a bad job id": lambda c: c.create_job(config, labels, job_id="x" * 200),
        "an invalid dict of fields": lambda c: c.create_job({"num_examples": -1}, labels),
        "another config": lambda c: c.create_job(job_config(seed=9), labels, job_id="exists"),
    }
    assert_same_errors(loopback, cases)
    assert sorted(loopback.manager.job_ids()) == ["exists"]


def test_bad_uploads_fail_alike_and_change_nothing(loopback, job) -> None:
    job_id, candidates = job
    n = len(candidates)
    embeddings = np.ones((n, 4), np.float32)
    losses = np.ones(n, np.float32)
    nan = embeddings.copy()
    nan[n // 2, 1] = np.nan
    stranger = candidates.copy()
    stranger[-1] = 10**9
    # A duplicate far apart: the remote client's chunks would each look fine on their own.
    duplicate = candidates.copy()
    duplicate[-1] = duplicate[0]

    def upload(indices=candidates, emb=embeddings, loss=losses, rank=0, region=0) -> Case:
        return lambda c: c.submit_embeddings(job_id, rank, region, indices, emb, loss)

    cases = {
        "NaN embeddings": upload(emb=nan),
        "integer embeddings": upload(emb=embeddings.astype(np.int32)),
        "1-D embeddings": upload(emb=embeddings[:, 0]),
        "too few embedding rows": upload(emb=embeddings[1:]),
        "zero-dimensional embeddings": upload(emb=np.ones((n, 0), np.float32)),
        "2-D indices": upload(indices=candidates[:, None]),
        "float indices": upload(indices=candidates.astype(np.float64)),
        "no examples": upload(candidates[:0], embeddings[:0], losses[:0]),
        "duplicate indices": upload(indices=duplicate),
        "a non-candidate": upload(indices=stranger),
        "negative losses": upload(loss=-losses),
        "losses of another shape": upload(loss=losses[:-1]),
        "integer losses": upload(loss=losses.astype(np.int64)),
        "a bad rank": upload(rank=3),
        "a stale region": upload(region=1),
        "an unknown job": lambda c: c.submit_embeddings(
            "nope", 0, 0, candidates, embeddings, losses
        ),
    }
    before = loopback.local.job_status(job_id)
    assert_same_errors(loopback, cases)
    assert loopback.local.job_status(job_id) == before
    assert loopback.local.open_session(job_id, 0).committed_seq == 0


def test_bad_reads_and_reports_fail_alike(loopback, job) -> None:
    job_id, _ = job
    report = CheckReport(region_id=0, step=0, loss_sum=1.0, count=1, linear=0.0,
                         quadratic=0.0, curvature=0.0)  # fmt: skip
    cases: dict[str, Case] = {
        "a negative step": lambda c: c.get_region(job_id, 0, -1),
        "a rank out of range": lambda c: c.get_region(job_id, 2, 0),
        "a session of a rank out of range": lambda c: c.open_session(job_id, -1),
        "an unknown job's status": lambda c: c.job_status("nope"),
        "a bad job id": lambda c: c.open_session("\x00", 0),
        "a check before the coresets": lambda c: c.report_check(job_id, 0, report),
    }
    assert_same_errors(loopback, cases)


def test_a_region_over_one_message_reads_alike_in_pages(loopback: LoopbackCoordinator) -> None:
    """Over 4 MiB of candidates for one rank: in pages remotely, and through the same pages
    in-process (both used to fail with RESOURCE_EXHAUSTED)."""
    n = 600_000
    labels = np.arange(n) % 2
    config = job_config(num_examples=n, num_classes=2, subset_size=120_000, epochs=1)
    job_id = loopback.local.create_job(config, labels, job_id="huge")
    here = loopback.local.get_region(job_id, 0, 0)
    with RemoteCoordinator(loopback.address, retry_s=5, call_timeout_s=60) as remote:
        there = remote.get_region(job_id, 0, 0)
    assert len(here.candidates) * 8 > 4 * 2**20
    assert np.array_equal(here.candidates, there.candidates)
    assert np.array_equal(here.check_indices, there.check_indices)
    assert (here.region_id, here.status, here.end_step) == (there.region_id, there.status,
                                                            there.end_step)  # fmt: skip


def test_float64_embeddings_work_alike_and_select_the_same(loopback) -> None:
    """What one mode accepts, the other does: float64 embeddings and losses are cast in both
    (in-process they used to be refused, remotely cast)."""
    labels = blobs()[1].numpy()
    batches = []
    with RemoteCoordinator(loopback.address, retry_s=5) as remote:
        for name, coordinator in [("local", loopback.local), ("remote", remote)]:
            job_id = coordinator.create_job(job_config(), labels, job_id=name)
            view = coordinator.get_region(job_id, 0, 0)
            rng = np.random.default_rng(1)  # the same arrays for both
            embeddings, losses = (
                rng.random((len(view.candidates), 6)),
                rng.random(len(view.candidates)),
            )
            coordinator.submit_embeddings(job_id, 0, 0, view.candidates, embeddings, losses)
            ready = coordinator.get_region(job_id, 0, 0)
            batches.append([(i.tolist(), w.tolist()) for i, w in ready.batches])
    assert batches[0] == batches[1]
    assert batches[0]


def test_a_trained_job_reads_the_same_in_both_modes(loopback: LoopbackCoordinator) -> None:
    """The remote status (protobuf since it stopped travelling as JSON) equals the
    in-process one field for field, and the regions are the same arrays."""
    with RemoteCoordinator(loopback.address) as remote:
        job_id = remote.create_job(job_config(seed=4), blobs()[1].numpy(), job_id="trained")
        session, _ = train(remote, job_id)
        remote_status, local_status = remote.job_status(job_id), loopback.local.job_status(job_id)
        assert remote_status == local_status
        assert remote_status.finished and remote_status.regions[0].checks
        for step in (0, session.step - 1):
            here, there = (
                loopback.local.get_region(job_id, 0, step),
                remote.get_region(job_id, 0, step),
            )
            assert here.region_id == there.region_id
            assert np.array_equal(here.candidates, there.candidates)
            assert [b[0].tolist() for b in here.batches] == [b[0].tolist() for b in there.batches]


def test_in_process_regions_are_the_callers_own_copies(loopback, job) -> None:
    job_id, candidates = job
    view = loopback.local.get_region(job_id, 0, 0)
    view.candidates[:] = -1  # a trainer may write to what it got, as it may remotely
    assert np.array_equal(loopback.local.get_region(job_id, 0, 0).candidates, candidates)
    with pytest.raises(InvalidArgument, match="at least one example"):
        loopback.local.submit_embeddings(job_id, 0, 0, candidates[:0], np.ones((0, 3)),
                                         np.ones(0))  # fmt: skip
