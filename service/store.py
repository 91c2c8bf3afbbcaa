"""Where job state lives: a snapshot and a journal of events per job.

The job state machine is deterministic, so a job is stored as its last snapshot plus the
events applied since (see :mod:`crest.service.journal`); replaying them rebuilds the exact
state. Every acknowledged change is one atomic append, written before the RPC that caused it
is answered; a snapshot replaces the journal atomically.

Two implementations of :class:`StateStore`: :class:`MemoryStore` (the default; state lives as
long as the process) and :class:`RedisStore`. Redis key layout, for job ``J`` and key prefix
``P`` (default ``crest:``):

====================  ======  =============================================================
key                   type    content
====================  ======  =============================================================
``P jobs``            set     ids of all jobs
``P job:J:snapshot``  string  :func:`crest.service.codec.pack` of ``JobState.to_state()``
``P job:J:log``       list    packed events applied after the snapshot, oldest first
====================  ======  =============================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlparse

from crest.proto.errors import InvalidArgument


@dataclass
class StoredJob:
    snapshot: bytes
    log: list[bytes] = field(default_factory=list)


class StateStore(Protocol):
    async def create(self, job_id: str, snapshot: bytes) -> None:
        """Record a new job with its initial snapshot and an empty journal."""
        ...

    async def append(self, job_id: str, event: bytes) -> int:
        """Append one event to a job's journal; returns the journal's length."""
        ...

    async def snapshot(self, job_id: str, snapshot: bytes) -> None:
        """Replace a job's snapshot and empty its journal, atomically."""
        ...

    async def load(self, job_id: str) -> StoredJob | None: ...

    async def job_ids(self) -> list[str]: ...

    async def ping(self) -> bool:
        """Whether the store answers now (health checks)."""
        ...

    async def close(self) -> None: ...


class MemoryStore:
    """Jobs in this process's memory: fast, and gone with the process."""

    def __init__(self) -> None:
        self._jobs: dict[str, StoredJob] = {}

    async def create(self, job_id: str, snapshot: bytes) -> None:
        self._jobs[job_id] = StoredJob(snapshot)

    async def append(self, job_id: str, event: bytes) -> int:
        log = self._jobs[job_id].log
        log.append(event)
        return len(log)

    async def snapshot(self, job_id: str, snapshot: bytes) -> None:
        self._jobs[job_id] = StoredJob(snapshot)

    async def load(self, job_id: str) -> StoredJob | None:
        job = self._jobs.get(job_id)
        return None if job is None else StoredJob(job.snapshot, list(job.log))

    async def job_ids(self) -> list[str]:
        return list(self._jobs)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class RedisStore:
    """Jobs in Redis (``redis.asyncio``), surviving coordinator restarts.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS).
        prefix: key prefix, so several deployments can share one Redis.
    """

    def __init__(self, url: str, prefix: str = "crest:") -> None:
        import redis.asyncio as redis
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
        from redis.retry import Retry

        self.prefix = prefix
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )

    def _key(self, job_id: str, part: str) -> str:
        return f"{self.prefix}job:{job_id}:{part}"

    async def create(self, job_id: str, snapshot: bytes) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(f"{self.prefix}jobs", job_id)
            pipe.set(self._key(job_id, "snapshot"), snapshot)
            pipe.delete(self._key(job_id, "log"))
            await pipe.execute()

    async def append(self, job_id: str, event: bytes) -> int:
        return int(await self._redis.rpush(self._key(job_id, "log"), event))

    async def snapshot(self, job_id: str, snapshot: bytes) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(job_id, "snapshot"), snapshot)
            pipe.delete(self._key(job_id, "log"))
            await pipe.execute()

    async def load(self, job_id: str) -> StoredJob | None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._key(job_id, "snapshot"))
            pipe.lrange(self._key(job_id, "log"), 0, -1)
            snapshot, log = await pipe.execute()
        return None if snapshot is None else StoredJob(snapshot, list(log))

    async def job_ids(self) -> list[str]:
        members = await self._redis.smembers(f"{self.prefix}jobs")
        return sorted(m.decode() for m in members)

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(url: str) -> StateStore:
    """A store from a URL: ``memory://`` or ``redis://host:port/db`` (``rediss://`` too)."""
    scheme = urlparse(url).scheme
    if scheme == "memory":
        return MemoryStore()
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url)
    raise InvalidArgument(f"unknown store URL {url!r}: use memory:// or redis://host:port/db")
