"""Several ranks' views of a region in one fetch (GetRegion with num_ranks, for ranks that
share their fetches): the views each rank would have fetched, paged as one region's."""

import asyncio

import numpy as np
import pytest

from crest.proto import convert
from crest.proto.contract import JobConfig, RegionStatus, RegionView
from crest.proto.errors import InvalidArgument, NotFound
from crest.service.manager import JobManager
from crest.worker.selector import InProcessSelector
from tests.service.helpers import fake_embeddings

WORLD = 4
LABELS = np.random.default_rng(0).integers(0, 4, 2000)
CONFIG = JobConfig(num_examples=2000, num_classes=4, batch_size=32, epochs=10, train_frac=0.2,
                   world_size=WORLD)  # fmt: skip


def assert_same_views(got: list[RegionView], expected: list[RegionView]) -> None:
    assert len(got) == len(expected)
    for mine, theirs in zip(got, expected, strict=True):
        assert (mine.region_id, mine.status, mine.start_step, mine.end_step) == (
            theirs.region_id, theirs.status, theirs.start_step, theirs.end_step,
        )  # fmt: skip
        assert np.array_equal(mine.candidates, theirs.candidates)
        assert np.array_equal(mine.check_indices, theirs.check_indices)
        assert len(mine.batches) == len(theirs.batches)
        for (i, w), (j, v) in zip(mine.batches, theirs.batches, strict=True):
            assert np.array_equal(i, j) and np.array_equal(w, v)


async def submit(manager: JobManager, rank: int, view: RegionView) -> None:
    await manager.submit_embeddings("j", rank, view.region_id, view.candidates,
                                    fake_embeddings(view.candidates),
                                    np.ones(len(view.candidates), np.float32), 1)  # fmt: skip


def test_a_rank_range_gets_each_ranks_own_view_waiting_only_when_no_rank_must_embed() -> None:
    async def main() -> None:
        manager = JobManager(InProcessSelector(), strict=True)
        job_id = await manager.create_job(CONFIG, LABELS, job_id="j")
        embed = await manager.get_regions(job_id, 0, WORLD, 0)
        assert [v.status for v in embed] == [RegionStatus.EMBED] * WORLD
        assert_same_views(embed, [await manager.get_region(job_id, r, 0) for r in range(WORLD)])
        for rank, view in enumerate(embed[:-1]):
            await submit(manager, rank, view)
        # The last rank still embeds: the reply comes at once, with the others selecting.
        mixed = await manager.get_regions(job_id, 0, WORLD, 0)
        assert [v.status for v in mixed] == [RegionStatus.SELECTING] * 3 + [RegionStatus.EMBED]
        await submit(manager, WORLD - 1, embed[-1])
        ready = await manager.get_regions(job_id, 0, WORLD, 0)  # waits for the selection
        assert [v.status for v in ready] == [RegionStatus.READY] * WORLD
        assert_same_views(ready, [await manager.get_region(job_id, r, 0) for r in range(WORLD)])
        assert_same_views(await manager.get_regions(job_id, 1, 2, 0), ready[1:3])

        for first, count in ((0, 5), (3, 2), (-1, 2), (0, 0), (4, 1)):
            with pytest.raises(InvalidArgument) as caught:
                await manager.get_regions(job_id, first, count, 0)
            assert str(caught.value) == (
                f"ranks {first} to {first + count - 1} ({count} from {first}) are not within "
                f"job 'j''s ranks 0 to {WORLD - 1}"
            )
        with pytest.raises(NotFound, match="unknown job 'nope'"):
            await manager.get_regions("nope", 0, WORLD, 0)
        manager.selector.close()

    asyncio.run(main())


def views(seed: int) -> list[RegionView]:
    rng = np.random.default_rng(seed)

    def batch(size: int) -> tuple[np.ndarray, np.ndarray]:
        return rng.integers(0, 10**6, size), rng.random(size).astype(np.float32)

    statuses = (RegionStatus.READY, RegionStatus.SELECTING, RegionStatus.READY)
    return [
        RegionView(
            region_id=7,
            status=status,
            start_step=40,
            end_step=60,
            check_interval=3,
            candidates=rng.integers(0, 10**6, 300 + 50 * rank),
            check_indices=rng.integers(0, 10**6, 20 + rank),
            batches=tuple(batch(64 + rank) for _ in range(3))
            if status is RegionStatus.READY
            else (),
            initial_loss=1.5,
        )
        for rank, status in enumerate(statuses)
    ]


@pytest.mark.parametrize("page_bytes", [convert.PAGE_BYTES, 4096])
def test_a_rank_range_travels_in_pages_and_splits_back_into_its_ranks(
    monkeypatch: pytest.MonkeyPatch, page_bytes: int
) -> None:
    monkeypatch.setattr(convert, "PAGE_BYTES", page_bytes)
    sent = views(0)
    pages = convert.regions_to_pages(sent)
    assert (page_bytes < 10_000) == (len(pages) > 1)
    assert all(p.status == convert.pb.SELECTING for p in pages), "the least advanced rank's"
    assert all(p.ByteSize() <= page_bytes + 4096 for p in pages)
    assert [convert.regions_to_pb(sent, n) for n in range(len(pages))] == pages
    assert_same_views(convert.regions_from_pb(3, *pages), sent)
    with pytest.raises(InvalidArgument, match="a reply for 4 ranks states 3 ranks' statuses"):
        convert.regions_from_pb(4, *pages)
