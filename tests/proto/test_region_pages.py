"""Large regions travel in pages under the message limit and reassemble exactly; a status
too long for one message leaves its oldest regions out and says so."""

from __future__ import annotations

import numpy as np
import pytest

from crest.proto import convert
from crest.proto.contract import (
    MAX_REGION_CANDIDATES,
    CheckRecord,
    JobConfig,
    JobStatus,
    RegionStats,
    RegionStatus,
    RegionTotals,
    RegionView,
    region_totals,
)
from crest.proto.errors import InvalidArgument, ResourceExhausted
from crest.proto.v1 import coordinator_pb2 as pb


def region(candidates: int, checks: int, batch_sizes: list[int], seed: int = 0) -> RegionView:
    rng = np.random.default_rng(seed)
    batches = tuple(
        (rng.integers(0, 2**40, size), rng.random(size, dtype=np.float32)) for size in batch_sizes
    )
    return RegionView(
        region_id=7, status=RegionStatus.READY, start_step=40, end_step=90, check_interval=3,
        candidates=rng.integers(0, 2**40, candidates), check_indices=rng.integers(0, 2**40, checks),
        batches=batches, initial_loss=1.5, wants_weights=-1,
    )  # fmt: skip


def assert_same(got: RegionView, want: RegionView) -> None:
    assert (got.region_id, got.status, got.start_step, got.end_step, got.check_interval,
            got.initial_loss) == (want.region_id, want.status, want.start_step, want.end_step,
                                  want.check_interval, want.initial_loss)  # fmt: skip
    assert np.array_equal(got.candidates, want.candidates)
    assert np.array_equal(got.check_indices, want.check_indices)
    assert len(got.batches) == len(want.batches)
    for (i, w), (want_i, want_w) in zip(got.batches, want.batches, strict=True):
        assert np.array_equal(i, want_i) and np.array_equal(w, want_w)


def test_a_region_that_fits_one_message_is_one_page_as_before() -> None:
    view = region(3000, 256, [128] * 40)
    pages = convert.region_to_pages(view)
    assert len(pages) == 1 and pages[0].num_pages == 1 and not pages[0].continues_batch
    assert convert.region_to_pb(view, None) == pages[0]  # a client that does not page
    assert_same(convert.region_from_pb(*pages), view)
    old = pb.Region.FromString(pages[0].SerializeToString())  # a coordinator that does not page
    for name in ("num_pages", "num_candidates", "num_check_indices", "num_batches"):
        old.ClearField(name)
    assert_same(convert.region_from_pb(old), view)


@pytest.mark.parametrize(
    "sizes",
    [
        (700_000, 5_000, [5, 400_000, 1, 0, 7]),  # a batch spanning pages, an empty batch
        (2_000_000, 0, []),  # candidates only, over three pages
        (0, 0, [1] * 1000 + [400_000]),  # many batches: their framing counts too
        (0, 0, [1_000_000]),  # the largest batch a config allows (12 MB)
    ],
)
def test_a_large_region_travels_in_pages_under_the_limit_and_reassembles_exactly(sizes) -> None:
    view = region(*sizes)
    pages = convert.region_to_pages(view)
    assert len(pages) > 1
    for number, page in enumerate(pages):
        assert page.ByteSize() <= convert.MAX_MESSAGE_BYTES
        assert (page.page, page.num_pages) == (number, len(pages))
        assert page == convert.region_to_pb(view, number)  # what the server sends for it
    wire = [pb.Region.FromString(page.SerializeToString()) for page in pages]
    got = convert.region_from_pb(*wire)
    assert_same(got, view)
    assert got.candidates.flags.writeable and all(b[0].flags.writeable for b in got.batches)


@pytest.mark.parametrize("size", [0, 1, 127, 128, 2**14, 1_000_000])
def test_the_layout_counts_each_batch_piece_framing_generously(size: int) -> None:
    # Pages hold up to 100,000 batches of one example (num_coresets <= 100,000): each
    # piece's framing beyond its 12 bytes an element must be within the layout's margin.
    piece = pb.WeightedBatch(
        indices=convert.to_array(np.full(size, 2**62, np.int64)),
        weights=convert.to_array(np.ones(size, np.float32)),
    )
    in_page = pb.Region(batches=[piece]).ByteSize()  # with its tag and length prefix
    assert in_page - 12 * size <= convert._BATCH_PIECE_BYTES


