"""Selection problems and answers: what the coordinator and the selectors exchange.

Also embedding requests: candidates' rows, labels and the trainer's exported model
(:mod:`crest.worker.model`), for selectors that compute gradient embeddings themselves.

Plain numpy, no torch: the coordinator's state machine builds requests and reads results
without importing the kernel. :mod:`crest.worker.selector` and :mod:`crest.worker.ray_pool`
solve them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class SelectionRequest:
    """All facility-location problems of one region.

    Attributes:
        embeddings: ``(M, d)`` float32, one row per candidate of a problem.
        groups: ``(M,)`` int64 problem id of each row in ``[0, G)``; a problem's rows are in
            the order that breaks ties (lowest first).
        budgets: ``(G,)`` int64 how many rows to choose per problem.
        job_id: whose request this is; selectors that batch requests share their kernel
            calls fairly between jobs. Never changes the result.
    """

    embeddings: np.ndarray
    groups: np.ndarray
    budgets: np.ndarray
    job_id: str = ""


@dataclass(frozen=True)
class SelectionResult:
    """Chosen rows of a request: ``rows``/``groups`` int64 and raw cluster-size ``weights``
    float32, all ``(K,)``, problem by problem in increasing id, greedy order within one."""

    rows: np.ndarray
    groups: np.ndarray
    weights: np.ndarray


# Rows of one kernel call of a selector: a request over it is solved in chunks of whole
# problems (:func:`split_request`), so that other jobs' requests are served between them. At
# d = 10 and a few hundred rows a problem, a chunk is well under a second of one core.
CHUNK_ROWS = 1 << 17


@dataclass(frozen=True)
class RequestChunk:
    """Problems ``[first_group, first_group + G')`` of a request, as a request of their own.

    Attributes:
        request: the chunk (group ids from 0, its rows in the request's order).
        rows: the request's row of each chunk row: a slice for a request whose groups are
            sorted, else an index array.
        first_group: the request's id of the chunk's group 0.
    """

    request: SelectionRequest
    rows: slice | np.ndarray
    first_group: int


def split_request(request: SelectionRequest, max_rows: int) -> list[RequestChunk]:
    """Split ``request`` into chunks of whole, consecutive problems of at most ``max_rows``
    rows each (a problem over it alone); one chunk when the request is that small.

    Solving each chunk and joining the results (:func:`join_results`) gives exactly what
    solving the request does: problems are independent, and each keeps its rows' order.
    """
    groups = np.asarray(request.groups)
    if len(groups) <= max_rows:
        return [RequestChunk(request, slice(0, len(groups)), 0)]
    sizes = np.bincount(groups, minlength=len(request.budgets))
    ends = np.cumsum(sizes)
    bounds, start_rows, group = [0], 0, 0
    while group < len(sizes):
        # The last group ending within max_rows of the chunk's start, at least one group.
        stop = max(int(np.searchsorted(ends, start_rows + max_rows, side="right")), group + 1)
        bounds.append(stop)
        start_rows, group = int(ends[stop - 1]), stop
    ordered = bool(np.all(groups[1:] >= groups[:-1]))
    order = None if ordered else np.argsort(groups, kind="stable")
    chunks = []
    for first, stop in itertools.pairwise(bounds):
        begin = int(ends[first - 1]) if first else 0
        span = slice(begin, int(ends[stop - 1]))
        rows: slice | np.ndarray = span if order is None else np.sort(order[span])
        part = SelectionRequest(
            request.embeddings[rows], groups[rows] - first, request.budgets[first:stop],
            request.job_id,
        )  # fmt: skip
        chunks.append(RequestChunk(part, rows, first))
    return chunks


def join_results(chunks: list[RequestChunk], results: list[SelectionResult]) -> SelectionResult:
    """The request's result from its chunks' results, in chunk order."""
    if len(chunks) == 1:
        return results[0]
    rows, groups = [], []
    for chunk, result in zip(chunks, results, strict=True):
        if isinstance(chunk.rows, slice):
            rows.append(np.asarray(result.rows) + chunk.rows.start)
        else:
            rows.append(chunk.rows[result.rows])
        groups.append(np.asarray(result.groups) + chunk.first_group)
    weights = np.concatenate([np.asarray(r.weights) for r in results])
    return SelectionResult(np.concatenate(rows), np.concatenate(groups), weights)


@dataclass(frozen=True)
class ServedBatch:
    """One call a selector's worker answered: whose requests (a job id per request, in the
    batch's order), what kind (``"selection"`` or ``"embedding"``), how many rows, and when it
    started and finished (the serving event loop's clock, seconds)."""

    worker: int | None  # the worker's process id
    jobs: tuple[str, ...]
    kind: str
    rows: int
    started: float
    finished: float


@dataclass(frozen=True)
class EmbedRequest:
    """Candidates to embed with a trainer's model (:class:`~crest.worker.model.ExportedModel`).

    Attributes:
        job_id: whose request this is.
        model_id: a digest of ``artifact`` (the caller's): selectors keep loaded programs
            and stored artifacts by it, so one id must always mean the same bytes.
        artifact: :func:`~crest.worker.model.export_model`'s bytes.
        weights: ``(P,)`` float32 weight vector (:func:`~crest.worker.model.model_weights`;
            decode bfloat16 ones first).
        inputs: ``(n, ...)`` float32 rows of the candidates, as the model takes them.
        labels: ``(n,)`` int64 class of each candidate.
        batch_size: rows per forward pass.
    """

    job_id: str
    model_id: str
    artifact: bytes
    weights: np.ndarray
    inputs: np.ndarray
    labels: np.ndarray
    batch_size: int = 1024


@dataclass(frozen=True)
class EmbedResult:
    """``embeddings`` ``(n, C)`` float32 (``softmax(z) - onehot(y)``) and per-example
    cross-entropy ``losses`` ``(n,)`` float32, in the request's row order."""

    embeddings: np.ndarray
    losses: np.ndarray


class Selector(Protocol):
    """Solves regions' selection problems for the coordinator."""

    async def select(
        self, request: SelectionRequest, timeout_s: float | None = None
    ) -> SelectionResult:
        """Solve one request, answering or raising within ``timeout_s`` (None: the
        selector's own default).

        Raises:
            TimeoutError or :class:`~crest.proto.errors.Unavailable`: no answer in time, or
                no worker to answer (expected: the coordinator falls back to random batches).
            Anything else: a bug (in the kernel, the request or the selector).
        """
        ...

    async def embed(self, request: EmbedRequest, timeout_s: float | None = None) -> EmbedResult:
        """Embed one request's candidates, answering or raising within ``timeout_s`` (None:
        the selector's own default). Same error contract as :meth:`select`.

        Raises:
            TimeoutError or :class:`~crest.proto.errors.Unavailable`: no answer in time, or
                no worker to answer (expected).
            Anything else: a bug (in the model, the request or the selector), e.g. a weight
                vector that does not fit the model.
        """
        ...

    async def healthy(self) -> bool:
        """Whether the selector can take work now (health checks; must not block long)."""
        ...

    def close(self) -> None:
        """Release threads, actors or processes. Idempotent."""
        ...


def check_request(request: SelectionRequest) -> None:
    """Raise ``ValueError`` unless ``request`` is well-formed (shapes, ids, budgets, finite)."""
    embeddings, groups, budgets = request.embeddings, request.groups, request.budgets
    if embeddings.ndim != 2 or embeddings.dtype.kind != "f":
        raise ValueError(
            f"embeddings must be (M, d) floats, got {embeddings.dtype}{embeddings.shape}"
        )
    if groups.shape != embeddings.shape[:1] or groups.dtype.kind not in "iu":
        raise ValueError(f"groups must be ({len(embeddings)},) integers, got {groups.shape}")
    if budgets.ndim != 1 or budgets.dtype.kind not in "iu":
        raise ValueError(f"budgets must be (G,) integers, got {budgets.dtype}{budgets.shape}")
    if groups.size and (groups.min() < 0 or groups.max() >= len(budgets)):
        raise ValueError(f"group ids must lie in [0, {len(budgets)})")
    if budgets.size and budgets.min() < 0:
        raise ValueError("budgets must be >= 0")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or Inf")


def check_embed_request(request: EmbedRequest) -> None:
    """Raise ``ValueError`` unless ``request``'s arrays are well-formed (what can be checked
    without its model: the weight count and the class range need the program)."""
    weights, inputs, labels = request.weights, request.inputs, request.labels
    if weights.ndim != 1 or weights.dtype != np.float32:
        raise ValueError(
            f"weights must be a (P,) float32 vector, got {weights.dtype}{weights.shape}"
        )
    if inputs.ndim < 1 or inputs.dtype.kind != "f":
        raise ValueError(f"inputs must be (n, ...) floats, got {inputs.dtype}{inputs.shape}")
    if labels.shape != inputs.shape[:1] or labels.dtype.kind not in "iu":
        raise ValueError(
            f"labels must be ({len(inputs)},) integers, got {labels.dtype}{labels.shape}"
        )
    if request.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {request.batch_size}")
    if not request.artifact:
        raise ValueError("the request carries no model artifact")
