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
    # The default subset is 4 max(B, C) = 512 candidates now (1% of N = 600 then): still over.
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
