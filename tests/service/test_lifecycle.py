"""JobManager: deleting and expiring jobs, jobs the store lost, state over the value limit."""

import asyncio

import numpy as np
import pytest

from crest.proto.contract import JobConfig, RegionStatus
from crest.proto.errors import DataLoss, NotFound, ResourceExhausted, Unavailable
from crest.service.manager import JobManager
from crest.service.store import MemoryStore
from crest.worker.selector import InProcessSelector
from tests.service.helpers import fake_embeddings
from tests.service.test_manager import CONFIG, LABELS, FlakyStore, drive

SHORT = JobConfig(num_examples=2000, num_classes=4, batch_size=32, epochs=2, train_frac=0.2)


def manager_on(store: MemoryStore, **kwargs) -> JobManager:
    return JobManager(InProcessSelector(), store, **kwargs)


async def upload(manager: JobManager, job_id: str, rank: int, seq: int) -> None:
    view = await manager.get_region(job_id, rank, 0)
    assert view.status is RegionStatus.EMBED
    candidates = view.candidates
    losses = np.ones(len(candidates), np.float32)
    await manager.submit_embeddings(job_id, rank, view.region_id, candidates,
                                    fake_embeddings(candidates), losses, seq)  # fmt: skip


def test_delete_removes_the_job_everywhere_and_is_idempotent() -> None:
    async def main() -> None:
        store = MemoryStore()
        manager = manager_on(store)
        await manager.create_job(CONFIG, LABELS, job_id="gone")
        await manager.create_job(CONFIG, LABELS, job_id="kept")
        await drive(manager, "gone", 0, 5, [0])
        assert await manager.delete_job("gone") is True
        assert manager.job_ids() == ["kept"]
        assert await store.job_ids() == ["kept"]
        assert await store.load("gone") is None
        with pytest.raises(NotFound, match="unknown job"):
            await manager.job_status("gone")
        assert await manager.delete_job("gone") is False  # a retried delete succeeds
        assert await manager.delete_job("never") is False
        # The id is free again: a new job under it starts from scratch.
        await manager.create_job(CONFIG, LABELS, job_id="gone")
        assert (await manager.job_status("gone")).step == 0
        manager.selector.close()

    asyncio.run(main())


def test_a_call_waiting_on_a_deleted_job_fails_with_not_found() -> None:
    async def main() -> None:
        manager = manager_on(MemoryStore(), wait_s=120)
        await manager.create_job(CONFIG.model_copy(update={"world_size": 2}), LABELS, "pair")
        await upload(manager, "pair", 0, 1)
        waiting = asyncio.create_task(manager.get_region("pair", 0, 0))  # waits for rank 1
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert await manager.delete_job("pair")
        with pytest.raises(NotFound, match="was deleted"):
            await asyncio.wait_for(waiting, 30)
        manager.selector.close()

    asyncio.run(main())


def test_finished_jobs_expire_after_the_ttl_and_the_clock_survives_a_restart() -> None:
    async def main() -> None:
        store = MemoryStore()
        manager = manager_on(store, finished_ttl_s=3600)
        await manager.create_job(SHORT, LABELS, job_id="done")
        await manager.create_job(SHORT, LABELS, job_id="running")
        await drive(manager, "done", 0, SHORT.total_steps, [0])
        await drive(manager, "running", 0, 3, [0])
        assert (await manager.job_status("done")).finished
        finished_at = manager.finished_at("done")
        assert finished_at is not None and manager.finished_at("running") is None
        assert await manager.expire_finished(now=finished_at + 3599) == []
        await manager.close()

        restarted = manager_on(store, finished_ttl_s=3600)
        await restarted.start()
        assert restarted.finished_at("done") == finished_at  # stored, not restarted
        assert await restarted.expire_finished(now=finished_at + 3600) == ["done"]
        assert restarted.job_ids() == ["running"]
        assert await store.job_ids() == ["running"]
        assert await store.finished_times() == {}
        await restarted.close()

    asyncio.run(main())


def test_the_expiry_sweep_runs_by_itself() -> None:
    async def main() -> None:
        store = MemoryStore()
        manager = manager_on(store, finished_ttl_s=0.2)
        await manager.start()
        await manager.create_job(SHORT, LABELS, job_id="done")
        await drive(manager, "done", 0, SHORT.total_steps, [0])
        for _ in range(600):
            if not manager.job_ids():
                break
            await asyncio.sleep(0.05)
        assert manager.job_ids() == [] and await store.job_ids() == []
        await manager.close()

    asyncio.run(main())


def test_no_expiry_with_a_ttl_of_zero() -> None:
    async def main() -> None:
        manager = manager_on(MemoryStore(), finished_ttl_s=0)
        await manager.create_job(SHORT, LABELS, job_id="done")
        await drive(manager, "done", 0, SHORT.total_steps, [0])
        assert await manager.expire_finished(now=1e12) == []
        assert manager.job_ids() == ["done"]
        manager.selector.close()

    asyncio.run(main())


def test_a_job_the_store_lost_is_data_loss_then_unknown() -> None:
    async def main() -> None:
        store = MemoryStore()
        manager = manager_on(store)
        await manager.create_job(CONFIG, LABELS, job_id="lost")
        store._jobs.clear()  # the store restarted without its data
        with pytest.raises(DataLoss, match="create the job again"):
            await drive(manager, "lost", 0, 3, [0])
        with pytest.raises(NotFound):
            await manager.job_status("lost")
        await manager.create_job(CONFIG, LABELS, job_id="lost")  # and it can be
        manager.selector.close()

    asyncio.run(main())


def test_a_stale_job_the_store_lost_is_data_loss() -> None:
    async def main() -> None:
        store = FlakyStore()
        manager = manager_on(store)
        await manager.create_job(CONFIG, LABELS, job_id="lost")
        store.fail_next = True
        with pytest.raises(Unavailable, match="store failed"):
            await drive(manager, "lost", 0, 3, [0])
        store._jobs.clear()  # ... and came back empty
        with pytest.raises(DataLoss):
            await manager.open_session("lost", 0)

    asyncio.run(main())


def test_state_over_the_value_limit_is_resource_exhausted_and_unhealthy() -> None:
    async def main() -> None:
        store = MemoryStore()
        manager = manager_on(store, snapshot_every=1)  # every change writes a snapshot
        await manager.create_job(CONFIG, LABELS, job_id="big")
        assert await manager.healthy()
        before = await manager.job_status("big")
        store.max_value_bytes = len((await store.load("big")).snapshot) - 1
        for _ in range(2):  # the same answer every time: nothing to retry
            with pytest.raises(ResourceExhausted, match="value limit"):
                await manager.get_region("big", 0, 0)
        assert not await manager.healthy()
        assert await manager.job_status("big") == before, "a refused change changes nothing"
        assert await manager.delete_job("big")
        assert await manager.healthy()
        manager.selector.close()

    asyncio.run(main())


def test_a_job_too_large_to_store_is_not_created() -> None:
    async def main() -> None:
        manager = manager_on(MemoryStore(max_value_bytes=1000))
        with pytest.raises(ResourceExhausted, match="value limit"):
            await manager.create_job(CONFIG, LABELS, job_id="huge")
        assert manager.job_ids() == []
        assert await manager.healthy(), "nothing lasting: nothing to report"
        manager.selector.close()

    asyncio.run(main())
