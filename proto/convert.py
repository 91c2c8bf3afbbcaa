"""Conversions between the plain-Python contract and the ``crest.v1`` protobuf messages.

Both sides use these; decoding validates everything a peer could get wrong (dtype, shape,
byte length, sizes) and raises :class:`InvalidArgument` with a precise message.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, TypeVar

import numpy as np
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from crest.proto.contract import (
    CheckDecision,
    CheckReport,
    JobConfig,
    JobStatus,
    RegionStatus,
    RegionView,
    SessionInfo,
)
from crest.proto.errors import InvalidArgument, ResourceExhausted, invalid_fields
from crest.proto.v1 import coordinator_pb2 as pb

MAX_MESSAGE_BYTES: int = pb.MAX_MESSAGE_BYTES
_M = TypeVar("_M", bound=Message)
# Chunks of one upload stream: the coordinator holds a stream whole until it commits it.
MAX_STREAM_CHUNKS: int = pb.MAX_STREAM_CHUNKS
# Bytes of one published model (artifact and inputs), held whole until it is accepted.
MAX_PUBLISH_BYTES: int = pb.MAX_PUBLISH_BYTES
# Room for a message's non-array fields when arrays are sized to fit one message.
MESSAGE_OVERHEAD_BYTES = 4096

_DTYPES: dict[pb.DType, np.dtype] = {
    pb.FLOAT32: np.dtype("<f4"),
    pb.FLOAT16: np.dtype("<f2"),
    pb.INT64: np.dtype("<i8"),
    pb.INT32: np.dtype("<i4"),
    pb.BFLOAT16: np.dtype("<u2"),  # numpy has no bfloat16: the raw upper halves of float32s
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
# tests/proto/test_config_contract.py checks that these are exactly JobConfig's optional fields.
_REQUIRED_CONFIG_FIELDS = ("num_examples", "num_classes")
_OPTIONAL_CONFIG_FIELDS = tuple(
    f.name for f in pb.JobConfig.DESCRIPTOR.fields if f.name not in _REQUIRED_CONFIG_FIELDS
)


def config_to_pb(config: JobConfig) -> pb.JobConfig:
    """The wire's config.

    Raises:
        InvalidArgument: a value the wire's field cannot hold (an int32 field over 2**31 - 1,
            or a value of the wrong type in a config that ``model_copy`` did not validate).
    """
    fields = {name: getattr(config, name) for name in pb.JobConfig.DESCRIPTOR.fields_by_name}
    if fields["max_coreset_uses"] is None:
        fields["max_coreset_uses"] = 0  # the wire's "unbounded"
    message = pb.JobConfig()
    for name, value in fields.items():
        if value is None:
            continue
        try:
            setattr(message, name, value)
        except (TypeError, ValueError) as err:
            raise InvalidArgument(
                f"invalid job config: {name}: cannot travel on the wire ({str(err)[:80]})"
            ) from None
    return message


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


def _within_limit(message: _M, what: str, remedy: str) -> _M:
    """``message`` if it fits one message; else :class:`ResourceExhausted`, saying ``what``
    (with ``{size}``) and the ``remedy``."""
    size = message.ByteSize()
    if size > MAX_MESSAGE_BYTES:
        raise ResourceExhausted(
            f"{what.format(size=size)}, over the {MAX_MESSAGE_BYTES}-byte message limit: {remedy}"
        )
    return message


# ----------------------------------------------------------------------------- messages
# SessionInfo and CheckDecision are flat dataclasses whose fields the wire messages carry
# under the same names: both directions follow the dataclass's fields.
def session_to_pb(info: SessionInfo) -> pb.OpenSessionResponse:
    return pb.OpenSessionResponse(**vars(info))


def session_from_pb(message: pb.OpenSessionResponse) -> SessionInfo:
    return SessionInfo(**{f.name: getattr(message, f.name) for f in fields(SessionInfo)})


def region_to_pb(view: RegionView) -> pb.Region:
    """The wire's region.

    Raises:
        ResourceExhausted: the region is over the message limit. The in-process coordinator
            applies the same limit, so that a job that runs in-process runs remotely.
    """
    message = pb.Region(
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
        wants_model=view.wants_model,
        wants_weights=view.wants_weights,
    )
    return _within_limit(
        message,
        f"region {view.region_id} is {{size}} bytes for one rank",
        "lower subset_size or max_coresets, or add ranks",
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
        wants_model=message.wants_model,
        wants_weights=message.wants_weights,
    )


def report_to_pb(job_id: str, rank: int, report: CheckReport) -> pb.CheckReport:
    return pb.CheckReport(job_id=job_id, rank=rank, **vars(report))


def report_from_pb(message: pb.CheckReport) -> CheckReport:
    values = {f.name: getattr(message, f.name) for f in fields(CheckReport)}
    values["ranks"] = values["ranks"] or 1  # unset (0, e.g. an older client): the sender's own
    return CheckReport(**values)


def decision_to_pb(decision: CheckDecision) -> pb.CheckDecision:
    return pb.CheckDecision(**vars(decision))


def decision_from_pb(message: pb.CheckDecision) -> CheckDecision:
    return CheckDecision(**{f.name: getattr(message, f.name) for f in fields(CheckDecision)})


# ------------------------------------------------------------------------------ status
# The status messages mirror the pydantic models field by field (tests/proto checks the
# names), so both directions walk the message's descriptor: a field added to both travels
# without an edit here. A proto3 ``optional`` field left unset is the model's None.
def status_to_pb(status: JobStatus) -> pb.JobStatus:
    """The wire's status.

    Raises:
        ResourceExhausted: the status is over the message limit (as :func:`region_to_pb`).
    """
    message = pb.JobStatus()
    _model_to_pb(status, message)
    return _within_limit(
        message,
        f"the status of job {status.job_id!r} is {{size}} bytes",
        f"the dashboard's /api/jobs/{status.job_id} serves it whole",
    )


def status_from_pb(message: pb.JobStatus) -> JobStatus:
    """Decode a job status; values no status can hold raise :class:`InvalidArgument`."""
    try:
        return JobStatus.model_validate(_fields_from_pb(message))
    except ValidationError as err:
        raise invalid_fields("job status", err) from None


def _model_to_pb(model: BaseModel, message: Message) -> None:
    for field in message.DESCRIPTOR.fields:
        value = getattr(model, field.name)
        if value is None:  # an optional field: left unset
            continue
        if field.message_type is pb.JobConfig.DESCRIPTOR:
            getattr(message, field.name).CopyFrom(config_to_pb(value))
        elif field.message_type is not None and field.is_repeated:
            for item in value:
                _model_to_pb(item, getattr(message, field.name).add())
        elif field.message_type is not None:
            _model_to_pb(value, getattr(message, field.name))
        elif field.is_repeated:
            getattr(message, field.name).extend(value)
        else:
            setattr(message, field.name, value)


def _fields_from_pb(message: Message) -> dict[str, Any]:
    """The fields of a status message (nested ones as dicts too), for model validation."""
    fields: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.has_presence and not field.is_repeated and not message.HasField(field.name):
            value = None
        elif field.message_type is pb.JobConfig.DESCRIPTOR:
            value = config_from_pb(value)
        elif field.message_type is not None and field.is_repeated:
            value = [_fields_from_pb(item) for item in value]
        elif field.message_type is not None:
            value = _fields_from_pb(value)
        elif field.is_repeated:
            value = list(value)
        fields[field.name] = value
    return fields


WEIGHT_DTYPES = ("float32", "bfloat16")  # how published weights travel


def encode_weights(flat: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """A weight vector for the wire: ``"float32"`` as is, ``"bfloat16"`` as uint16 (the upper
    half of each float32, rounded to nearest even; half the bytes, ~3 significant digits).

    Raises:
        ValueError: ``dtype`` is not one of ``WEIGHT_DTYPES``.
    """
    flat = np.ascontiguousarray(flat, dtype=np.float32)
    if dtype == "float32":
        return flat
    if dtype != "bfloat16":
        raise ValueError(f"weights dtype must be one of {WEIGHT_DTYPES}, got {dtype!r}")
    bits = flat.view(np.uint32)
    # Round to nearest even: add 0x7FFF plus the lowest kept bit, then truncate. Finite
    # values cannot overflow uint32 (the largest becomes inf, as it should); NaNs are kept
    # as a quiet NaN rather than rounded (their bits could round to inf).
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(flat), np.uint16(0x7FC0), rounded)


def decode_weights(encoded: np.ndarray) -> np.ndarray:
    """The float32 weight vector of :func:`encode_weights`'s output (its dtype says which).

    Raises:
        ValueError: ``encoded`` is neither float32 nor uint16 (bfloat16).
    """
    if encoded.dtype == np.float32:
        return encoded
    if encoded.dtype == np.uint16:
        return (encoded.astype(np.uint32) << 16).view(np.float32)
    raise ValueError(f"encoded weights must be float32 or uint16 (bfloat16), got {encoded.dtype}")


def rows_per_chunk(dim: int, embedding_itemsize: int) -> int:
    """How many embedding rows (with their index and loss) fit in one message."""
    row = 8 + dim * embedding_itemsize + 4
    return max(1, (MAX_MESSAGE_BYTES - MESSAGE_OVERHEAD_BYTES) // row)
