"""A region over one message travels in pages: a trainer fetches and trains through it on a
real loopback server, its pages reassemble exactly to what the coordinator holds, a small
region still takes one call, and bad page requests get precise errors; several ranks' views
(a shared fetch) page alike."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from crest.client.remote import RemoteCoordinator
from crest.proto import convert
from crest.proto.contract import RegionStatus, RegionView
from crest.proto.errors import InvalidArgument, NotFound
from crest.proto.v1 import coordinator_pb2 as pb
from crest.proto.v1 import coordinator_pb2_grpc as pb_grpc
from crest.service.server import CHANNEL_OPTIONS
from tests.integration.conftest import LoopbackCoordinator, start_loopback, stop_loopback
from tests.training import blobs, job_config, train

pytestmark = pytest.mark.integration

N = 600_000
# 4160 disjoint subsets of 128 candidates: 532,480 distinct candidates (4.3 MB of indices)
# for the one rank, in 16,640 small selection problems (4 classes x 32 rows), selected in a
# few seconds; 19 steps in one region (tau: no check ends it).
CONFIG = dict(num_examples=N, batch_size=16, subset_size=128, num_coresets=4160,
              adaptive=False, epochs=1, train_frac=0.0005, tau=1e6)  # fmt: skip
CANDIDATES = 4160 * 128


@pytest.fixture
def patient_loopback():
    """A loopback coordinator whose selections may take long on a busy machine (a timeout
    would serve random batches: no failure, but not the path under test)."""
    handle, server, health_task = start_loopback(selection_timeout_s=600.0)
    try:
        yield handle
    finally:
        stop_loopback(handle, server, health_task)


def held(loopback: LoopbackCoordinator, job_id: str, step: int) -> RegionView:
    """The region as the coordinator itself holds it (no pages, no conversion)."""
    return loopback.local.submit(loopback.manager.get_region(job_id, 0, step)).result()


def assert_same_region(got: RegionView, want: RegionView) -> None:
    assert (got.region_id, got.status, got.start_step, got.end_step) == (
        want.region_id, want.status, want.start_step, want.end_step
    )  # fmt: skip
    assert np.array_equal(got.candidates, want.candidates)
    assert np.array_equal(got.check_indices, want.check_indices)
    assert len(got.batches) == len(want.batches)
    for (indices, weights), (want_indices, want_weights) in zip(
        got.batches, want.batches, strict=True
    ):
        assert np.array_equal(indices, want_indices) and np.array_equal(weights, want_weights)


def test_a_region_over_one_message_is_fetched_in_pages_and_trained_through(
    patient_loopback: LoopbackCoordinator,
) -> None:
    loopback = patient_loopback
    data = blobs(N)
    with RemoteCoordinator(loopback.address, call_timeout_s=120) as remote:
        job_id = remote.create_job(job_config(**CONFIG), data[1].numpy(), job_id="paged")
        embed = remote.get_region(job_id, 0, 0)
        assert embed.status is RegionStatus.EMBED and len(embed.candidates) == CANDIDATES
        assert_same_region(embed, held(loopback, job_id, 0))
        _, seen = train(remote, job_id, data=data)  # uploads 15 MB of embeddings too
        status = remote.job_status(job_id)
        ready = remote.get_region(job_id, 0, 0)
    assert status.finished and len(seen) == status.total_steps == 19
    assert len(status.regions) == 1 and not status.regions[0].fallback
    assert ready.status is RegionStatus.READY and len(ready.batches) == 4160
    assert_same_region(ready, held(loopback, job_id, 0))
    assert_same_region(loopback.local.get_region(job_id, 0, 0), ready)  # in-process alike
    first = ready.batches[0]
    assert seen[0][1] == first[0].tolist() and seen[0][2] == first[1].tolist()

    with grpc.insecure_channel(loopback.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.CoordinatorStub(channel)

        def get(**fields) -> pb.Region:
            return stub.GetRegion(pb.GetRegionRequest(job_id=job_id, rank=0, step=0, **fields),
                                  timeout=60)  # fmt: skip

        def error(**fields) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.RpcError) as caught:
                get(**fields)
            return caught.value.code(), caught.value.details()

        pages = [get(page=0)]
        pages += [get(page=p, region_id=0) for p in range(1, pages[0].num_pages)]
        assert len(pages) == 2
        assert all(len(p.SerializeToString()) <= convert.MAX_MESSAGE_BYTES for p in pages)
        assert_same_region(convert.region_from_pb(*pages), ready)

        code, details = error()  # a client that does not page
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "takes 2 messages for one rank" in details and "does not page" in details
        code, details = error(page=2, region_id=0)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert details == "page 2 of region 0 does not exist: it has 2 page(s), 0 to 1"
        assert error(page=-1) == (grpc.StatusCode.INVALID_ARGUMENT, "page must be >= 0, got -1")
        code, details = error(page=1, region_id=3)
        assert code is grpc.StatusCode.FAILED_PRECONDITION
        assert "step 0 is in region 0 now, not in region 3" in details
        assert "fetch page 0 again" in details


def test_a_region_that_fits_one_message_takes_one_call(loopback, monkeypatch) -> None:
    with RemoteCoordinator(loopback.address) as remote:
        job_id = remote.create_job(job_config(), blobs()[1].numpy())
        calls = []
        unary = remote._unary
        monkeypatch.setattr(
            remote, "_unary", lambda name, *a, **k: (calls.append(name), unary(name, *a, **k))[1]
        )
        view = remote.get_region(job_id, 0, 0)
    assert calls == ["GetRegion"] and len(view.candidates) > 0


def test_several_ranks_regions_travel_in_pages_over_grpc_with_precise_errors(
    loopback: LoopbackCoordinator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(convert, "PAGE_BYTES", 2048)  # the server's pages: a few hundred rows
    world = 4
    with RemoteCoordinator(loopback.address) as remote:
        job_id = remote.create_job(job_config(world_size=world), blobs()[1].numpy(), job_id="r")
        views = remote.get_regions(job_id, 0, world, 0)
        assert [v.status for v in views] == [RegionStatus.EMBED] * world
        pages = loopback.local.submit(loopback.manager.get_regions(job_id, 0, world, 0)).result()
        assert len(convert.regions_to_pages(pages)) > 1
        for rank, view in enumerate(views):
            assert_same_region(view, remote.get_region(job_id, rank, 0))
        assert_same_region(remote.get_regions(job_id, 2, 2, 0)[1], views[3])
        with pytest.raises(InvalidArgument) as caught:
            remote.get_regions(job_id, 2, 3, 0)
        assert str(caught.value) == "ranks 2 to 4 (3 from 2) are not within job 'r''s ranks 0 to 3"
        with pytest.raises(NotFound, match="unknown job 'nope'"):
            remote.get_regions("nope", 0, world, 0)
    with grpc.insecure_channel(loopback.address, options=CHANNEL_OPTIONS) as channel:
        request = pb.GetRegionRequest(job_id=job_id, rank=0, step=0, num_ranks=world)
        with pytest.raises(grpc.RpcError) as unpaged:
            pb_grpc.CoordinatorStub(channel).GetRegion(request, timeout=60)
    assert unpaged.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "several ranks (num_ranks) must name a page" in unpaged.value.details()
