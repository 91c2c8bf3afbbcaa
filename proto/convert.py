"""Conversions between the plain-Python contract and the ``crest.v1`` protobuf messages.

Both sides use these; decoding validates everything a peer could get wrong (dtype, shape,
byte length, sizes) and raises :class:`InvalidArgument` with a precise message.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from crest.proto.contract import (
    CheckDecision,
    CheckReport,
    JobConfig,
    RegionStatus,
    RegionView,
    SessionInfo,
)
from crest.proto.errors import InvalidArgument
from crest.proto.v1 import coordinator_pb2 as pb

MAX_MESSAGE_BYTES: int = pb.MAX_MESSAGE_BYTES
# Chunks of one upload stream: the coordinator holds a stream whole until it commits it.
MAX_STREAM_CHUNKS: int = pb.MAX_STREAM_CHUNKS
# Room for a message's non-array fields when arrays are sized to fit one message.
MESSAGE_OVERHEAD_BYTES = 4096

_DTYPES: dict[pb.DType, np.dtype] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.INT64: np.dtype("<i8"),
    pb.INT32: np.dtype("<i4"),
}
_CODES = {dtype: code for code, dtype in _DTYPES.items()}

_STATUS_TO_PB = {
    RegionStatus.EMBED: pb.EMBED,
    RegionStatus.SELECTING: pb.SELECTING,
    RegionStatus.READY: pb.READY,
    RegionStatus.DONE: pb.DONE,
}
_STATUS_FROM_PB = {code: status for status, code in _STATUS_TO_PB.items()}


def to_array(values: np.ndarray) -> pb.Array:
    """An array message: little-endian bytes, dtype and shape."""
    values = np.asarray(values)
    dtype = values.dtype.newbyteorder("<")
    if dtype not in _CODES:
        raise InvalidArgument(f"cannot send arrays of dtype {values.dtype}")
    data = np.ascontiguousarray(values, dtype=dtype).tobytes()
    return pb.Array(dtype=_CODES[dtype], shape=list(values.shape), data=data)


def from_array(message: pb.Array, name: str, dtypes: tuple[int, ...], ndim: int) -> np.ndarray:
    """Decode and validate an array message (a read-only view of the message's bytes).

    Args:
        name: what the array is, for error messages. dtypes: accepted ``pb.DType`` codes.
        ndim: required number of dimensions.
    """
    if message.dtype not in dtypes:
        allowed = ", ".join(pb.DType.Name(d) for d in dtypes)
        got = pb.DType.Name(message.dtype) if message.dtype in pb.DType.values() else message.dtype
        raise InvalidArgument(f"{name}: dtype must be {allowed}, got {got}")
    shape = tuple(message.shape)
    if len(shape) != ndim or any(d < 0 for d in shape):
        raise InvalidArgument(f"{name}: shape must have {ndim} non-negative dims, got {shape}")
    dtype = _DTYPES[message.dtype]
    count = math.prod(shape)
    if count * dtype.itemsize != len(message.data):
        raise InvalidArgument(
            f"{name}: shape {shape} of {dtype.name} needs {count * dtype.itemsize} bytes, "
            f"got {len(message.data)}"
        )
    return np.frombuffer(message.data, dtype=dtype).reshape(shape)


# ------------------------------------------------------------------------------ config
# Derived from the wire message, so a field added to the proto travels without an edit here;
# tests/test_contract.py checks that these are exactly JobConfig's optional fields.
_REQUIRED_CONFIG_FIELDS = ("num_examples", "num_classes")
_OPTIONAL_CONFIG_FIELDS = tuple(
    f.name for f in pb.JobConfig.DESCRIPTOR.fields if f.name not in _REQUIRED_CONFIG_FIELDS
)


def config_to_pb(config: JobConfig) -> pb.JobConfig:
    fields = {name: getattr(config, name) for name in _OPTIONAL_CONFIG_FIELDS}
    if fields["max_coreset_uses"] is None:
        fields["max_coreset_uses"] = 0  # the wire's "unbounded"
    present = {k: v for k, v in fields.items() if v is not None}
    return pb.JobConfig(num_examples=config.num_examples, num_classes=config.num_classes, **present)


def config_from_pb(message: pb.JobConfig) -> dict[str, Any]:
    """A dict for :class:`JobConfig` validation (unset optional fields take defaults)."""
    fields: dict[str, Any] = {
        "num_examples": message.num_examples,
        "num_classes": message.num_classes,
    }
    for name in _OPTIONAL_CONFIG_FIELDS:
        if message.HasField(name):
            fields[name] = getattr(message, name)
    if fields.get("max_coreset_uses") == 0:
        fields["max_coreset_uses"] = None
    return fields


# ----------------------------------------------------------------------------- messages
def session_to_pb(info: SessionInfo) -> pb.OpenSessionResponse:
    return pb.OpenSessionResponse(
        job_id=info.job_id,
        rank=info.rank,
        world_size=info.world_size,
        total_steps=info.total_steps,
        steps_per_virtual_epoch=info.steps_per_virtual_epoch,
        num_classes=info.num_classes,
        batch_size=info.batch_size,
        committed_seq=info.committed_seq,
    )


def session_from_pb(message: pb.OpenSessionResponse) -> SessionInfo:
    return SessionInfo(
        job_id=message.job_id,
        rank=message.rank,
        world_size=message.world_size,
        total_steps=message.total_steps,
        steps_per_virtual_epoch=message.steps_per_virtual_epoch,
        num_classes=message.num_classes,
        batch_size=message.batch_size,
        committed_seq=message.committed_seq,
    )


def region_to_pb(view: RegionView) -> pb.Region:
    return pb.Region(
        region_id=view.region_id,
        status=_STATUS_TO_PB[view.status],
        start_step=view.start_step,
        end_step=view.end_step,
        check_interval=view.check_interval,
        candidates=to_array(view.candidates.astype(np.int64)),
        check_indices=to_array(view.check_indices.astype(np.int64)),
        batches=[
            pb.WeightedBatch(indices=to_array(i), weights=to_array(w)) for i, w in view.batches
        ],
        initial_loss=view.initial_loss,
    )


def region_from_pb(message: pb.Region) -> RegionView:
    """Decode a region (writable copies: the trainer hands these arrays to torch)."""
    if message.status not in _STATUS_FROM_PB:
        raise InvalidArgument(f"unknown region status {message.status}")
    batches = tuple(
        (
            from_array(b.indices, "batch indices", (pb.INT64,), 1).copy(),
            from_array(b.weights, "batch weights", (pb.FLOAT32,), 1).copy(),
        )
        for b in message.batches
    )
    return RegionView(
        region_id=message.region_id,
        status=_STATUS_FROM_PB[message.status],
        start_step=message.start_step,
        end_step=message.end_step,
        check_interval=message.check_interval,
        candidates=from_array(message.candidates, "candidates", (pb.INT64,), 1).copy(),
        check_indices=from_array(message.check_indices, "check indices", (pb.INT64,), 1).copy(),
        batches=batches,
        initial_loss=message.initial_loss,
    )


def report_to_pb(job_id: str, rank: int, report: CheckReport) -> pb.CheckReport:
    return pb.CheckReport(job_id=job_id, rank=rank, **vars(report))


def report_from_pb(message: pb.CheckReport) -> CheckReport:
    return CheckReport(
        region_id=message.region_id,
        step=message.step,
        loss_sum=message.loss_sum,
        count=message.count,
        linear=message.linear,
        quadratic=message.quadratic,
        curvature=message.curvature,
        train_seconds=message.train_seconds,
        selection_seconds=message.selection_seconds,
    )


def decision_to_pb(decision: CheckDecision) -> pb.CheckDecision:
    return pb.CheckDecision(**vars(decision))


def decision_from_pb(message: pb.CheckDecision) -> CheckDecision:
    return CheckDecision(
        region_id=message.region_id,
        step=message.step,
        new_region=message.new_region,
        loss=message.loss,
        predicted=message.predicted,
        relative_error=message.relative_error,
    )


def rows_per_chunk(dim: int, embedding_itemsize: int) -> int:
    """How many embedding rows (with their index and loss) fit in one message."""
    row = 8 + dim * embedding_itemsize + 4
    return max(1, (MAX_MESSAGE_BYTES - MESSAGE_OVERHEAD_BYTES) // row)
