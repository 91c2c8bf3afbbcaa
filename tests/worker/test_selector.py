import asyncio
import dataclasses

import numpy as np
import pytest

from crest.worker.model import ExportedModel
from crest.worker.selector import (
    EmbedResult,
    InProcessSelector,
    SelectionRequest,
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
