"""RedisStore against a real redis-server, and a manager restarted on it."""

from __future__ import annotations

import asyncio

import pytest

from crest.proto.errors import DataLoss, ResourceExhausted
from crest.service.manager import JobManager
from crest.service.store import RedisStore, open_store
from crest.worker.selector import InProcessSelector
from tests.integration.conftest import RedisServer
from tests.service.test_manager import CONFIG, LABELS, drive

pytestmark = pytest.mark.integration


def test_key_layout_and_atomic_snapshot(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = open_store(redis_server.url)
        assert isinstance(store, RedisStore)
        assert await store.ping()
        await store.create("a", b"snap0")
        assert await store.append("a", b"e1") == 1
        assert await store.append("a", b"e2") == 2
        loaded = await store.load("a")
        assert (loaded.snapshot, loaded.log) == (b"snap0", [b"e1", b"e2"])
        await store.snapshot("a", b"snap1")
        loaded = await store.load("a")
        assert (loaded.snapshot, loaded.log) == (b"snap1", [])
        assert await store.job_ids() == ["a"]
        assert await store.load("missing") is None
        keys = sorted(k.decode() for k in await store._redis.keys("crest:*"))
        assert keys == ["crest:job:a:snapshot", "crest:jobs"]
        await store.close()

    asyncio.run(main())


def test_delete_finish_times_lost_jobs_and_the_value_limit(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = RedisStore(redis_server.url, max_value_bytes=100)
        await store.create("a", b"snap0")
        await store.append("a", b"e1")
        await store.mark_finished("a", 1234.5)
        await store.create("b", b"snap0")
        assert await store.finished_times() == {"a": 1234.5}
        assert await store.delete("a") is True
        assert await store.delete("a") is False
        assert await store.finished_times() == {}
        keys = sorted(k.decode() for k in await store._redis.keys("crest:*"))
        assert keys == ["crest:job:b:snapshot", "crest:jobs"]
        with pytest.raises(ResourceExhausted, match="value limit"):
            await store.append("b", b"x" * 101)
        await store._redis.flushall()  # as after a restart without data
        with pytest.raises(DataLoss):
            await store.append("b", b"e1")
        with pytest.raises(DataLoss):
            await store.snapshot("b", b"snap1")
        assert await store._redis.keys("*") == [], "nothing half-written for a lost job"
        await store.close()

    asyncio.run(main())


def test_a_manager_restarted_on_redis_resumes_the_job(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = open_store(redis_server.url)
        first = JobManager(InProcessSelector(), store, snapshot_every=5, strict=True)
        await first.create_job(CONFIG, LABELS, job_id="r")
        seq = [0]
        await drive(first, "r", 0, 20, seq)
        status = await first.job_status("r")
        await first.close()

        second = JobManager(InProcessSelector(), open_store(redis_server.url), strict=True)
        await second.start()
        assert await second.job_status("r") == status
        assert (await second.open_session("r", 0)).committed_seq == seq[0]
        await drive(second, "r", 20, 40, seq)
        await second.close()

    asyncio.run(main())


def test_health_reports_a_dead_redis(redis_server: RedisServer) -> None:
    async def main() -> None:
        manager = JobManager(InProcessSelector(), open_store(redis_server.url), strict=True)
        assert await manager.healthy()
        redis_server.process.terminate()
        redis_server.process.wait(timeout=30)
        assert not await manager.healthy()
        await manager.close()

    asyncio.run(main())
