"""Conversions between the plain-Python contract and the ``crest.v1`` protobuf messages.

Both sides use these; decoding validates everything a peer could get wrong (dtype, shape,
byte length, sizes) and raises :class:`InvalidArgument` with a precise message.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
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


# A region over one message travels in pages (GetRegion's ``page``): each page carries the
# next stretch of the region's candidates, check indices and batches, sized by the bytes
# their elements take plus a margin per batch piece for its framing, so that every page is
# under the message limit however large the region (MAX_REGION_CANDIDATES allows 128 MiB of
# candidates for one rank) or its batches (batch_size up to a million: 12 MB).
PAGE_BYTES = MAX_MESSAGE_BYTES - MESSAGE_OVERHEAD_BYTES
_BATCH_PIECE_BYTES = 64  # a WeightedBatch's tags, lengths, dtypes and shapes (about 40)
_INDEX_BYTES = 8
_BATCH_ELEMENT_BYTES = 12  # an int64 index and a float32 weight


@dataclass(frozen=True)
class _Page:
    """What one page of a region carries: slices of its arrays, and ``(batch, slice)`` pieces
    of its batches."""

    candidates: slice = dataclasses.field(default_factory=lambda: slice(0, 0))
    check_indices: slice = dataclasses.field(default_factory=lambda: slice(0, 0))
    batches: tuple[tuple[int, slice], ...] = ()


def _layout(view: RegionView, page_bytes: int = PAGE_BYTES) -> list[_Page]:
    """The pages of ``view``, filled greedily in order: candidates, check indices, batches."""
    batch_sizes = [len(indices) for indices, _ in view.batches]
    whole = (
        _INDEX_BYTES * (len(view.candidates) + len(view.check_indices))
        + _BATCH_PIECE_BYTES * len(batch_sizes)
        + _BATCH_ELEMENT_BYTES * sum(batch_sizes)
    )
    if whole <= page_bytes:  # the common case: one page
        pieces = tuple((number, slice(0, size)) for number, size in enumerate(batch_sizes))
        return [_Page(slice(0, len(view.candidates)), slice(0, len(view.check_indices)), pieces)]
    pages: list[_Page] = []
    current: dict[str, Any] = {"batches": []}
    room = page_bytes

    def new_page() -> None:
        nonlocal current, room
        pages.append(_Page(**{**current, "batches": tuple(current["batches"])}))
        current, room = {"batches": []}, page_bytes

    for name in ("candidates", "check_indices"):
        total, done = len(getattr(view, name)), 0
        while done < total:
            if room < _INDEX_BYTES:
                new_page()
            count = min(total - done, room // _INDEX_BYTES)
            current[name] = slice(done, done + count)
            room -= count * _INDEX_BYTES
            done += count
    for number, total in enumerate(batch_sizes):
        done = 0
        while True:
            if room < _BATCH_PIECE_BYTES + (_BATCH_ELEMENT_BYTES if total > done else 0):
                new_page()
            count = min(total - done, (room - _BATCH_PIECE_BYTES) // _BATCH_ELEMENT_BYTES)
            current["batches"].append((number, slice(done, done + count)))
            room -= _BATCH_PIECE_BYTES + count * _BATCH_ELEMENT_BYTES
            done += count
            if done == total:
                break
    new_page()
    return pages


def region_to_pb(view: RegionView, page: int | None = 0) -> pb.Region:
    """Page ``page`` of the wire's region (the whole region when it fits one message).

    Args:
        page: which page; None for a client that does not page, which gets the whole region
            in one message or, over the limit, ResourceExhausted.

    Raises:
        InvalidArgument: ``page`` is not one of the region's pages.
        ResourceExhausted: ``page`` is None and the region is over one message.
    """
    return _page_message(view, _layout(view), page)


def region_to_pages(view: RegionView) -> list[pb.Region]:
    """Every page of the wire's region, in order."""
    layout = _layout(view)
    return [_page_message(view, layout, page) for page in range(len(layout))]


# Per rank of a rank range's reply: its status and three counts, at most 10 bytes each as
# varints, plus their tags: the room each page keeps for them.
_RANK_BYTES = 48
# How far a rank's part of a region has got: a range's reply states its least advanced.
_PROGRESS = (RegionStatus.EMBED, RegionStatus.SELECTING, RegionStatus.READY, RegionStatus.DONE)


