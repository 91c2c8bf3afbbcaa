"""Selectors: what the coordinator hands a region's selection problems to.

A :class:`Selector` takes one :class:`SelectionRequest` (all (subset x class) problems of a
region in the kernel's flat batched form) and returns a :class:`SelectionResult`. The
in-process selector runs the kernel in a worker thread, so the caller's event loop stays free;
the Ray selector (:mod:`crest.worker.ray_pool`) runs it on a pool of actors.
:func:`solve_many` answers several requests with one kernel call. Selectors also embed
candidates with a trainer's exported model (:func:`run_embedding`).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from crest.worker.cancel import Cancellation, SelectionCancelled
from crest.worker.model import ExportedModel, ModelCache, tensor_view
from crest.worker.placement import available_cores, pin_current_thread, selector_threads
from crest.worker.problems import (
    CHUNK_ROWS,
    EmbedRequest,
    EmbedResult,
    RequestChunk,
    SelectionRequest,
    SelectionResult,
    Selector,
    check_embed_request,
    check_request,
    join_results,
    split_request,
)
from crest.worker.selection import select_groups

__all__ = [
    "EmbedRequest",
    "EmbedResult",
    "InProcessSelector",
    "SelectionRequest",
    "SelectionResult",
    "Selector",
    "check_request",
    "run_embedding",
    "run_selection",
    "solve_many",
]


def run_selection(
    request: SelectionRequest,
    device: str | torch.device = "cpu",
    cancel: Cancellation | None = None,
) -> SelectionResult:
    """Run the batched kernel on one request, synchronously."""
    return solve_many([request], device, cancel)[0]


def solve_many(
    requests: Sequence[SelectionRequest],
    device: str | torch.device = "cpu",
    cancel: Cancellation | None = None,
) -> list[SelectionResult]:
    """Solve several requests with one kernel call; one result per request, in order.

    All requests must share one embedding dimension. Inputs are read, never written (they
    may be read-only views of Ray's object store); a single request is not copied at all.

    Args:
        requests: the requests; each one's group ids start at 0.
        device: where the kernel runs.
        cancel: abandons the call (:func:`~crest.worker.selection.select_groups`).

    Returns:
        What :func:`run_selection` returns for each request alone.

    Raises:
        ValueError: a request is malformed (:func:`check_request`), or dimensions differ.
        SelectionCancelled: ``cancel`` was cancelled or its deadline passed.
    """
    for request in requests:
        check_request(request)
    if len({r.embeddings.shape[1] for r in requests}) > 1:
        raise ValueError("requests of one batch must share the embedding dimension")
    if len(requests) == 1:
        parts = [requests[0].embeddings]
        groups, budgets = requests[0].groups, requests[0].budgets
    else:
        # Request q's problems become ids [first[q], first[q] + G_q) of the merged batch.
        sizes = np.array([len(r.budgets) for r in requests], dtype=np.int64)
        first = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        parts = [r.embeddings for r in requests]
        groups = np.concatenate([r.groups + f for r, f in zip(requests, first, strict=True)])
        budgets = np.concatenate([r.budgets for r in requests])
    embeddings = (
        torch.cat([tensor_view(p) for p in parts]) if len(parts) > 1 else tensor_view(parts[0])
    )
    chosen = select_groups(
        embeddings.to(device),
        tensor_view(np.asarray(groups, dtype=np.int64)),
        tensor_view(np.asarray(budgets, dtype=np.int64)),
        cancel,
    )
    rows, chosen_groups, weights = (t.cpu().numpy() for t in chosen)
    if len(requests) == 1:
        return [SelectionResult(rows, chosen_groups, weights)]
    # Results come problem by problem in increasing id, so each request's are one slice.
    row_first = np.concatenate([[0], np.cumsum([len(r.groups) for r in requests])[:-1]])
    bounds = np.searchsorted(chosen_groups, np.concatenate([first, [first[-1] + sizes[-1]]]))
    return [
        SelectionResult(
            rows[bounds[q] : bounds[q + 1]] - row_first[q],
            chosen_groups[bounds[q] : bounds[q + 1]] - first[q],
            weights[bounds[q] : bounds[q + 1]],
        )
        for q in range(len(requests))
    ]


def run_embedding(
    request: EmbedRequest, device: str | torch.device, cache: ModelCache
) -> EmbedResult:
    """Embed one request's candidates, synchronously, with its model from ``cache`` (loaded
    from the request's artifact on ``device`` on a miss).

    Raises:
        ValueError: the request is malformed (:func:`check_embed_request`), or its weights
            or labels do not fit its model.
    """
    check_embed_request(request)
    model = cache.get(request.model_id, lambda: ExportedModel(request.artifact, device))
    model.load_weights(request.weights)
    return EmbedResult(*model.embed(request.inputs, request.labels, request.batch_size))


def _finished_uncancelled(chunk: Future[SelectionResult]) -> bool:
    """Whether a chunk's call is over without the kernel having stopped it (which
    :meth:`InProcessSelector._select` counted already)."""
    return chunk.done() and not isinstance(chunk.exception(), SelectionCancelled)


def _checked_split(request: SelectionRequest, max_rows: int) -> list[RequestChunk]:
    check_request(request)
    return split_request(request, max_rows)


class InProcessSelector:
    """Runs the kernel (and embeddings) in this process, on one worker thread (torch releases
    the GIL); the worker keeps the last few models it embedded with.

    The worker uses a single torch thread by default. A second thread with its own OpenMP
    team makes libgomp oversubscribe the cores and throttle its spin-waits, which measured
    2-3x slower small ops in the *training* thread for as long as the worker lived. Pinned to
    other cores than the training thread (``cores``), the two no longer share a core.

    Args:
        device: where the kernel runs.
        threads: torch intra-op threads of the worker (keep 1 beside a CPU training loop);
            default one per core of ``cores``, else 1.
        cores: pin the worker thread to these cores
            (:func:`~crest.worker.placement.pin_current_thread`); default: unpinned.
        chunk_rows: rows of one kernel call; a larger request is solved in chunks of whole
            problems under it (:func:`~crest.worker.problems.split_request`).

    Raises:
        ValueError: ``threads`` disagrees with ``cores``, or a core does not exist.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        threads: int | None = None,
        cores: Collection[int] | None = None,
        chunk_rows: int = CHUNK_ROWS,
    ) -> None:
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        self.chunk_rows = chunk_rows
        self.device = torch.device(device)
        self.abandoned = 0  # selections their callers gave up on, stopped or never started
        self._abandoned_lock = threading.Lock()
        self._models = ModelCache()  # used on the worker thread only
        self.cores = tuple(sorted(cores)) if cores else None
        self.threads = selector_threads(threads, self.cores)
        # The pool's one thread lives as long as the pool: what its first task sets, it keeps.
        # (An initializer's error would only break the pool; this one reaches the caller.)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crest-select")
        # Fix this (the caller's) thread's torch thread count first: in a process where torch
        # has not run yet, the worker's set_num_threads would become every thread's default,
        # and a training loop in this thread would run on one thread (and sum in another
        # order: results then depended on whether the model ran before the coordinator).
        torch.get_num_threads()
        if self.cores:
            setup = self._executor.submit(pin_current_thread, self.cores)
        else:
            setup = self._executor.submit(torch.set_num_threads, self.threads)
        try:
            setup.result()
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

    def worker_cores(self) -> tuple[int, ...]:
        """The cores the worker thread runs on (what pinning did, seen from the thread)."""
        return self._executor.submit(available_cores).result()

    async def select(
        self, request: SelectionRequest, timeout_s: float | None = None
    ) -> SelectionResult:
        """Solve ``request`` on the worker thread, in chunks of whole problems of at most
        ``chunk_rows`` rows, one kernel call each and one after another: another job's request
        queues behind the chunk running, not behind the whole selection.

        A selection its caller abandons (past ``timeout_s``, or cancelled) does not hold the
        thread: its queued chunks never start, and the chunk running stops at the kernel's
        next check (:class:`~crest.worker.cancel.Cancellation`). Either way it counts in
        :attr:`abandoned`.

        Raises:
            TimeoutError: no answer within ``timeout_s``.
        """
        cancel = Cancellation.after(timeout_s)
        loop = asyncio.get_running_loop()
        results = []
        pending: Future[SelectionResult] | None = None  # the chunk submitted last
        try:
            async with asyncio.timeout(timeout_s):
                chunks = await loop.run_in_executor(
                    self._executor, _checked_split, request, self.chunk_rows
                )
                for chunk in chunks:
                    pending = self._executor.submit(self._select, chunk.request, cancel)
                    results.append(await asyncio.wrap_future(pending))
        except (TimeoutError, asyncio.CancelledError):
            cancel.cancel()  # a chunk running stops at its next check, and counts itself
            if pending is None or pending.cancel() or _finished_uncancelled(pending):
                self._abandon()  # stopped before, between or instead of a chunk
            raise
        return join_results(chunks, results)

    def _select(self, request: SelectionRequest, cancel: Cancellation) -> SelectionResult:
        try:
            return run_selection(request, self.device, cancel)
        except SelectionCancelled:
            self._abandon()
            raise

    def _abandon(self) -> None:
        with self._abandoned_lock:  # the loop's thread and the worker's both count
            self.abandoned += 1

    async def embed(self, request: EmbedRequest, timeout_s: float | None = None) -> EmbedResult:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout_s):  # the thread finishes its forward passes regardless
            return await loop.run_in_executor(
                self._executor, run_embedding, request, self.device, self._models
            )

    async def healthy(self) -> bool:
        return True

    def close(self) -> None:
        self._executor.shutdown(wait=True)
