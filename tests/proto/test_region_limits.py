"""JobConfig's region limits: no valid job can ask for a region that takes minutes or GBs."""

import pytest

from crest.proto.contract import MAX_REGION_CANDIDATES, MAX_REGION_PROBLEMS, JobConfig
from crest.proto.errors import InvalidArgument


def test_the_config_that_stalled_the_coordinator_is_refused_naming_fields_and_bound() -> None:
    # issue 16: GetRegion(step 0) of this job held the event loop for 10.3 s.
    with pytest.raises(InvalidArgument) as caught:
        JobConfig(num_examples=60_000, num_classes=2, world_size=16, num_coresets=10_000)
    message = str(caught.value)
    assert message.startswith("invalid job config: world_size x num_coresets x subset_size")
    # The default subset is 4 B = 512 candidates now (1% of N = 600 then): still over.
    assert "16 ranks x 10000 coresets x 512 candidates = 81,920,000" in message
    assert f"over the limit of {MAX_REGION_CANDIDATES:,}" in message


def test_selection_problems_are_bounded_counting_adaptive_growth() -> None:
    config = dict(num_examples=200_000, num_classes=1000, world_size=16, num_coresets=4)
    assert JobConfig(**config, adaptive=False).region_problems == 64_000
    with pytest.raises(InvalidArgument) as caught:  # P grows to 4 x 8 = 32 per rank
        JobConfig(**config)
    message = str(caught.value)
    assert "world_size x num_coresets x num_classes" in message
    assert "num_coresets=4 grows to 32 with adaptive" in message
    assert "16 ranks x 32 coresets" in message and "= 512,000 selection problems" in message
    assert f"over the limit of {MAX_REGION_PROBLEMS:,}" in message
    assert "max_check_interval" in message  # what to lower
    assert JobConfig(**config, max_coresets=16).largest_num_coresets == 16  # within: 256,000


def test_a_config_exactly_at_the_limits_is_valid() -> None:
    at_problems = JobConfig(
        num_examples=200_000, num_classes=1024, world_size=16, num_coresets=16,
        subset_size=1024, adaptive=False,
    )  # fmt: skip
    assert at_problems.region_problems == MAX_REGION_PROBLEMS
    at_candidates = JobConfig(
        num_examples=1_000_000, num_classes=2, world_size=16, num_coresets=16,
        subset_size=65_536, adaptive=False,
    )  # fmt: skip
    assert at_candidates.region_candidates == MAX_REGION_CANDIDATES
    with pytest.raises(InvalidArgument, match="subset_size"):
        at_candidates.model_validate(at_candidates.model_dump() | {"subset_size": 65_537})


def test_strategy_random_draws_no_coreset_region_and_is_not_bounded_by_it() -> None:
    config = dict(num_examples=60_000, num_classes=2, world_size=16, num_coresets=10_000)
    assert JobConfig(**config, strategy="random").strategy == "random"
    with pytest.raises(InvalidArgument, match="limit"):
        JobConfig(**config, strategy="auto")  # auto opens coreset regions too


def test_max_coresets_has_the_same_bound_as_num_coresets() -> None:
    with pytest.raises(InvalidArgument, match="max_coresets"):
        JobConfig(num_examples=1000, num_classes=2, max_coresets=100_001)


def test_the_default_subset_gives_few_seats_per_class_fewer_candidates_per_seat() -> None:
    def subset(classes: int, batch: int = 128, n: int = 100_000) -> int:
        return JobConfig(num_examples=n, num_classes=classes, batch_size=batch).resolved_subset_size

    assert subset(10) == subset(21) == 512  # 6 or more seats per class: 4 candidates per seat
    assert subset(22) == subset(100) == subset(1000) == 256  # fewer: 2 per seat
    assert subset(22, batch=132) == 528  # B = 6 C
    assert subset(10, n=300) == 300 and subset(1000, n=200) == 200  # at most N
    configured = JobConfig(num_examples=10_000, num_classes=100, subset_size=999)
    assert configured.resolved_subset_size == 999