def regions_to_pb(views: list[RegionView], page: int = 0) -> pb.Region:
    """Page ``page`` of a rank range's reply: the ranks' views (in rank order, one region)
    joined rank after rank, paged as one region's (:func:`region_to_pb`).

    Raises:
        InvalidArgument: ``page`` is not one of the reply's pages.
    """
    joined = _joined_view(views)
    layout = _layout(joined, PAGE_BYTES - _RANK_BYTES * len(views))
    return _page_message(joined, layout, page, views)


def regions_to_pages(views: list[RegionView]) -> list[pb.Region]:
    """Every page of a rank range's reply, in order."""
    joined = _joined_view(views)
    layout = _layout(joined, PAGE_BYTES - _RANK_BYTES * len(views))
    return [_page_message(joined, layout, page, views) for page in range(len(layout))]


def _joined_view(views: list[RegionView]) -> RegionView:
    first = views[0]
    return dataclasses.replace(
        first,
        status=min((view.status for view in views), key=_PROGRESS.index),
        candidates=np.concatenate([view.candidates for view in views]),
        check_indices=np.concatenate([view.check_indices for view in views]),
        batches=tuple(batch for view in views for batch in view.batches),
    )


def regions_from_pb(num_ranks: int, *pages: pb.Region) -> list[RegionView]:
    """Decode a rank range's reply from its pages (in order): each rank's view.

    Raises:
        InvalidArgument: as :func:`region_from_pb`, or per-rank counts that are not
            ``num_ranks`` ranks' or do not add up to the totals.
    """
    joined = region_from_pb(*pages)
    first = pages[0]
    if num_ranks == 1 and not first.rank_status:  # one rank's reply, as GetRegion's
        return [joined]
    counts = (first.rank_candidates, first.rank_check_indices, first.rank_batches)
    if not all(len(c) == num_ranks for c in (first.rank_status, *counts)):
        raise InvalidArgument(
            f"a reply for {num_ranks} ranks states {len(first.rank_status)} ranks' statuses "
            f"and {[len(c) for c in counts]} ranks' counts (a coordinator without shared "
            "fetches answers one rank: upgrade it, or fetch per rank)"
        )
    totals = (len(joined.candidates), len(joined.check_indices), len(joined.batches))
    if tuple(sum(c) for c in counts) != totals:
        raise InvalidArgument(
            f"the ranks' counts add up to {[sum(c) for c in counts]} candidates, check "
            f"indices and batches; the reply carries {list(totals)}"
        )
    if any(code not in _STATUS_FROM_PB for code in first.rank_status):
        raise InvalidArgument(f"unknown rank statuses in {list(first.rank_status)}")
    bounds = [np.cumsum([0, *c]) for c in counts]
    return [
        dataclasses.replace(
            joined,
            status=_STATUS_FROM_PB[first.rank_status[rank]],
            candidates=joined.candidates[bounds[0][rank] : bounds[0][rank + 1]],
            check_indices=joined.check_indices[bounds[1][rank] : bounds[1][rank + 1]],
            batches=joined.batches[bounds[2][rank] : bounds[2][rank + 1]],
        )
        for rank in range(num_ranks)
    ]


def _page_message(
    view: RegionView, layout: list[_Page], page: int | None, ranks: Sequence[RegionView] = ()
) -> pb.Region:
    if page is None:
        if len(layout) > 1:
            raise ResourceExhausted(
                f"region {view.region_id} takes {len(layout)} messages for one rank and the "
                "request asked for no page (GetRegionRequest.page): this client does not "
                "page; use a current crest client"
            )
        page = 0
    if not 0 <= page < len(layout):
        raise InvalidArgument(
            f"page {page} of region {view.region_id} does not exist: it has {len(layout)} "
            f"page(s), 0 to {len(layout) - 1}"
        )
    part = layout[page]
    message = pb.Region(
        region_id=view.region_id,
        status=_STATUS_TO_PB[view.status],
        start_step=view.start_step,
        end_step=view.end_step,
        check_interval=view.check_interval,
        candidates=to_array(view.candidates[part.candidates].astype(np.int64)),
        check_indices=to_array(view.check_indices[part.check_indices].astype(np.int64)),
        batches=[
            pb.WeightedBatch(
                indices=to_array(view.batches[number][0][span]),
                weights=to_array(view.batches[number][1][span]),
            )
            for number, span in part.batches
        ],
        initial_loss=view.initial_loss,
        wants_model=view.wants_model,
        wants_weights=view.wants_weights,
        page=page,
        num_pages=len(layout),
        num_candidates=len(view.candidates),
        num_check_indices=len(view.check_indices),
        num_batches=len(view.batches),
        continues_batch=bool(part.batches) and part.batches[0][1].start > 0,
    )
    if len(ranks) > 1:
        message.rank_status.extend(_STATUS_TO_PB[v.status] for v in ranks)
        message.rank_candidates.extend(len(v.candidates) for v in ranks)
        message.rank_check_indices.extend(len(v.check_indices) for v in ranks)
        message.rank_batches.extend(len(v.batches) for v in ranks)
    # The layout keeps every page under the limit; this is the guard should it ever not.
    return _within_limit(
        message, f"page {page} of region {view.region_id} is {{size}} bytes", "a crest bug"
    )


