"""What every coordinator checks of its caller's arguments, in-process and remote alike.

The remote client runs these before it encodes a request, and the in-process coordinator runs
the same ones before it calls the job manager, so the same bad input raises the same error,
with the same message, in both modes: a job that runs in-process runs remotely. Each returns
the arguments as the wire carries them (a config that fits the wire's integer fields, int64
indices, float32 losses), so neither mode sees a silent cast the other does not.

What only a malformed wire message can get wrong (dtype codes, byte lengths, stream order) is
checked where messages are decoded (:mod:`crest.proto.convert`, ``service/server.py``); the
coordinator's job state checks again what it stores, since a remote peer may send anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from crest.proto import convert
from crest.proto.contract import JobConfig
from crest.proto.errors import InvalidArgument, ResourceExhausted

# One rank's part of a shared upload: (indices, embeddings, losses).
RankUpload = tuple[np.ndarray, np.ndarray, np.ndarray]


def job(config: JobConfig | dict[str, Any], labels: np.ndarray) -> tuple[JobConfig, np.ndarray]:
    """A job's config and labels as the coordinator will take them.

    The config (or a dict of its fields) takes the wire's round trip: validated again, as
    ``model_copy(update=...)`` skips validation, and with every integer in its wire field's
    range. The labels must be ``(N,)`` integers, returned as int64; their range and classes
    are the job's to check.

    Raises:
        InvalidArgument: naming the fields or the labels at fault.
    """
    if not isinstance(config, JobConfig):
        config = JobConfig.model_validate(config)
    config = JobConfig.model_validate(convert.config_from_pb(convert.config_to_pb(config)))
    labels = np.asarray(labels)
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise InvalidArgument(
            f"labels must be integers in [0, num_classes), got {labels.dtype}; map string or "
            "sparse labels to 0..C-1 first, e.g. np.unique(labels, return_inverse=True)"
        )
    if labels.shape != (config.num_examples,):
        raise InvalidArgument(
            f"labels must have shape ({config.num_examples},), got {labels.shape}"
        )
    return config, labels.astype(np.int64, copy=False)


def upload(
    indices: np.ndarray,
    embeddings: np.ndarray,
    losses: np.ndarray,
    embedding_dtype: np.dtype | type = np.float32,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One upload of a rank's embeddings, checked whole (the wire may split it into chunks
    and streams, whose separate checks could not see a duplicate across chunks, and would
    commit the streams before a bad one).

    Args:
        indices: ``(n,)`` integers, distinct, ``n >= 1``.
        embeddings: ``(n, d)`` floating point, finite; cast to ``embedding_dtype``.
        losses: ``(n,)`` floating point, finite, ``>= 0``; cast to float32.

    Returns:
        ``(indices as int64, embeddings, losses as float32)``, in the caller's order.

    Raises:
        InvalidArgument: the first rule broken, as above.
    """
    indices, embeddings, losses = np.asarray(indices), np.asarray(embeddings), np.asarray(losses)
    if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
        raise InvalidArgument(
            f"indices must be a 1-D integer array, got {indices.dtype}{list(indices.shape)}"
        )
    n = len(indices)
    if n == 0:
        raise InvalidArgument("an upload must carry at least one example")
    if embeddings.ndim != 2 or embeddings.shape[0] != n:
        raise InvalidArgument(f"embeddings must have shape ({n}, d), got {embeddings.shape}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise InvalidArgument(f"embeddings must be floating point, got {embeddings.dtype}")
    if losses.shape != (n,) or not np.issubdtype(losses.dtype, np.floating):
        raise InvalidArgument(f"losses must be a float array of shape ({n},)")
    with np.errstate(over="ignore"):  # what overflows the wire's dtype is inf: refused below
        embeddings = embeddings.astype(embedding_dtype, copy=False)
        losses = losses.astype(np.float32, copy=False)
    if not np.all(np.isfinite(embeddings)):
        raise InvalidArgument("embeddings contain NaN or Inf")
    if not np.all(np.isfinite(losses)) or np.any(losses < 0):
        raise InvalidArgument("losses must be finite and >= 0")
    ordered = np.sort(indices)  # a sort, not np.unique: that holds the GIL for seconds at 4M
    if np.any(ordered[1:] == ordered[:-1]):
        raise InvalidArgument("indices contain duplicates")
    return indices.astype(np.int64, copy=False), embeddings, losses


def shared_upload(
    parts: Sequence[RankUpload | None], embedding_dtype: np.dtype | type = np.float32
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...]]:
    """Several ranks' uploads (``parts[i]``: the i-th rank's ``(indices, embeddings, losses)``,
    or None for nothing), each checked as :func:`upload` checks one, as one upload: the rows
    of all of them in rank order and how many rows each rank has (``rank_rows``).

    Raises:
        InvalidArgument: no parts, none with rows, a part broken as :func:`upload` says
            (naming its position), or parts of different embedding dims.
    """
    if not parts:
        raise InvalidArgument("a shared upload needs at least one rank's part")
    checked: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    rank_rows = []
    for i, part in enumerate(parts):
        if part is None:
            rank_rows.append(0)
            continue
        try:
            indices, embeddings, losses = upload(*part, embedding_dtype)
        except InvalidArgument as err:
            raise InvalidArgument(f"part {i} of the shared upload: {err}") from None
        if checked and embeddings.shape[1] != checked[0][1].shape[1]:
            raise InvalidArgument(
                f"part {i} of the shared upload has embedding dim {embeddings.shape[1]}, the "
                f"parts before it {checked[0][1].shape[1]}"
            )
        checked.append((indices, embeddings, losses))
        rank_rows.append(len(indices))
    if not checked:
        raise InvalidArgument("a shared upload must carry at least one example")
    indices, embeddings, losses = (np.concatenate(arrays) for arrays in zip(*checked, strict=True))
    return indices, embeddings, losses, tuple(rank_rows)


def shared_ranks(first_rank: int, num_ranks: int, world_size: int) -> None:
    """Raises InvalidArgument unless a shared upload's ranks lie within the job's."""
    last = first_rank + num_ranks - 1
    if not 0 <= first_rank <= last < world_size:
        raise InvalidArgument(
            f"a shared upload's ranks [{first_rank}, {last}] must lie in [0, {world_size})"
        )


def model(artifact: bytes, inputs: np.ndarray) -> np.ndarray:
    """A published model's inputs as sent: float32, one row per example, and with the artifact
    within the wire's limit for one PublishModel stream.

    Raises:
        ResourceExhausted: over :data:`crest.proto.convert.MAX_PUBLISH_BYTES` (the job then
            embeds on the trainer side).
    """
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    if inputs.ndim < 1:
        raise InvalidArgument(f"inputs must have one row per example, got shape {inputs.shape}")
    size = len(artifact) + inputs.nbytes
    if size > convert.MAX_PUBLISH_BYTES:
        raise ResourceExhausted(
            f"the model and its inputs are {size} bytes, over the {convert.MAX_PUBLISH_BYTES}"
            "-byte limit of one publication"
        )
    return inputs
