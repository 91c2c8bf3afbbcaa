"""The Ray selector pool on a real local Ray (session fixture ``ray_session``).

Timeouts are generous and nothing asserts speed: the machine may be a busy 2-core box.
Faults are real: actor processes are killed with SIGKILL or frozen with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Iterator

import numpy as np
import pytest

from crest.worker.model import ExportedModel
from crest.worker.selector import (
    EmbedRequest,
    InProcessSelector,
    SelectionRequest,
    SelectionResult,
)
from tests.worker.models import cnn, embed_request, mlp

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_session")]

ray_pool = pytest.importorskip("crest.worker.ray_pool")


def region(seed: int, job: str, classes: int = 10, per_class: int = 50, dim: int = 10):
    """A CREST region's request: P=5 subsets x ``classes`` problems, uneven sizes."""
    rng = np.random.default_rng(seed)
    problems = 5 * classes
    sizes = rng.integers(per_class // 2, per_class + 1, problems)
    groups = rng.permutation(np.repeat(np.arange(problems), sizes))
    embeddings = rng.standard_normal((len(groups), dim)).astype(np.float32)
    budgets = rng.integers(1, 14, problems)
    return SelectionRequest(embeddings, groups, budgets, job_id=job)


def large(seed: int, job: str) -> SelectionRequest:
    """One large problem: long enough (about a second) to kill an actor while it runs."""
    rng = np.random.default_rng(seed)
    embeddings = rng.standard_normal((2500, 32)).astype(np.float32)
    return SelectionRequest(embeddings, np.zeros(2500, np.int64), np.array([250]), job_id=job)


def expected(requests: list[SelectionRequest]) -> list[SelectionResult]:
    async def solve() -> list[SelectionResult]:
        selector = InProcessSelector()
        try:
            return [await selector.select(r) for r in requests]
        finally:
            selector.close()

    return asyncio.run(solve())


def assert_same(got: list[SelectionResult], want: list[SelectionResult]) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert np.array_equal(a.rows, b.rows)
        assert np.array_equal(a.groups, b.groups)
        assert np.array_equal(a.weights, b.weights)
        assert a.rows.dtype == np.int64 and a.weights.dtype == np.float32


def select_all(pool, requests: list[SelectionRequest]) -> list[SelectionResult]:
    async def run() -> list[SelectionResult]:
        return list(await asyncio.gather(*(pool.select(r) for r in requests)))

    return asyncio.run(run())


# The session Ray has 2 CPUs: the module's pool takes one, a test's fresh pool the other,
# and a short-lived extra actor a quarter.
POOL = {"num_actors": 2, "cpus_per_actor": 0.5, "deadline_s": 120, "ready_timeout_s": 120}
EXTRA = {"cpus_per_actor": 0.25, "ready_timeout_s": 120}
EXTRA_ACTOR = {"num_cpus": 0.25, "num_gpus": 0}


@pytest.fixture(scope="module")
def pool() -> Iterator[object]:
    selector = ray_pool.RaySelector(**POOL)
    try:
        yield selector
    finally:
        selector.close()


@pytest.fixture
def fresh_pool() -> Iterator[object]:
    selector = ray_pool.RaySelector(**POOL)
    try:
        yield selector
    finally:
        selector.close()


def test_no_gpu_is_requested_without_gpus(pool) -> None:
    import ray

    assert ray.cluster_resources().get("GPU", 0) == 0
    assert pool.resources == {"num_cpus": 0.5, "num_gpus": 0.0}
    asked = ray_pool.RaySelector(gpu_share=0.5, **EXTRA)  # would pend if it asked for a GPU
    try:
        assert asked.resources["num_gpus"] == 0
        # The documented default (settings, configuration reference): one actor without GPUs.
        from crest.service.settings import ServeSettings

        described = ServeSettings.model_fields["selector_actors"].description or ""
        assert described.endswith("else 1") and len(asked.actors) == 1
    finally:
        asked.close()


def test_concurrent_requests_from_two_jobs_equal_in_process_selection(pool) -> None:
    requests = [region(seed, job="a" if seed % 2 else "b") for seed in range(8)]
    requests += [region(8, "a", classes=3, dim=4), region(9, "b", per_class=7)]
    assert_same(select_all(pool, requests), expected(requests))
    assert pool.queued == 0
    assert pool.in_flight == [0, 0]


def test_healthy_answers_while_actors_work(pool) -> None:
    async def run() -> tuple[bool, SelectionResult]:
        work = asyncio.ensure_future(pool.select(large(1, "a")))
        healthy = await pool.healthy()
        return healthy, await work

    healthy, result = asyncio.run(run())
    assert healthy
    assert_same([result], expected([large(1, "a")]))


def test_two_jobs_selections_run_at_once_on_two_actors(pool) -> None:
    requests = [large(11, "a"), large(12, "b")]
    results = select_all(pool, requests)
    batches = pool.served[-2:]
    assert sorted(b.jobs for b in batches) == [("a",), ("b",)]
    first, second = batches
    assert first.worker != second.worker  # one actor each...
    assert first.started < second.finished and second.started < first.finished  # ...at once
    assert_same(results, expected(requests))


def test_a_small_job_is_served_between_a_large_jobs_chunks(pool, monkeypatch) -> None:
    # A large job's 3 problems of 2500 rows (a second or so each) are 3 chunks: the two actors
    # take one each, and a small job that asks meanwhile goes before the third.
    monkeypatch.setattr(pool, "max_batch_rows", 2500)
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(3), 2500)
    big = SelectionRequest(rng.standard_normal((len(groups), 16)).astype(np.float32), groups,
                           np.full(3, 250), job_id="large")  # fmt: skip
    small = region(13, "small", classes=2, per_class=20)

    async def run() -> tuple[list[str], list[SelectionResult]]:
        finished: list[str] = []

        async def select(request: SelectionRequest) -> SelectionResult:
            result = await pool.select(request)
            finished.append(request.job_id)
            return result

        work = asyncio.ensure_future(select(big))
        for _ in range(6000):  # until both actors run a chunk
            if pool.in_flight == [1, 1]:
                break
            await asyncio.sleep(0.01)
        assert pool.in_flight == [1, 1] and pool.queued == 1
        results = await asyncio.gather(work, select(small))
        return finished, list(results)

    finished, results = asyncio.run(run())
    served = pool.served[-4:]
    assert finished == ["small", "large"]
    assert sorted(b.jobs for b in served) == [("large",)] * 3 + [("small",)]
    large_batches = [b for b in served if b.jobs == ("large",)]
    assert all(b.rows == 2500 for b in large_batches)
    assert len({b.worker for b in large_batches}) == 2  # the chunks ran on both actors
    small_batch = next(b for b in served if b.jobs == ("small",))
    assert small_batch.finished < max(b.finished for b in large_batches)
    assert_same(results, expected([big, small]))


