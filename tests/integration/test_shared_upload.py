"""A shared upload (ranks that combine their checks: rank 0 sends every rank's candidates'
embeddings): in process and over gRPC (in chunks and several streams), the same selection
as per-rank uploads, precise errors that change nothing, resends that change nothing, and a
journal that replays it exactly."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from crest.client.remote import RemoteCoordinator
from crest.proto import convert
from crest.proto.contract import Coordinator, RegionStatus, RegionView
from crest.proto.errors import FailedPrecondition, InvalidArgument, NotFound
from crest.service import journal
from crest.service.job import UploadChunk
from tests.integration.conftest import LoopbackCoordinator
from tests.service.helpers import fake_embeddings, make_job, see
from tests.training import blobs, job_config

pytestmark = pytest.mark.integration

WORLD = 4


def part(view: RegionView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    losses = (view.candidates % 7).astype(np.float32) / 7
    return view.candidates, fake_embeddings(view.candidates), losses


@pytest.fixture(params=["local", "remote"])
def coordinator(
    request: pytest.FixtureRequest, loopback: LoopbackCoordinator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Coordinator]:
    if request.param == "local":
        yield loopback.local
        return
    # A few rows a chunk and a few chunks a stream: one shared upload takes several streams.
    monkeypatch.setattr(convert, "rows_per_chunk", lambda dim, size, ranks=1: 37)
    monkeypatch.setattr(convert, "MAX_STREAM_CHUNKS", 4)
    with RemoteCoordinator(loopback.address) as remote:
        yield remote


def test_one_upload_for_all_ranks_selects_as_per_rank_uploads_and_bad_ones_change_nothing(
    coordinator: Coordinator,
) -> None:
    config, labels = job_config(world_size=WORLD), blobs()[1].numpy()
    shared = coordinator.create_job(config, labels, job_id="shared")
    apart = coordinator.create_job(config, labels, job_id="apart")
    views = coordinator.get_regions(shared, 0, WORLD, 0)
    assert [v.status for v in views] == [RegionStatus.EMBED] * WORLD
    parts = [part(view) for view in views]
    region = views[0].region_id

    indices, embeddings, losses = parts[2]
    nan = embeddings.copy()
    nan[1, 0] = np.nan
    n = min(len(parts[1][0]), len(parts[0][0]))
    foreign = (parts[1][0][:n], *(a[:n] for a in parts[0][1:]))  # rank 1's candidates
    bad = {
        "part 2 of the shared upload: embeddings must have shape": [
            *parts[:2],
            (indices, embeddings[:-1], losses),
            parts[3],
        ],
        "part 2 of the shared upload: embeddings contain NaN or Inf": [
            *parts[:2],
            (indices, nan, losses),
            parts[3],
        ],
        "part 3 of the shared upload: losses must be finite and >= 0": [
            *parts[:3],
            (parts[3][0], parts[3][1], -parts[3][2] - 1),
        ],
        # In the first stream: streams commit one by one, as a rank's own upload's do.
        "are not candidates of rank 0 in region": [foreign, *parts[1:]],
        "a shared upload must carry at least one example": [None] * WORLD,
    }
    for message, attempt in bad.items():
        with pytest.raises(InvalidArgument, match=message):
            coordinator.submit_shared_embeddings(shared, 0, region, attempt)
    with pytest.raises(InvalidArgument, match=r"ranks \[2, 5\] must lie in \[0, 4\)"):
        coordinator.submit_shared_embeddings(shared, 2, region, parts)
    with pytest.raises(NotFound, match="unknown job 'nope'"):
        coordinator.submit_shared_embeddings("nope", 0, region, parts)
    # Nothing of the rejected uploads was taken: every rank still embeds all its candidates.
    assert [v.status for v in coordinator.get_regions(shared, 0, WORLD, 0)] == [
        RegionStatus.EMBED
    ] * WORLD

    # Part of the ranks, then the rest (a rank that had uploaded before sends nothing).
    coordinator.submit_shared_embeddings(shared, 0, region, [parts[0], None, parts[2], None])
    assert [v.status for v in coordinator.get_regions(shared, 0, WORLD, 0)] == [
        RegionStatus.SELECTING, RegionStatus.EMBED, RegionStatus.SELECTING, RegionStatus.EMBED,
    ]  # fmt: skip
    coordinator.submit_shared_embeddings(shared, 1, region, [parts[1], None, parts[3]])
    for rank, view in enumerate(coordinator.get_regions(apart, 0, WORLD, 0)):
        coordinator.submit_embeddings(apart, rank, view.region_id, *part(view))

    got = coordinator.get_regions(shared, 0, WORLD, 0)  # waits for the selection
    want = coordinator.get_regions(apart, 0, WORLD, 0)
    assert [v.status for v in got] == [RegionStatus.READY] * WORLD
    for mine, theirs in zip(got, want, strict=True):
        assert len(mine.batches) == len(theirs.batches) > 0
        for (i, w), (j, v) in zip(mine.batches, theirs.batches, strict=True):
            assert np.array_equal(i, j) and np.array_equal(w, v)

    if isinstance(coordinator, RemoteCoordinator):
        # A resend of committed chunks (a lost reply) changes nothing, as a rank's own does.
        sent = coordinator._seq[(shared, 1)]
        chunks = -(-sum(len(p[0]) for p in (parts[1], parts[3])) // 37)
        coordinator._seq[(shared, 1)] = sent - chunks
        coordinator.submit_shared_embeddings(shared, 1, region, [parts[1], None, parts[3]])
        assert coordinator.open_session(shared, 1).committed_seq == sent
    else:  # unsequenced, as a rank's own in-process upload: the region no longer collects
        with pytest.raises(FailedPrecondition, match="is not collecting embeddings"):
            coordinator.submit_shared_embeddings(shared, 0, region, parts)


def test_a_shared_upload_replays_exactly_and_a_broken_one_changes_nothing() -> None:
    job, copy = make_job(world_size=3), make_job(world_size=3)
    views = [see(job, rank, 0) for rank in range(3)]
    see(copy, 0, 0)
    arrays = [part(v) for v in views]
    rows = tuple(len(a[0]) for a in arrays)
    flat = [np.concatenate(column) for column in zip(*arrays, strict=True)]
    with pytest.raises(InvalidArgument, match=r"rank_rows \[.*\] must be >= 0 and add up to"):
        job.receive_upload(0, 0, [UploadChunk(*flat, 1, 0, (rows[0], rows[1], rows[2] + 1))])
    again = arrays[1][0].copy()
    again[1] = again[0]
    twice = np.concatenate([arrays[0][0], again, arrays[2][0]])
    with pytest.raises(InvalidArgument, match="rank 1's rows: indices contain duplicates"):
        job.receive_upload(0, 0, [UploadChunk(twice, *flat[1:], 1, 0, rows)])
    assert job.committed_seq == [0, 0, 0] and job.region is not None
    assert not job.region.received.any()

    chunks = [UploadChunk(*flat, 1, 0, rows)]
    job.receive_upload(0, 0, chunks)
    journal.replay(copy, journal.uploaded(0, 0, chunks))
    for state in (job, copy):
        assert state.region is not None and state.region.received.all()
        assert state.committed_seq == [1, 0, 0]
    assert np.array_equal(job.region.embeddings, copy.region.embeddings)
    assert np.array_equal(job.region.losses, copy.region.losses)
