"""Selectors: what the coordinator hands a region's selection problems to.

A :class:`Selector` takes one :class:`SelectionRequest` (all (subset x class) problems of a
region in the kernel's flat batched form) and returns a :class:`SelectionResult`. The
in-process selector runs the kernel in a worker thread, so the caller's event loop stays free.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from crest.worker.selection import select_groups


@dataclass(frozen=True)
class SelectionRequest:
    """All facility-location problems of one region.

    Attributes:
        embeddings: ``(M, d)`` float32, one row per candidate of a problem.
        groups: ``(M,)`` int64 problem id of each row in ``[0, G)``; a problem's rows are in
            the order that breaks ties (lowest first).
        budgets: ``(G,)`` int64 how many rows to choose per problem.
    """

    embeddings: np.ndarray
    groups: np.ndarray
    budgets: np.ndarray


@dataclass(frozen=True)
class SelectionResult:
    """Chosen rows of a request: ``rows``/``groups`` int64 and raw cluster-size ``weights``
    float32, all ``(K,)``, problem by problem in increasing id, greedy order within one."""

    rows: np.ndarray
    groups: np.ndarray
    weights: np.ndarray


class Selector(Protocol):
    """Solves regions' selection problems for the coordinator."""

    async def select(self, request: SelectionRequest) -> SelectionResult:
        """Solve one request. Raises on failure; the coordinator retries or falls back."""
        ...

    async def healthy(self) -> bool:
        """Whether the selector can take work now (health checks; must not block long)."""
        ...

    def close(self) -> None:
        """Release threads, actors or processes. Idempotent."""
        ...


def run_selection(request: SelectionRequest, device: str | torch.device = "cpu") -> SelectionResult:
    """Run the batched kernel on one request, synchronously."""
    rows, groups, weights = select_groups(
        torch.from_numpy(request.embeddings).to(device),
        torch.from_numpy(request.groups),
        torch.from_numpy(request.budgets),
    )
    return SelectionResult(rows.cpu().numpy(), groups.cpu().numpy(), weights.cpu().numpy())


class InProcessSelector:
    """Runs the kernel in this process, on one worker thread (torch releases the GIL).

    The worker uses a single torch thread. A second thread with its own OpenMP team makes
    libgomp oversubscribe the cores and throttle its spin-waits, which measured 2-3x slower
    small ops in the *training* thread for as long as the worker lived.

    Args:
        device: where the kernel runs.
        threads: torch intra-op threads of the worker (keep 1 beside a CPU training loop).
    """

    def __init__(self, device: str | torch.device = "cpu", threads: int = 1) -> None:
        self.device = torch.device(device)
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="crest-select",
            initializer=torch.set_num_threads, initargs=(threads,),
        )  # fmt: skip

    async def select(self, request: SelectionRequest) -> SelectionResult:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, run_selection, request, self.device)

    async def healthy(self) -> bool:
        return True

    def close(self) -> None:
        self._executor.shutdown(wait=True)
