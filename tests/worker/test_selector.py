import asyncio
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from crest.worker.model import ExportedModel
from crest.worker.problems import join_results, split_request
from crest.worker.selector import (
    EmbedResult,
    InProcessSelector,
    SelectionRequest,
    SelectionResult,
    check_request,
    run_selection,
    solve_many,
)
from tests.worker.models import embed_request, mlp


def request(seed: int, dim: int = 6, job: str = "") -> SelectionRequest:
    rng = np.random.default_rng(seed)
    problems = int(rng.integers(1, 12))
    sizes = rng.integers(0, 30, problems)
    groups = rng.permutation(np.repeat(np.arange(problems), sizes))
    embeddings = rng.standard_normal((len(groups), dim)).astype(np.float32)
    return SelectionRequest(embeddings, groups, rng.integers(0, 9, problems), job_id=job)


def test_merged_requests_get_what_each_gets_alone() -> None:
    requests = [request(seed, job=str(seed % 2)) for seed in range(7)]
    for array in (a for r in requests for a in (r.embeddings, r.groups, r.budgets)):
        array.flags.writeable = False  # as they arrive from Ray's object store
    merged = solve_many(requests)
    for req, got in zip(requests, merged, strict=True):
        alone = run_selection(req)
        assert np.array_equal(got.rows, alone.rows)
        assert np.array_equal(got.groups, alone.groups)
        assert np.array_equal(got.weights, alone.weights)
        assert got.rows.dtype == np.int64 and got.weights.dtype == np.float32


def test_job_id_is_optional() -> None:
    plain = SelectionRequest(np.zeros((2, 3), np.float32), np.zeros(2, np.int64), np.ones(1))
    assert plain.job_id == ""


def test_different_dimensions_cannot_share_a_call() -> None:
    with pytest.raises(ValueError, match="embedding dimension"):
        solve_many([request(1, dim=3), request(2, dim=4)])


@pytest.mark.parametrize(
    ("embeddings", "groups", "budgets", "message"),
    [
        (np.zeros((2, 3), np.int64), np.zeros(2, np.int64), np.ones(1, np.int64), "floats"),
        (np.zeros((2, 3), np.float32), np.zeros(3, np.int64), np.ones(1, np.int64), "groups"),
        (np.zeros((2, 3), np.float32), np.array([0, 1]), np.ones(1, np.int64), r"\[0, 1\)"),
        (np.zeros((2, 3), np.float32), np.zeros(2, np.int64), -np.ones(1, np.int64), ">= 0"),
        (np.full((2, 3), np.inf, np.float32), np.zeros(2, np.int64), np.ones(1, np.int64), "Inf"),
    ],
)
def test_malformed_requests_are_rejected(embeddings, groups, budgets, message) -> None:
    with pytest.raises(ValueError, match=message):
        check_request(SelectionRequest(embeddings, groups, budgets))


def test_in_process_embedding_equals_the_exported_model() -> None:
    request = embed_request(mlp(), n=40)
    model = ExportedModel(request.artifact)
    model.load_weights(request.weights)
    want = model.embed(request.inputs, request.labels)

    async def run() -> list[EmbedResult]:
        selector = InProcessSelector()
        try:
            # The second call finds the model in the selector's cache.
            return [await selector.embed(request), await selector.embed(request, timeout_s=60)]
        finally:
            selector.close()

    for got in asyncio.run(run()):
        np.testing.assert_array_equal(got.embeddings, want[0])
        np.testing.assert_array_equal(got.losses, want[1])


def test_in_process_embedding_with_wrong_weights_is_a_bug_not_a_timeout() -> None:
    request = embed_request(mlp(), n=8)
    bad = dataclasses.replace(request, weights=request.weights[:-3])

    async def run() -> None:
        selector = InProcessSelector()
        try:
            await selector.embed(bad, timeout_s=60)
        finally:
            selector.close()

    with pytest.raises(ValueError, match=rf"must have {len(request.weights)} values"):
        asyncio.run(run())


def test_timed_out_selection_is_abandoned_and_the_worker_serves_the_next() -> None:
    # The worker thread is held until the first request has timed out: abandoned by its
    # caller, that request must never run (counted in ``abandoned``; a running one stops at
    # the kernel's next check, test_selection's cancellation tests), and the next is served.
    import threading

    selector = InProcessSelector()
    release = threading.Event()
    first, second = request(3), request(4)

    async def run() -> object:
        loop = asyncio.get_running_loop()
        held = loop.run_in_executor(selector._executor, release.wait)
        with pytest.raises(TimeoutError):
            await selector.select(first, timeout_s=0.01)
        release.set()
        await held
        return await selector.select(second, timeout_s=120)

    try:
        result = asyncio.run(run())
        assert selector.abandoned == 1
    finally:
        release.set()
        selector.close()
    want = run_selection(second)
    assert np.array_equal(result.rows, want.rows) and np.array_equal(result.weights, want.weights)