def same_region(first: pb.Region, page: pb.Region) -> bool:
    """Whether ``page`` belongs with ``first`` (page 0): the same region, status and layout.
    A client that gets a page that does not starts again from page 0."""
    keys = ("region_id", "status", "num_pages", "num_candidates", "num_check_indices",
            "num_batches")  # fmt: skip
    return all(getattr(first, key) == getattr(page, key) for key in keys) and list(
        first.rank_status
    ) == list(page.rank_status)


def region_from_pb(*pages: pb.Region) -> RegionView:
    """Decode a region from its pages, in order (writable copies: the trainer hands these
    arrays to torch). One page for a region that fits one message.

    Raises:
        InvalidArgument: an unknown status, pages that are not the region's pages in order
            (:func:`same_region`), or arrays that do not add up to the stated totals.
    """
    if not pages:
        raise InvalidArgument("a region needs at least one page")
    first, last = pages[0], pages[-1]
    if first.status not in _STATUS_FROM_PB:
        raise InvalidArgument(f"unknown region status {first.status}")
    expected = max(1, first.num_pages)
    numbers = [page.page for page in pages]
    if numbers != list(range(expected)) or not all(same_region(first, p) for p in pages):
        raise InvalidArgument(
            f"region {first.region_id} travels in {expected} page(s); got pages {numbers} "
            "of differing regions, statuses or layouts"
        )
    batches: list[tuple[list[np.ndarray], list[np.ndarray]]] = []
    for page in pages:
        for number, batch in enumerate(page.batches):
            indices = from_array(batch.indices, "batch indices", (pb.INT64,), 1)
            weights = from_array(batch.weights, "batch weights", (pb.FLOAT32,), 1)
            if len(indices) != len(weights):
                raise InvalidArgument(
                    f"a batch has {len(indices)} indices and {len(weights)} weights"
                )
            if number == 0 and page.continues_batch:
                if not batches:
                    raise InvalidArgument("the first page cannot continue a batch")
                batches[-1][0].append(indices)
                batches[-1][1].append(weights)
            else:
                batches.append(([indices], [weights]))
    candidates = _joined([p.candidates for p in pages], "candidates")
    check_indices = _joined([p.check_indices for p in pages], "check indices")
    if first.num_pages and (  # a coordinator that pages states the totals
        len(candidates), len(check_indices), len(batches)
    ) != (first.num_candidates, first.num_check_indices, first.num_batches):  # fmt: skip
        raise InvalidArgument(
            f"the pages of region {first.region_id} carry {len(candidates)} candidates, "
            f"{len(check_indices)} check indices and {len(batches)} batches; page 0 stated "
            f"{first.num_candidates}, {first.num_check_indices} and {first.num_batches}"
        )
    return RegionView(
        region_id=first.region_id,
        status=_STATUS_FROM_PB[first.status],
        start_step=first.start_step,
        end_step=last.end_step,  # the freshest: a check may have moved it meanwhile
        check_interval=first.check_interval,
        candidates=candidates,
        check_indices=check_indices,
        batches=tuple((np.concatenate(i), np.concatenate(w)) for i, w in batches),
        initial_loss=first.initial_loss,
        wants_model=first.wants_model,
        wants_weights=first.wants_weights,
    )


