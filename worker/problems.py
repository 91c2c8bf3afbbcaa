"""Selection problems and answers: what the coordinator and the selectors exchange.

Plain numpy, no torch: the coordinator's state machine builds requests and reads results
without importing the kernel. :mod:`crest.worker.selector` and :mod:`crest.worker.ray_pool`
solve them.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class EmbedRequest:
    """Candidates to embed with a job's served model (the service side).

    Attributes:
        model_id: a digest of ``artifact``; selectors cache the loaded model under it.
        artifact: the model as a ``torch.export`` artifact (:mod:`crest.worker.model`).
        weights: flat float32 weights in the artifact's order.
        inputs: ``(n, ...)`` float32 inputs of the candidates. labels: ``(n,)`` int64.
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
    """``embeddings`` ``(n, C)`` float32 (softmax - onehot) and ``losses`` ``(n,)`` float32."""

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
        """Embed candidates with a served model; errors as :meth:`select`."""
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
