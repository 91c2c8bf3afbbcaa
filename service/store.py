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
``P finished``        hash    job id -> Unix time the job finished (drives expiry)
====================  ======  =============================================================

:class:`RedisStore` refuses a value over ``max_value_bytes`` with :class:`ResourceExhausted`
before sending it: Redis itself drops the connection on a value past its ``proto-max-bulk-len``
(indistinguishable from an outage, so the write would be retried forever), and a value of a
few hundred MB already outlasts the socket timeout. Writing to a job the store no longer
holds (a Redis restarted without its data) raises :class:`DataLoss` rather than recreating
part of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import urlparse

from crest.proto.errors import DataLoss, InvalidArgument, ResourceExhausted

DEFAULT_MAX_VALUE_BYTES = 64 * 2**20


@dataclass
class StoredJob:
    snapshot: bytes
    log: list[bytes] = field(default_factory=list)


class StateStore(Protocol):
    async def create(self, job_id: str, snapshot: bytes) -> None:
        """Record a new job with its initial snapshot and an empty journal."""
        ...

    async def append(self, job_id: str, event: bytes) -> int:
        """Append one event to a job's journal; returns the journal's length.

        Raises:
            DataLoss: the store does not hold the job.
            ResourceExhausted: the event is over the value limit.
        """
        ...

    async def snapshot(self, job_id: str, snapshot: bytes) -> None:
        """Replace a job's snapshot and empty its journal, atomically.

        Raises:
            DataLoss: the store does not hold the job.
            ResourceExhausted: the snapshot is over the value limit.
        """
        ...

    async def load(self, job_id: str) -> StoredJob | None: ...

    async def job_ids(self) -> list[str]: ...

    async def delete(self, job_id: str) -> bool:
        """Remove everything stored for a job, atomically; False if there was nothing."""
        ...

    async def mark_finished(self, job_id: str, at: float) -> None:
        """Record the Unix time a job finished (kept until the job is deleted)."""
        ...

    async def finished_times(self) -> dict[str, float]:
        """Unix finish time of every job recorded as finished."""
        ...

    async def ping(self) -> bool:
        """Whether the store answers now (health checks)."""
        ...

    async def close(self) -> None: ...


def _check_size(job_id: str, what: str, value: bytes, limit: int | None) -> None:
    if limit is not None and len(value) > limit:
        raise ResourceExhausted(
            f"job {job_id!r}: its {what} is {len(value)} bytes, over the store's "
            f"{limit}-byte value limit (CREST_STORE_MAX_VALUE_MB): lower num_examples, "
            "subset_size or num_coresets"
        )


def _text(reply: bytes | str) -> str:
    """A Redis key or member as text: replies are bytes (the client does not decode them, since
    snapshots and logs are binary), though redis-py's types also allow str."""
    return reply.decode() if isinstance(reply, bytes) else reply


def _lost(job_id: str) -> DataLoss:
    return DataLoss(
        f"the state store no longer holds job {job_id!r} (restarted without its data?): "
        "create the job again"
    )


class MemoryStore:
    """Jobs in this process's memory: fast, and gone with the process.

    Args:
        max_value_bytes: the largest snapshot or event accepted (default: no limit, as
            nothing is sent anywhere).
    """

    def __init__(self, max_value_bytes: int | None = None) -> None:
        self.max_value_bytes = max_value_bytes
        self._jobs: dict[str, StoredJob] = {}
        self._finished: dict[str, float] = {}

    async def create(self, job_id: str, snapshot: bytes) -> None:
        _check_size(job_id, "snapshot", snapshot, self.max_value_bytes)
        self._jobs[job_id] = StoredJob(snapshot)

    async def append(self, job_id: str, event: bytes) -> int:
        _check_size(job_id, "journal event", event, self.max_value_bytes)
        if job_id not in self._jobs:
            raise _lost(job_id)
        log = self._jobs[job_id].log
        log.append(event)
        return len(log)

    async def snapshot(self, job_id: str, snapshot: bytes) -> None:
        _check_size(job_id, "snapshot", snapshot, self.max_value_bytes)
        if job_id not in self._jobs:
            raise _lost(job_id)
        self._jobs[job_id] = StoredJob(snapshot)

    async def load(self, job_id: str) -> StoredJob | None:
        job = self._jobs.get(job_id)
        return None if job is None else StoredJob(job.snapshot, list(job.log))

    async def job_ids(self) -> list[str]:
        return list(self._jobs)

    async def delete(self, job_id: str) -> bool:
        self._finished.pop(job_id, None)
        return self._jobs.pop(job_id, None) is not None

    async def mark_finished(self, job_id: str, at: float) -> None:
        self._finished[job_id] = at

    async def finished_times(self) -> dict[str, float]:
        return dict(self._finished)

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:
        pass