def test_the_largest_region_a_config_allows_fits_its_pages() -> None:
    # One rank holding MAX_REGION_CANDIDATES (128 MiB of indices) with its batches.
    config = JobConfig(num_examples=2**24, num_classes=2, num_coresets=256, adaptive=False,
                       subset_size=MAX_REGION_CANDIDATES // 256, batch_size=4096)  # fmt: skip
    assert config.region_candidates == MAX_REGION_CANDIDATES
    view = RegionView(
        region_id=0, status=RegionStatus.READY, start_step=0, end_step=1,
        candidates=np.zeros(MAX_REGION_CANDIDATES, np.int64),
        batches=((np.zeros(4096, np.int64), np.ones(4096, np.float32)),) * 256,
    )  # fmt: skip
    last = convert.region_to_pb(view, 0).num_pages - 1
    assert last >= 32
    for page in (0, last // 2, last):
        assert convert.region_to_pb(view, page).ByteSize() <= convert.MAX_MESSAGE_BYTES


def test_bad_pages_are_precise_errors() -> None:
    view = region(1_000_000, 0, [10])
    pages = convert.region_to_pages(view)
    assert len(pages) == 2
    with pytest.raises(InvalidArgument, match=r"page 2 of region 7 does not exist: it has 2 "
                                              r"page\(s\), 0 to 1"):  # fmt: skip
        convert.region_to_pb(view, 2)
    with pytest.raises(ResourceExhausted, match=r"takes 2 messages for one rank.*does not page"):
        convert.region_to_pb(view, None)
    with pytest.raises(InvalidArgument, match=r"got pages \[0\]"):
        convert.region_from_pb(pages[0])  # one missing
    with pytest.raises(InvalidArgument, match=r"got pages \[1, 0\]"):
        convert.region_from_pb(pages[1], pages[0])
    other = convert.region_to_pages(region(1_000_001, 0, [10]))
    assert not convert.same_region(pages[0], other[1])
    with pytest.raises(InvalidArgument, match="differing regions"):
        convert.region_from_pb(pages[0], other[1])
    short = pb.Region()
    short.CopyFrom(pages[1])
    short.candidates.CopyFrom(convert.to_array(np.zeros(3, np.int64)))
    with pytest.raises(InvalidArgument, match=r"carry .* candidates.*page 0 stated 1000000"):
        convert.region_from_pb(pages[0], short)


def long_status(regions: int, classes: int) -> JobStatus:
    config = JobConfig(num_examples=1_281_167, num_classes=classes, num_coresets=1,
                       adaptive=False)  # fmt: skip
    per_class = [20_000] * classes  # 3 bytes each on the wire
    stats = [
        RegionStats(
            region_id=r,
            start_step=10 * r,
            end_step=10 * r + 10,
            num_coresets=5,
            check_interval=1,
            num_candidates=64_000,
            pool_size=1_281_000,
            pool_per_class=per_class,
        )
        for r in range(regions)
    ]
    return JobStatus(
        job_id="long", config=config, total_steps=10 * regions, step=10 * regions - 5,
        finished=False, pool_size=1_281_000, pool_per_class=per_class, class_sizes=per_class,
        dropped=0, regions=stats,
    )  # fmt: skip


def test_a_long_status_leaves_out_its_oldest_regions_to_fit_one_message() -> None:
    # 300 KB of counts a region at C = 100,000 (as 3 KB at C = 1000 with thousands of them)
    status = long_status(16, 100_000)
    assert convert.status_to_pb(status, limit=None).ByteSize() > convert.MAX_MESSAGE_BYTES
    message = convert.status_to_pb(status)
    assert message.ByteSize() <= convert.MAX_MESSAGE_BYTES
    kept = len(message.regions)
    assert 0 < kept < 16 and message.regions_omitted == 16 - kept
    decoded = convert.status_from_pb(message)
    assert decoded.regions == status.regions[-kept:]  # the newest ones, whole
    assert decoded.regions_omitted + len(decoded.regions) == 16
    assert region_totals(decoded) == region_totals(status), "totals count the ones left out"
    assert decoded.omitted_totals.regions == 16 - kept
    whole = {"regions": status.regions, "regions_omitted": 0, "omitted_totals": RegionTotals()}
    assert decoded.model_copy(update=whole) == status
    short = long_status(3, 100_000)
    assert convert.status_from_pb(convert.status_to_pb(short)) == short  # nothing left out


def test_a_region_of_very_many_checks_leaves_its_oldest_checks_out() -> None:
    # One check a step and no bound on a region's uses: one region can outgrow a message
    # (~130,000 checks); here 10,000 outgrow a 100 kB limit.
    status = long_status(2, 10)
    checks = [CheckRecord(step=s, loss=1.0 / (s + 1), predicted=0.5, relative_error=0.25,
                          new_region=False) for s in range(10_000)]  # fmt: skip
    status.regions[-1].checks = checks
    message = convert.status_to_pb(status, limit=100_000)
    assert message.ByteSize() <= 100_000
    assert message.regions_omitted == 1 and len(message.regions) == 1
    kept = message.regions[0]
    assert 0 < len(kept.checks) < len(checks)
    assert kept.checks_omitted == len(checks) - len(kept.checks)
    decoded = convert.status_from_pb(message)
    assert decoded.regions[0].checks == checks[-len(kept.checks) :]
