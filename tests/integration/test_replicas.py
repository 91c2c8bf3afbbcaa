"""Coordinator replicas sharing one Redis: job leases, fencing, redirects and takeovers.

Two gRPC coordinators in this process (each its own event loop, store client and leases) on a
private redis-server; short lease TTLs keep the waits under a few seconds. The SIGKILL of a
whole ``crest serve`` replica mid-job is ``crest bench faults``' ``replica`` scenario
(tests/reliability/test_faults.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from crest.bench.faults import who_serves
from crest.client.remote import RemoteCoordinator
from crest.proto.errors import OWNER_METADATA, NotFound, NotOwner, Unavailable
from crest.service.leases import RedisLeases
from crest.service.manager import JobManager
from crest.service.store import RedisStore, StoredRegion
from crest.worker.selector import InProcessSelector
from tests.integration.conftest import (
    LoopbackCoordinator,
    RedisServer,
    free_port,
    start_loopback,
    stop_loopback,
)
from tests.training import blobs, job_config

pytestmark = pytest.mark.integration

TTL_S = 1.0


def test_a_replica_that_lost_its_lease_writes_nothing(redis_server: RedisServer) -> None:
    """Fencing in the store: every write checks the lease atomically with itself."""

    async def main() -> None:
        a_store, b_store = RedisStore(redis_server.url), RedisStore(redis_server.url)
        a = RedisLeases(a_store, ttl_s=0.3, address="a:1", replica_id="a")
        b = RedisLeases(b_store, ttl_s=30, address="b:1", replica_id="b")
        try:
            assert await a.acquire("j") is None
            await a_store.create("j", b"head", {"p": b"P"})
            assert await a_store.append("j", b"e1") == 1
            holder = await b.acquire("j")
            assert holder is not None and (holder.token, holder.address) == (a.token, "a:1")
            assert 0 < holder.expires_in_s <= 0.3
            with pytest.raises(NotOwner):  # b never held it
                await b_store.append("j", b"not b's")
            await asyncio.sleep(0.5)  # a is paused past its TTL: the lease expires
            assert await b.acquire("j") is None
            writes = {
                "append": a_store.append("j", b"e2"),
                "snapshot": a_store.snapshot("j", b"head2", {"q": b"Q"}),
                "archive": a_store.archive("j", 0, StoredRegion(b"R", {"x": b"X"}), keep=2),
                "create": a_store.create("j", b"again"),
                "delete": a_store.delete("j"),
            }
            for write in writes.values():
                with pytest.raises(NotOwner, match="no longer holds the lease"):
                    await write
            assert await a.renew(["j"]) == set(), "a's renewal finds the lease gone"
            assert await b.renew(["j"]) == {"j"}
            assert await b_store.append("j", b"e2") == 2
            loaded = await b_store.load("j")
            assert loaded is not None
            assert (loaded.snapshot, loaded.log, loaded.pieces) == (b"head", [b"e1", b"e2"],
                                                                    {"p": b"P"})  # fmt: skip
            assert await b_store.archived("j", 0) is None
            assert await a.release(["j"]) == 0, "a cannot release b's lease"
            assert await b.release(["j"]) == 1
            assert await a.acquire("j") is None, "a released lease is free at once"
        finally:
            await a_store.close()
            await b_store.close()

    asyncio.run(main())


def test_a_replica_id_with_a_space_is_refused(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    with pytest.raises(ValueError, match="replica id"):
        RedisLeases(store, replica_id="a b")
    with pytest.raises(ValueError, match="TTL"):
        RedisLeases(store, ttl_s=0)


def start_replica(url: str, prefix: str, name: str) -> tuple[LoopbackCoordinator, object, object]:
    store = RedisStore(url, prefix=prefix)
    leases = RedisLeases(store, ttl_s=TTL_S, replica_id=name)
    handle, server, health_task = start_loopback(store, leases=leases)
    leases.address = handle.address  # bound to a free port: nobody called it yet
    return handle, server, health_task


@pytest.fixture
def replicas(redis_server: RedisServer) -> Iterator[tuple[LoopbackCoordinator, ...]]:
    started = [start_replica(redis_server.url, "replicas:", name) for name in ("a", "b")]
    try:
        yield tuple(handle for handle, _, _ in started)
    finally:
        for replica in started:
            stop_loopback(*replica)


REDIRECTED = "UNAVAILABLE"
SERVED = ("OK", "")


def test_calls_reach_the_owner_and_a_paused_owner_is_fenced_out(
    replicas, redis_server: RedisServer
) -> None:
    a, b = replicas
    _, y = blobs()
    with RemoteCoordinator([a.address, b.address], retry_s=60) as both:
        both.create_job(job_config(), y.numpy(), job_id="j")  # the first address: a creates it
        assert a.manager.job_ids() == ["j"] and b.manager.job_ids() == []
        time.sleep(2 * TTL_S)  # a renews its lease meanwhile
        assert who_serves(b.address, "j") == (REDIRECTED, a.address), OWNER_METADATA
        assert who_serves(a.address, "j") == SERVED
        with RemoteCoordinator(b.address, retry_s=60) as via_b:  # follows the redirect
            assert via_b.job_status("j") == both.job_status("j")
            assert via_b._owners == {"j": a.address}

        # a stops renewing (a pause, a partition): its lease expires, and b takes the job over
        # at the next call, from the store.
        a.local.submit(_cancel_renewal(a)).result()
        time.sleep(TTL_S * 1.5)
        assert who_serves(b.address, "j") == SERVED
        assert b.manager.job_ids() == ["j"]
        # a, not knowing yet, answers reads from memory: the same deterministic state
        assert who_serves(a.address, "j") == SERVED

        # a still holds the job in memory but may not write it: opening region 0 (a journal
        # write) fails, nothing reaches the store, and a drops the job.
        with pytest.raises(NotOwner, match="no longer holds the lease"):
            a.local.submit(a.manager.get_region("j", 0, 0, timeout=5)).result()
        assert a.manager.job_ids() == []
        assert journal_length(redis_server, "j") == 0
        # The client, routed to a, follows a's redirect to b, which opens the region.
        both._owners["j"] = a.address
        view = both.get_region("j", 0, 0)
        assert view.region_id == 0 and both._owners["j"] == b.address
        assert journal_length(redis_server, "j") == 1


def journal_length(redis_server: RedisServer, job_id: str) -> int:
    async def length() -> int:
        store = RedisStore(redis_server.url, prefix="replicas:")
        try:
            stored = await store.load(job_id)
            assert stored is not None
            return len(stored.log)
        finally:
            await store.close()

    return asyncio.run(length())


async def _cancel_renewal(replica: LoopbackCoordinator) -> None:
    renewal = replica.manager._renewal
    assert renewal is not None
    renewal.cancel()


def test_an_unknown_job_is_not_found_on_every_replica(replicas) -> None:
    for replica in replicas:
        with RemoteCoordinator(replica.address, retry_s=10) as remote, pytest.raises(NotFound):
            remote.job_status("nobody")


def test_several_addresses_skip_an_unreachable_one(replicas) -> None:
    a, _ = replicas
    dead = f"127.0.0.1:{free_port()}"
    with RemoteCoordinator(f"{dead}, {a.address}", connect_timeout_s=2, retry_s=30) as remote:
        assert remote.addresses == [dead, a.address]
        _, y = blobs()
        assert remote.create_job(job_config(), y.numpy(), job_id="k") == "k"
        assert remote.address == a.address
    with pytest.raises(ValueError, match="no coordinator address"):
        RemoteCoordinator(" , ")


def test_a_finished_job_whose_owner_died_expires_on_another_replica(
    redis_server: RedisServer,
) -> None:
    async def main() -> None:
        dead_store, live_store = (RedisStore(redis_server.url) for _ in range(2))
        dead = RedisLeases(dead_store, ttl_s=0.2, address="dead:1", replica_id="dead")
        live = RedisLeases(live_store, ttl_s=30, address="live:1", replica_id="live")
        for job_id, leases, store in [("orphan", dead, dead_store), ("owned", live, live_store)]:
            assert await leases.acquire(job_id) is None
            await store.create(job_id, b"head")
            await store.mark_finished(job_id, time.time() - 60)
        await asyncio.sleep(0.4)  # the dead replica's lease expires
        replica_store = RedisStore(redis_server.url)
        manager = JobManager(
            InProcessSelector(),
            replica_store,
            finished_ttl_s=10,
            leases=RedisLeases(replica_store, ttl_s=30, address="replica:1"),
        )
        try:
            assert await manager.expire_finished() == ["orphan"]
            assert await live_store.job_ids() == ["owned"], "a live owner's job is its own"
            assert manager.job_ids() == []
        finally:
            await manager.close()
            await dead_store.close()
            await live_store.close()

    asyncio.run(main())


def test_no_reachable_replica_fails_naming_them_all() -> None:
    dead = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    with (
        RemoteCoordinator(dead, connect_timeout_s=0.5) as remote,
        pytest.raises(Unavailable, match="none of the coordinator replicas") as failed,
    ):
        remote.job_status("j")
    assert all(address in str(failed.value) for address in dead)
