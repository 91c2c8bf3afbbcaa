"""JobConfig and the wire's JobConfig must carry the same fields (no silent drop remotely)."""

import pytest

from crest.proto import convert
from crest.proto.contract import JobConfig
from crest.proto.errors import InvalidArgument
from crest.proto.v1 import coordinator_pb2 as pb


def test_every_job_config_field_travels_on_the_wire() -> None:
    wire = {f.name for f in pb.JobConfig.DESCRIPTOR.fields}
    assert wire == set(JobConfig.model_fields)
    assert set(convert._OPTIONAL_CONFIG_FIELDS) == wire - {"num_examples", "num_classes"}


def test_a_config_survives_the_round_trip_with_every_field_set() -> None:
    config = JobConfig(
        num_examples=1000, num_classes=7, batch_size=20, name="tabular · run 3",
        class_weighting="balanced", allow_empty_classes=True, max_coreset_uses=None,
        strategy="auto", subset_size=70,
    )  # fmt: skip
    assert JobConfig.model_validate(convert.config_from_pb(convert.config_to_pb(config))) == config


def test_a_value_the_wire_cannot_hold_is_invalid_argument_naming_the_field() -> None:
    config = JobConfig(num_examples=1000, num_classes=7, batch_size=20, check_sample_size=2**31)
    expected = r"^invalid job config: check_sample_size: cannot travel"
    with pytest.raises(InvalidArgument, match=expected):
        convert.config_to_pb(config)


def test_auto_loss_excess_bars_must_leave_room_between_them() -> None:
    with pytest.raises(InvalidArgument, match="auto_min_loss_excess must be below"):
        JobConfig(num_examples=1000, num_classes=7, auto_min_loss_excess=0.5,
                  auto_max_loss_excess=0.5)  # fmt: skip
    config = JobConfig(num_examples=1000, num_classes=7, auto_min_loss_excess=-1e6)
    assert config.auto_max_loss_excess == 0.26