def sorted_request(seed: int) -> SelectionRequest:
    """A region's request as the coordinator builds it: problems' rows one after another."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 40, 25)
    sizes[3] = 120  # one problem over every chunk size tried below: a chunk of its own
    groups = np.repeat(np.arange(25), sizes)
    embeddings = rng.standard_normal((len(groups), 5)).astype(np.float32)
    return SelectionRequest(embeddings, groups, rng.integers(0, 9, 25), job_id="j")


@pytest.mark.parametrize("make", [sorted_request, request])
@pytest.mark.parametrize("max_rows", [1, 37, 100, 10**6])
def test_a_request_solved_in_chunks_gets_what_it_gets_whole(make, max_rows: int) -> None:
    for seed in range(2):
        whole = make(seed)
        chunks = split_request(whole, max_rows)
        sizes = [len(c.request.groups) for c in chunks]
        assert sum(sizes) == len(whole.groups)
        assert all(size <= max_rows or len(c.request.budgets) == 1
                   for size, c in zip(sizes, chunks, strict=True))  # fmt: skip
        assert len(chunks) == 1 or max_rows < len(whole.groups)
        joined = join_results(chunks, [run_selection(c.request) for c in chunks])
        want = run_selection(whole)
        for got, expected in zip(dataclasses.astuple(joined), dataclasses.astuple(want),
                                 strict=True):  # fmt: skip
            assert np.array_equal(got, expected) and got.dtype == expected.dtype
    assert len(split_request(sorted_request(0), 37)) > 3  # not vacuous


def test_the_in_process_selector_serves_another_job_between_a_large_ones_chunks() -> None:
    rng = np.random.default_rng(0)
    # 6 problems of 300 rows, a chunk each: one large selection.
    groups = np.repeat(np.arange(6), 300)
    large = SelectionRequest(rng.standard_normal((len(groups), 8)).astype(np.float32), groups,
                             np.full(6, 30), job_id="large")  # fmt: skip
    small = request(1, job="small")

    async def run() -> list[str]:
        selector = InProcessSelector(chunk_rows=300)
        finished: list[str] = []

        async def select(req: SelectionRequest) -> SelectionResult:
            result = await selector.select(req)
            finished.append(req.job_id)
            return result

        try:
            big = asyncio.ensure_future(select(large))
            await asyncio.sleep(0)  # its first chunk is on the worker thread
            results = await asyncio.gather(big, select(small))
        finally:
            selector.close()
        for got, want in zip(results, (run_selection(large), run_selection(small)), strict=True):
            assert np.array_equal(got.rows, want.rows) and np.array_equal(got.weights, want.weights)
        return finished

    assert asyncio.run(run()) == ["small", "large"]


def test_an_abandoned_chunked_selection_stops_within_its_running_chunk() -> None:
    # The caller cancels while the first chunk's call is held (a timeout takes the same path;
    # cancelling once the chunk has started keeps the test free of timing); released, the
    # chunk must stop at the kernel's first check (counted in ``abandoned``) and no later
    # chunk may start.
    import threading

    calls: list[int] = []
    started, release = threading.Event(), threading.Event()

    class Held(InProcessSelector):
        def _select(self, request: SelectionRequest, cancel) -> SelectionResult:
            calls.append(len(request.groups))
            started.set()
            release.wait()
            return super()._select(request, cancel)

    groups = np.repeat(np.arange(6), 300)  # 6 chunks of one problem each
    rng = np.random.default_rng(0)
    large = SelectionRequest(rng.standard_normal((len(groups), 8)).astype(np.float32), groups,
                             np.full(6, 30), job_id="large")  # fmt: skip
    selector = Held(chunk_rows=300)

    async def run() -> None:
        task = asyncio.ensure_future(selector.select(large, timeout_s=600))
        assert await asyncio.to_thread(started.wait, 120)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(run())
        release.set()
        selector._executor.submit(lambda: None).result(timeout=120)  # the thread is idle again
        assert calls == [300], "one chunk started, none after it"
        assert selector.abandoned == 1
    finally:
        release.set()
        selector.close()


def test_an_in_process_selector_leaves_the_callers_torch_threads_alone() -> None:
    """In a process where torch has not run yet, the worker thread's torch thread count must
    not become the default of the thread that made the selector (a training loop's)."""
    code = (
        "import torch\n"
        "from crest.worker.selector import InProcessSelector\n"
        "selector = InProcessSelector(threads=2)\n"
        "print(torch.get_num_threads())\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the default, on any machine
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
        check=True,
    )  # fmt: skip
    assert out.stdout.split()[-1] == "1"
