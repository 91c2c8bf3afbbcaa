"""RedisStore against a real redis-server, and a manager restarted on it."""

from __future__ import annotations

import asyncio
import json

import pytest

from crest.proto.errors import DataLoss, FailedPrecondition, ResourceExhausted
from crest.service import manager as manager_module
from crest.service.codec import pack
from crest.service.job import LIVE_CLOSED_REGIONS
from crest.service.manager import JobManager
from crest.service.store import RedisStore, StoredRegion, open_store
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


def test_snapshots_write_only_new_pieces_and_drop_unnamed_ones(redis_server: RedisServer) -> None:
    async def main() -> None:
        store = RedisStore(redis_server.url)
        await store.create("p", b"head0", {"a": b"A", "b": b"B"})
        written, write = [], store._piece

        async def counted(keys: list[str], args: list) -> int:
            written.append(args[1])  # args[0]: the lease holder (empty without leases)
            return await write(keys=keys, args=args)

        store._piece = counted
        await store.snapshot("p", b"head1", {"a": b"A", "c": b"C"})  # b changed into c
        assert written == ["c"], "only the new piece was written"
        loaded = await store.load("p")
        assert (loaded.snapshot, loaded.log) == (b"head1", [])
        assert loaded.pieces == {"a": b"A", "c": b"C"}
        await store.archive("p", 0, StoredRegion(b"R0", {"x": b"X"}), keep=2)
        await store.archive("p", 1, StoredRegion(b"R1", {"y": b"Y"}), keep=2)
        await store.archive("p", 2, StoredRegion(b"R2"), keep=2)  # expires region 0
        assert await store.archived("p", 0) is None
        assert await store.archived("p", 1) == StoredRegion(b"R1", {"y": b"Y"})
        fields = sorted(f.decode() for f in await store._redis.hkeys("crest:job:p:archive"))
        assert fields == ["1", "1:y", "2"]
        keys = sorted(k.decode() for k in await store._redis.keys("crest:*"))
        assert keys == ["crest:job:p:archive", "crest:job:p:pieces", "crest:job:p:snapshot",
                        "crest:jobs"]  # fmt: skip
        assert await store.delete("p")
        assert await store._redis.keys("*") == [], "deleting a job deletes its pieces and archive"
        with pytest.raises(DataLoss):  # nothing recreated for a job the store lost
            await store.archive("p", 3, StoredRegion(b"R3", {"z": b"Z"}), keep=2)
        with pytest.raises(DataLoss):
            await store.snapshot("p", b"head2", {"d": b"D"})
        assert await store._redis.keys("*") == []
        await store.close()

    asyncio.run(main())


async def stored_bytes(store: RedisStore, job_id: str) -> int:
    """The bytes of every value stored for a job."""
    redis, total = store._redis, 0
    for key in await redis.keys(f"crest:job:{job_id}:*"):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            total += await redis.strlen(key)
        elif kind == "list":
            total += sum(len(value) for value in await redis.lrange(key, 0, -1))
        else:
            assert kind == "hash", kind
            total += sum(len(value) for value in await redis.hvals(key))
    return total


def test_stored_bytes_stop_growing_as_a_job_runs_many_regions(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's stored state: its live state (O(N), the per-example arrays in pieces) and at
    most ``archived_regions`` closed regions; a restarted manager resumes it exactly and
    still answers a resume into an archived region."""
    monkeypatch.setattr(manager_module, "PIECE_BYTES", 4096)  # pieces at this small N too
    keep = 4

    async def main() -> None:
        store = RedisStore(redis_server.url)
        first = JobManager(InProcessSelector(), store, snapshot_every=1, archived_regions=keep,
                           strict=True)  # fmt: skip
        config = CONFIG.model_copy(update={"epochs": 40, "max_coreset_uses": 1})
        await first.create_job(config, LABELS, job_id="g")
        seq, served = [0], []
        sizes = {}  # regions opened -> stored bytes, less the region statistics
        for step in range(300):
            served += await drive(first, "g", step, step + 1, seq)
            state = first._jobs["g"].state
            stats = len(json.dumps([s.model_dump(mode="json") for s in state.stats]))
            sizes[state.regions_opened] = await stored_bytes(store, "g") - stats
        opened = max(sizes)
        full = LIVE_CLOSED_REGIONS + keep + 1  # the archive is full from here on
        assert opened >= 4 * full, f"only {opened} regions"
        redis = store._redis
        archived: dict[int, int] = {}  # region id -> its bytes in the archive
        for name, value in (await redis.hgetall("crest:job:g:archive")).items():
            region_id = int(name.decode().split(":")[0])
            archived[region_id] = archived.get(region_id, 0) + len(value)
        assert len(archived) == keep
        assert await redis.hlen("crest:job:g:pieces") > 1
        # Keeping every region would add an archived region's bytes per region (~9 KB here);
        # besides its region statistics (a few hundred bytes a region, the dashboard's
        # history), the job's stored bytes vary with its current region only.
        early = max(sizes[r] for r in range(full, 2 * full))
        late = max(sizes[r] for r in range(2 * full, opened + 1))
        assert late <= early + max(archived.values()), (early, late, archived)
        status = await first.job_status("g")
        exact = pack(first._jobs["g"].state.to_state())
        await first.close()

        second = JobManager(InProcessSelector(), open_store(redis_server.url),
                            archived_regions=keep, strict=True)  # fmt: skip
        await second.start()
        assert await second.job_status("g") == status
        assert pack(second._jobs["g"].state.to_state()) == exact, "the exact live state"
        region_id = opened - 1 - LIVE_CLOSED_REGIONS - 1  # archived
        step, _, indices, _ = next(s for s in served if s[1] == region_id)
        view = await second.get_region("g", 0, step)
        assert view.batches[(step - view.start_step) % len(view.batches)][0].tolist() == indices
        with pytest.raises(FailedPrecondition, match="has expired"):
            await second.get_region("g", 0, 0)
        assert await second.delete_job("g")
        assert await second.store._redis.keys("crest:job:*") == []
        await second.close()

    asyncio.run(main())