def test_actor_killed_mid_selection_is_retried(fresh_pool) -> None:
    requests = [large(2, "a"), large(3, "b")]

    async def run() -> list[SelectionResult]:
        work = asyncio.gather(*(fresh_pool.select(r) for r in requests))
        for _ in range(600):  # wait until both actors work (each got one request)
            if fresh_pool.in_flight == [1, 1]:
                break
            await asyncio.sleep(0.01)
        assert fresh_pool.in_flight == [1, 1]
        victim = fresh_pool.actor_pids[0]
        os.kill(victim, signal.SIGKILL)
        results = await work
        assert await fresh_pool.healthy()
        return results

    assert_same(asyncio.run(run()), expected(requests))


def test_frozen_actor_times_out_then_is_restarted() -> None:
    # Every actor hung (SIGSTOP): select raises at its deadline; the actor, still busy once
    # its batch has timed out, is killed and restarted by the pool, and selection resumes.
    frozen_pool = ray_pool.RaySelector(**{**POOL, "num_actors": 1, "deadline_s": 1.0})
    pids = set(frozen_pool.actor_pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    request = region(10, "a")

    async def run() -> SelectionResult:
        assert not await frozen_pool.healthy()
        start = time.monotonic()
        with pytest.raises(ray_pool.SelectionTimeout, match="no selection within 1 s"):
            await frozen_pool.select(request)
        assert time.monotonic() - start < 1.0 + 10.0  # at the deadline, not at recovery
        for _ in range(600):  # watchdog: deadline + ping timeout, then a restart
            if not set(frozen_pool.actor_pids) & pids:
                break
            await asyncio.sleep(0.1)
        assert not set(frozen_pool.actor_pids) & pids
        assert await frozen_pool.healthy()
        frozen_pool.deadline_s = 120.0
        return await frozen_pool.select(request)

    try:
        result = asyncio.run(run())
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # normally killed by the pool
                os.kill(pid, signal.SIGCONT)
        frozen_pool.close()
    assert_same([result], expected([request]))


def test_actors_gone_for_good_time_out_then_are_replaced(fresh_pool) -> None:
    import ray

    request = region(5, "b")
    old_pids = set(fresh_pool.actor_pids)
    for actor in fresh_pool.actors:
        ray.kill(actor, no_restart=True)

    async def run() -> SelectionResult:
        # A replacement needs a new process that imports torch: far longer than this deadline.
        fresh_pool.deadline_s = 0.3
        with pytest.raises(ray_pool.SelectionTimeout):
            await fresh_pool.select(request)
        fresh_pool.deadline_s = 120.0
        result = await fresh_pool.select(request)
        for _ in range(1200):  # both slots get a new actor (the second one in the background)
            if not set(fresh_pool.actor_pids) & old_pids:
                break
            await asyncio.sleep(0.1)
        return result

    assert_same([asyncio.run(run())], expected([request]))
    assert not set(fresh_pool.actor_pids) & old_pids


def test_unschedulable_actors_fail_fast() -> None:
    start = time.monotonic()
    with pytest.raises(ray_pool.PoolUnavailable, match="did not start within 2 s"):
        ray_pool.RaySelector(cpus_per_actor=64, ready_timeout_s=2)
    assert time.monotonic() - start < 60


def test_closed_pool_refuses_work() -> None:
    selector = ray_pool.RaySelector(**EXTRA)
    selector.close()
    selector.close()  # idempotent
    assert not asyncio.run(selector.healthy())
    with pytest.raises(ray_pool.PoolUnavailable, match="closed"):
        select_all(selector, [region(6, "a")])
    with pytest.raises(ray_pool.PoolUnavailable, match="closed"):
        asyncio.run(selector.embed(embed_request(mlp(), n=4)))


def test_bad_request_fails_alone(pool) -> None:
    from crest.proto.errors import InvalidArgument

    good = region(7, "a")
    bad = SelectionRequest(
        np.full((4, 10), np.nan, np.float32), np.zeros(4, np.int64), np.array([2]), job_id="b"
    )

    async def run() -> list[object]:
        return await asyncio.gather(pool.select(good), pool.select(bad), return_exceptions=True)

    good_result, bad_result = asyncio.run(run())
    assert isinstance(bad_result, InvalidArgument)
    assert isinstance(good_result, SelectionResult)
    assert_same([good_result], expected([good]))


def test_actor_abandons_a_kernel_call_past_its_deadline() -> None:
    import ray

    from crest.worker.cancel import SelectionCancelled

    actor = ray.remote(ray_pool.SelectorActor).options(**EXTRA_ACTOR).remote(1, False)
    request = region(11, "a")
    payload = (request.embeddings, request.groups, request.budgets)
    try:
        with pytest.raises(ray.exceptions.RayTaskError) as raised:
            ray.get(actor.select.remote(payload, timeout_s=0.0), timeout=120)
        assert isinstance(raised.value.cause, SelectionCancelled)
        (result,) = ray.get(actor.select.remote(payload, timeout_s=120.0), timeout=120)
    finally:
        ray.kill(actor, no_restart=True)
    assert_same([result], expected([request]))


def test_pool_maps_an_abandoned_call_to_a_timeout_and_keeps_the_actor(
    fresh_pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A batch dispatched with no time left (its deadline passed on the way): the actor gives
    # the call up at once, the caller gets SelectionTimeout, and the actor, not hung, is
    # neither killed nor restarted and serves the next request.
    run = ray_pool._run

    async def late(actor, batch):
        for item in batch:
            item.deadline = asyncio.get_running_loop().time()
        return await run(actor, batch)

    pids = list(fresh_pool.actor_pids)
    request = region(12, "b")

    async def go() -> SelectionResult:
        monkeypatch.setattr(ray_pool, "_run", late)
        with pytest.raises(ray_pool.SelectionTimeout, match="abandoned by the actor"):
            await fresh_pool.select(request)
        monkeypatch.setattr(ray_pool, "_run", run)
        return await fresh_pool.select(request)

    result = asyncio.run(go())
    assert fresh_pool.abandoned == 1
    assert fresh_pool.actor_pids == pids
    assert_same([result], expected([request]))


def local_embedding(request: EmbedRequest) -> tuple[np.ndarray, np.ndarray]:
    model = ExportedModel(request.artifact)
    model.load_weights(request.weights)
    return model.embed(request.inputs, request.labels)


def test_embeddings_on_the_pool_equal_the_exported_models(pool) -> None:
    first, second = embed_request(mlp(seed=1), n=60), embed_request(cnn(), n=30, job="b")
    requests = [first, second, first, dataclasses.replace(second, weights=second.weights * 0.5)]

    async def run() -> list[object]:
        # Beside selections of both jobs: embeddings never share (or overlap) a kernel call.
        work = [pool.embed(r) for r in requests] + [pool.select(region(11, "a"))]
        return list(await asyncio.gather(*work))

    *results, selected = asyncio.run(run())
    for request, got in zip(requests, results, strict=True):
        want = local_embedding(request)
        np.testing.assert_allclose(got.embeddings, want[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.losses, want[1], rtol=1e-5, atol=1e-6)
        # The caller's own memory, not views pinning objects in the store (a job keeps them).
        assert got.embeddings.flags.writeable and got.losses.flags.writeable
    assert not np.allclose(results[1].embeddings, results[3].embeddings)  # weights matter
    assert_same([selected], expected([region(11, "a")]))
    assert set(pool._artifacts) == {first.model_id, second.model_id}  # stored once each


def test_embedding_with_wrong_weights_is_a_bug_not_a_timeout(pool) -> None:
    from crest.proto.errors import InvalidArgument, Unavailable

    request = embed_request(mlp(seed=2), n=10)
    bad = dataclasses.replace(request, weights=request.weights[:-1])
    with pytest.raises(InvalidArgument, match=rf"must have {len(request.weights)} values") as err:
        asyncio.run(pool.embed(bad))
    assert not isinstance(err.value, Unavailable)
    with pytest.raises(InvalidArgument, match="float32"):  # refused before it reaches Ray
        asyncio.run(pool.embed(dataclasses.replace(request, weights=request.weights.astype(int))))


def test_pinned_actors_run_on_their_cores_with_one_thread_each() -> None:
    from pathlib import Path

    from crest.worker.placement import available_cores

    target = available_cores()[-1]
    pinned = ray_pool.RaySelector(**EXTRA, cores=[target])
    try:
        import ray

        assert ray.get(pinned.actors[0].cores.remote(), timeout=60) == (target,)
        # Every thread of the actor's process, Ray's own included, seen from outside.
        (pid,) = pinned.actor_pids
        seen = set()
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
                seen.add(tuple(sorted(os.sched_getaffinity(int(task.name)))))
        assert seen == {(target,)}
        request = region(11, "a")
        assert_same(select_all(pinned, [request]), expected([request]))
    finally:
        pinned.close()
    with pytest.raises(ValueError, match="threads=2 but 1 core"):
        ray_pool.RaySelector(**EXTRA, threads=2, cores=[target])


def test_an_actor_pinned_to_a_missing_core_fails_to_start_with_the_reason() -> None:
    missing = os.cpu_count() or 1
    with pytest.raises(ray_pool.PoolUnavailable, match=rf"core\(s\) {missing} do not exist"):
        ray_pool.RaySelector(**EXTRA, cores=[missing])
