"""JobStatus and its parts travel as protobuf, every field, both directions, exactly."""

from __future__ import annotations

import math

import pytest

from crest.proto import convert
from crest.proto.contract import (
    CheckRecord,
    JobConfig,
    JobStatus,
    RegionStats,
    RegionTotals,
    TrainerTime,
)
from crest.proto.errors import InvalidArgument
from crest.proto.v1 import coordinator_pb2 as pb


@pytest.mark.parametrize(
    ("model", "message"),
    [(JobStatus, pb.JobStatus), (RegionStats, pb.RegionStats), (CheckRecord, pb.CheckRecord),
     (TrainerTime, pb.TrainerTime), (RegionTotals, pb.RegionTotals)],
)  # fmt: skip
def test_every_status_field_travels_on_the_wire(model, message) -> None:
    assert {f.name for f in message.DESCRIPTOR.fields} == set(model.model_fields)
    for name, info in model.model_fields.items():  # None only where the wire can say "unset"
        optional = type(None) in getattr(info.annotation, "__args__", ())
        assert message.DESCRIPTOR.fields_by_name[name].has_presence == optional or (
            message.DESCRIPTOR.fields_by_name[name].message_type is not None
        ), name


def rich_status() -> JobStatus:
    """A status with every field set: optional ones both None and not, lists, +inf."""
    config = JobConfig(num_examples=1000, num_classes=3, batch_size=20, name="rich · 1",
                       strategy="auto", max_coreset_uses=None, subset_size=70)  # fmt: skip
    checks = [
        CheckRecord(step=3, loss=0.5, predicted=0.45, relative_error=0.1, new_region=False),
        CheckRecord(step=4, loss=0.0, predicted=0.25, relative_error=math.inf, new_region=True),
    ]
    closed = RegionStats(
        region_id=0, start_step=0, end_step=6, end_reason="check", num_coresets=5,
        check_interval=2, num_candidates=350, pool_size=990, pool_per_class=[330, 330, 330],
        fallback=True, dropped=10, readmitted=2, candidate_loss=1.25, selected_loss=1.5,
        weight_quantiles=[1.0, 1.5, 2.0, 3.5, 17.0], initial_loss=1.125, curvature=0.0625,
        checks=checks, mode="random", decision="coresets beat random batches 1.2x < 1.5",
        coreset_error=0.25, random_error=math.inf, embedded_by="service", staleness=7,
        checks_omitted=0,
        excluded=7, monitor="2 of 5 subsets (budget)", auto_test="measure", probe_loss=0.75,
        loss_rate_coresets=0.0125, loss_rate_random=-0.5, loss_excess_coresets=0.375,
    )  # fmt: skip
    running = RegionStats(
        region_id=1, start_step=6, num_coresets=4, check_interval=1, num_candidates=280,
        pool_size=990, pool_per_class=[330, 330, 330],
    )  # fmt: skip
    return JobStatus(
        job_id="job-1", config=config, total_steps=100, step=7, finished=False, pool_size=990,
        pool_per_class=[330, 330, 330], class_sizes=[334, 333, 333], dropped=10,
        regions=[closed, running],
        trainers=[TrainerTime(rank=0, train_seconds=12.5, selection_seconds=1e-9),
                  TrainerTime(rank=1, train_seconds=0.0, selection_seconds=0.0)],
        next_region=running.model_copy(update={"region_id": 2}),
        selection_side="service", selection_side_reason="configured", regions_omitted=3,
        omitted_totals=RegionTotals().plus([closed] * 3, config.tau),
    )  # fmt: skip


def test_a_rich_status_survives_the_round_trip() -> None:
    status = rich_status()
    for model in (status, status.regions[0], status.regions[0].checks[0], status.trainers[0]):
        assert model.model_fields_set == set(type(model).model_fields)  # a new field: set it
    message = convert.status_to_pb(status)
    assert not message.regions[1].HasField("end_step")  # None is unset, not 0
    assert message.regions[0].HasField("end_step")
    decoded = convert.status_from_pb(pb.JobStatus.FromString(message.SerializeToString()))
    assert decoded == status
    assert decoded.regions[1].end_step is None and decoded.regions[1].curvature is None
    assert decoded.regions[0].checks[1].relative_error == math.inf
    assert convert.status_from_pb(convert.status_to_pb(status.model_copy(update={
        "next_region": None}))).next_region is None, "an unset message is None"  # fmt: skip


def test_a_status_of_a_fresh_job_survives_the_round_trip() -> None:
    config = JobConfig(num_examples=10, num_classes=2, batch_size=2)
    status = JobStatus(job_id="j", config=config, total_steps=1, step=0, finished=False,
                       pool_size=10, pool_per_class=[5, 5], class_sizes=[5, 5], dropped=0,
                       regions=[])  # fmt: skip
    assert convert.status_from_pb(convert.status_to_pb(status)) == status


def test_a_status_no_model_can_hold_is_invalid_argument() -> None:
    message = convert.status_to_pb(rich_status())
    message.regions[0].mode = "bogus"
    with pytest.raises(InvalidArgument, match=r"invalid job status: regions\.0\.mode"):
        convert.status_from_pb(message)