def _joined(arrays: list[pb.Array], name: str) -> np.ndarray:
    """The INT64 arrays of every page, concatenated into one writable copy."""
    return np.concatenate([from_array(a, name, (pb.INT64,), 1) for a in arrays])


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
def status_to_pb(status: JobStatus, limit: int | None = MAX_MESSAGE_BYTES) -> pb.JobStatus:
    """The wire's status, with the oldest regions left out (``regions_omitted``) as far as
    needed to fit ``limit`` bytes: a job's regions grow with its length, and each carries a
    count per class (about 3 KB per region at C = 1000), so a long job's whole status would
    not fit one message. The current region and the job's totals always travel.

    Args:
        limit: the most bytes the message may take; None: no limit, nothing left out (the
            in-process coordinator, whose replies are no messages).

    A region of very many checks (~100,000: one check a step, no bound on a region's uses)
    leaves its oldest checks out too (``checks_omitted``).

    Raises:
        ResourceExhausted: the status is over ``limit`` even so (the counts per class alone
            cannot be: 100,000 classes take ~1 MB).
    """
    message = pb.JobStatus()
    _model_to_pb(status, message)
    if limit is None:
        return message
    excess = message.ByteSize() - (limit - MESSAGE_OVERHEAD_BYTES)
    omitted = 0
    while excess > 0 and omitted < len(message.regions) - 1:
        # The field's tag and length prefix are part of what leaving a region out saves.
        size = message.regions[omitted].ByteSize()
        excess -= size + 1 + _varint_bytes(size)
        omitted += 1
    if omitted:
        del message.regions[:omitted]
        message.regions_omitted = status.regions_omitted + omitted
        totals = status.omitted_totals.plus(status.regions[:omitted], status.config.tau)
        _model_to_pb(totals, message.omitted_totals)
    if excess > 0 and message.regions:  # one region of very many checks: its oldest ones
        region = message.regions[0]
        dropped = 0
        while excess > 0 and dropped < len(region.checks):
            size = region.checks[dropped].ByteSize()
            excess -= size + 1 + _varint_bytes(size)
            dropped += 1
        del region.checks[:dropped]
        region.checks_omitted += dropped
    return _within_limit(
        message,
        f"the status of job {status.job_id!r} is {{size}} bytes even with only its last region",
        f"the dashboard's /api/jobs/{status.job_id} serves it whole",
    )


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


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


def upload_chunks(
    job_id: str,
    rank: int,
    region_id: int,
    first_seq: int,
    indices: np.ndarray,
    embeddings: np.ndarray,
    losses: np.ndarray,
    rank_rows: tuple[int, ...] = (),
) -> list[pb.EmbeddingChunk]:
    """A checked upload sent by ``rank`` as chunks under the message limit, numbered from
    ``first_seq``. ``rank_rows`` (a shared upload) says how many rows are each rank's from
    ``rank`` on; every chunk then carries its own share of them (the ranks with rows in it)."""
    rows = rows_per_chunk(embeddings.shape[1], embeddings.dtype.itemsize, max(1, len(rank_rows)))
    ends = np.cumsum(rank_rows, dtype=np.int64)
    starts = ends - np.asarray(rank_rows, dtype=np.int64)

    def owners(span: slice) -> dict[str, Any]:
        if not rank_rows:
            return {}
        counts = np.clip(np.minimum(ends, span.stop) - np.maximum(starts, span.start), 0, None)
        held = np.flatnonzero(counts)
        return {"first_rank": rank + int(held[0]),
                "rank_rows": counts[held[0] : held[-1] + 1].tolist()}  # fmt: skip

    spans = [slice(start, start + rows) for start in range(0, len(indices), rows)]
    return [
        pb.EmbeddingChunk(
            job_id=job_id,
            rank=rank,
            region_id=region_id,
            seq=seq,
            indices=to_array(indices[span]),
            embeddings=to_array(embeddings[span]),
            losses=to_array(losses[span]),
            **owners(span),
        )
        for seq, span in enumerate(spans, first_seq)
    ]


def rows_per_chunk(dim: int, embedding_itemsize: int, num_ranks: int = 1) -> int:
    """How many embedding rows (with their index and loss) fit in one message, with room
    for the row counts of ``num_ranks`` ranks (a shared upload's rank_rows, varints)."""
    row = 8 + dim * embedding_itemsize + 4
    room = MAX_MESSAGE_BYTES - MESSAGE_OVERHEAD_BYTES - 10 * num_ranks
    return max(1, room // row)