class RedisStore:
    """Jobs in Redis (``redis.asyncio``), surviving coordinator restarts.

    Args:
        url: ``redis://host:port/db`` (``rediss://`` for TLS).
        prefix: key prefix, so several deployments can share one Redis.
        max_value_bytes: the largest snapshot or event sent (keep it well under the
            server's ``proto-max-bulk-len``, 512 MiB by default).
    """

    # Appends only to a job whose snapshot exists: a bare RPUSH would recreate a journal
    # without its snapshot after Redis lost the job.
    _APPEND = """
    if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
    return redis.call('RPUSH', KEYS[2], ARGV[1])
    """

    def __init__(
        self, url: str, prefix: str = "crest:", max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    ) -> None:
        import redis.asyncio as redis
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError
        from redis.retry import Retry

        self.prefix = prefix
        self.max_value_bytes = max_value_bytes
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=5,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._append = self._redis.register_script(self._APPEND)

    def _key(self, job_id: str, part: str) -> str:
        return f"{self.prefix}job:{job_id}:{part}"

    async def create(self, job_id: str, snapshot: bytes) -> None:
        _check_size(job_id, "snapshot", snapshot, self.max_value_bytes)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.sadd(f"{self.prefix}jobs", job_id)
            pipe.set(self._key(job_id, "snapshot"), snapshot)
            pipe.delete(self._key(job_id, "log"))
            pipe.hdel(f"{self.prefix}finished", job_id)
            await pipe.execute()

    async def append(self, job_id: str, event: bytes) -> int:
        _check_size(job_id, "journal event", event, self.max_value_bytes)
        keys = [self._key(job_id, "snapshot"), self._key(job_id, "log")]
        length = int(await self._append(keys=keys, args=[event]))
        if length < 0:
            raise _lost(job_id)
        return length

    async def snapshot(self, job_id: str, snapshot: bytes) -> None:
        _check_size(job_id, "snapshot", snapshot, self.max_value_bytes)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(job_id, "snapshot"), snapshot, xx=True)  # only if it exists
            pipe.delete(self._key(job_id, "log"))
            replaced, _ = await pipe.execute()
        if not replaced:
            raise _lost(job_id)

    async def load(self, job_id: str) -> StoredJob | None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._key(job_id, "snapshot"))
            pipe.lrange(self._key(job_id, "log"), 0, -1)
            snapshot, log = await pipe.execute()
        return None if snapshot is None else StoredJob(snapshot, list(log))

    async def job_ids(self) -> list[str]:
        members = await self._redis.smembers(f"{self.prefix}jobs")
        return sorted(_text(m) for m in members)

    async def delete(self, job_id: str) -> bool:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.srem(f"{self.prefix}jobs", job_id)
            pipe.delete(self._key(job_id, "snapshot"), self._key(job_id, "log"))
            pipe.hdel(f"{self.prefix}finished", job_id)
            member, keys, _ = await pipe.execute()
        return bool(member or keys)

    async def mark_finished(self, job_id: str, at: float) -> None:
        await self._redis.hset(f"{self.prefix}finished", job_id, repr(at))

    async def finished_times(self) -> dict[str, float]:
        times = await self._redis.hgetall(f"{self.prefix}finished")
        return {_text(job): float(at) for job, at in times.items()}

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except Exception:
            return False

    async def close(self) -> None:
        await self._redis.aclose()


def open_store(url: str, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES) -> StateStore:
    """A store from a URL: ``memory://`` or ``redis://host:port/db`` (``rediss://`` too);
    ``max_value_bytes`` applies to Redis."""
    scheme = urlparse(url).scheme
    if scheme == "memory":
        return MemoryStore()
    if scheme in ("redis", "rediss", "unix"):
        return RedisStore(url, max_value_bytes=max_value_bytes)
    raise InvalidArgument(f"unknown store URL {url!r}: use memory:// or redis://host:port/db")
