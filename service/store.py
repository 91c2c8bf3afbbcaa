"""Where job state lives: a snapshot and a journal of events per job.

The job state machine is deterministic, so a job is stored as its last snapshot plus the
events applied since (see :mod:`crest.service.journal`); replaying them rebuilds the exact
state. Every acknowledged change is one atomic append, written before the RPC that caused it
is answered; a snapshot replaces the journal atomically. A snapshot comes as a *head* and
*pieces* (:func:`crest.service.codec.split`: the large arrays, such as the per-example state,
in bounded row ranges named by their content): the store writes only the pieces it does not
hold yet, and drops the ones the new head no longer names.

Two implementations of :class:`StateStore`: :class:`MemoryStore` (the default; state lives as
long as the process) and :class:`RedisStore`. Redis key layout, for job ``J`` and key prefix
``P`` (default ``crest:``):

====================  ======  =============================================================
key                   type    content
====================  ======  =============================================================
``P jobs``            set     ids of all jobs
``P job:J:snapshot``  string  the snapshot's head: the packed state, large arrays split out
``P job:J:pieces``    hash    piece name -> packed piece (what the head names, maybe more)
``P job:J:log``       list    packed events applied after the snapshot, oldest first
``P job:J:archive``   hash    closed regions that left the live state: field ``I`` the head
                              of region ``I``, ``I:name`` its pieces
``P finished``        hash    job id -> Unix time the job finished (drives expiry)
``P lease:J``         string  with replicas: ``"<token> <host:port>"`` of the replica that
                              owns the job, expiring unless renewed (:mod:`~crest.service.leases`)
====================  ======  =============================================================

:class:`RedisStore` refuses a value over ``max_value_bytes`` with :class:`ResourceExhausted`
before sending it: Redis itself drops the connection on a value past its ``proto-max-bulk-len``
(indistinguishable from an outage, so the write would be retried forever), and a value of a
few hundred MB already outlasts the socket timeout. No command carries more than one value:
pieces and events are written and read one at a time, and the socket timeout grows with
``max_value_bytes``. Closed regions that left the live state live in the archive (split like
snapshots), at most ``keep`` per job (the oldest expire), so that neither a snapshot nor the
stored bytes of a job grow with the regions it ran. Writing to a job the store no longer
holds (a Redis restarted without its data) raises :class:`DataLoss` rather than recreating
part of it. Every write of a job's state (head, journal, archive, deletion) is one Lua
script, so that with coordinator replicas (:meth:`RedisStore.fence`) each write checks,
atomically with it, that this replica still holds the job's lease: a replica that lost it
writes nothing (:class:`NotOwner`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

from crest.proto.errors import DataLoss, InvalidArgument, NotOwner, ResourceExhausted
from crest.service.codec import Pieces

DEFAULT_MAX_VALUE_BYTES = 64 * 2**20
_NO_PIECES: Mapping[str, bytes] = {}


@dataclass
class StoredJob:
    snapshot: bytes  # the head
    log: list[bytes] = field(default_factory=list)
    pieces: dict[str, bytes] = field(default_factory=dict)  # at least those the head names


@dataclass
class StoredRegion:
    """An archived region, split like a snapshot (:func:`crest.service.codec.split`)."""

    head: bytes
    pieces: Mapping[str, bytes] = field(default_factory=dict)


class StateStore(Protocol):
    async def create(
        self, job_id: str, snapshot: bytes, pieces: Mapping[str, bytes] = _NO_PIECES
    ) -> None:
        """Record a job with its initial snapshot (head and pieces), an empty journal and an
        empty archive (replacing whatever was stored for ``job_id``)."""
        ...

    async def append(self, job_id: str, event: bytes) -> int:
        """Append one event to a job's journal; returns the journal's length.

        Raises:
            DataLoss: the store does not hold the job.
            ResourceExhausted: the event is over the value limit.
        """
        ...

    async def snapshot(
        self, job_id: str, snapshot: bytes, pieces: Mapping[str, bytes] = _NO_PIECES
    ) -> None:
        """Replace a job's snapshot (head and pieces) and empty its journal, atomically.

        Raises:
            DataLoss: the store does not hold the job.
            ResourceExhausted: the head or a piece is over the value limit.
        """
        ...

    async def load(self, job_id: str) -> StoredJob | None: ...

    async def archive(self, job_id: str, region_id: int, region: StoredRegion, keep: int) -> None:
        """Keep closed region ``region_id`` apart from the live state, and expire the
        archived regions ``keep`` or more ids older, so that a job holds at most ``keep``.
        Writing a region again replaces it (a retried write stores the same bytes).

        Raises:
            DataLoss: the store does not hold the job.
            ResourceExhausted: the head or a piece is over the value limit.
        """
        ...

    async def archived(self, job_id: str, region_id: int) -> StoredRegion | None:
        """A region :meth:`archive` kept; None if it never was or has expired."""
        ...

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


def _check_sizes(
    job_id: str, snapshot: bytes, pieces: Mapping[str, bytes], limit: int | None
) -> None:
    _check_size(job_id, "snapshot head", snapshot, limit)
    if limit is None:
        return
    for name in pieces:  # split()'s pieces tell their size without being packed
        size = pieces.size(name) if isinstance(pieces, Pieces) else len(pieces[name])
        if size > limit:
            _check_size(job_id, "snapshot piece", pieces[name], limit)


def _text(reply: bytes | str) -> str:
    """A Redis key or member as text: replies are bytes (the client does not decode them, since
    snapshots and logs are binary), though redis-py's types also allow str."""
    return reply.decode() if isinstance(reply, bytes) else reply


def _blob(job_id: str, reply: bytes | str | None) -> bytes:
    """A stored value read back (binary: the client does not decode replies); None when it
    vanished while it was read, as when Redis lost the job meanwhile."""
    if not isinstance(reply, bytes):
        raise _lost(job_id)
    return reply


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
        self._archives: dict[str, dict[int, StoredRegion]] = {}

    async def create(
        self, job_id: str, snapshot: bytes, pieces: Mapping[str, bytes] = _NO_PIECES
    ) -> None:
        _check_sizes(job_id, snapshot, pieces, self.max_value_bytes)
        kept = await asyncio.to_thread(self._kept, job_id, pieces)
        self._jobs[job_id] = StoredJob(snapshot, pieces=kept)
        self._archives[job_id] = {}

    async def append(self, job_id: str, event: bytes) -> int:
        _check_size(job_id, "journal event", event, self.max_value_bytes)
        if job_id not in self._jobs:
            raise _lost(job_id)
        log = self._jobs[job_id].log
        log.append(event)
        return len(log)

    async def snapshot(
        self, job_id: str, snapshot: bytes, pieces: Mapping[str, bytes] = _NO_PIECES
    ) -> None:
        _check_sizes(job_id, snapshot, pieces, self.max_value_bytes)
        if job_id not in self._jobs:
            raise _lost(job_id)
        kept = await asyncio.to_thread(self._kept, job_id, pieces)
        self._jobs[job_id] = StoredJob(snapshot, pieces=kept)

    def _kept(self, job_id: str, pieces: Mapping[str, bytes]) -> dict[str, bytes]:
        """``pieces`` as stored: those the job holds already are neither packed nor copied
        (the others are packed here: on a worker thread, as a large job's are many MB)."""
        held = self._jobs[job_id].pieces if job_id in self._jobs else {}
        return {name: held[name] if name in held else pieces[name] for name in pieces}

    async def load(self, job_id: str) -> StoredJob | None:
        job = self._jobs.get(job_id)
        return None if job is None else StoredJob(job.snapshot, list(job.log), dict(job.pieces))

    async def archive(self, job_id: str, region_id: int, region: StoredRegion, keep: int) -> None:
        _check_sizes(job_id, region.head, region.pieces, self.max_value_bytes)
        if job_id not in self._jobs:
            raise _lost(job_id)
        kept = self._archives.setdefault(job_id, {})
        kept[region_id] = StoredRegion(region.head, dict(region.pieces))
        for old in [i for i in kept if i <= region_id - keep]:
            del kept[old]

    async def archived(self, job_id: str, region_id: int) -> StoredRegion | None:
        return self._archives.get(job_id, {}).get(region_id)

    async def job_ids(self) -> list[str]:
        return list(self._jobs)

    async def delete(self, job_id: str) -> bool:
        self._finished.pop(job_id, None)
        self._archives.pop(job_id, None)
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
        max_value_bytes: the largest value sent (keep it well under the server's
            ``proto-max-bulk-len``, 512 MiB by default); the socket timeout allows 5 s plus
            one second per ``TIMEOUT_BYTES_PER_S`` of it.
    """

    TIMEOUT_BYTES_PER_S = 16 * 2**20  # a slow link, or a busy server: still no timeout

    # Every write script starts with the lease check (the fence): KEYS[1] is the job's lease,
    # ARGV[1] the holder prefix of this replica ("<token> ") or '' without leases. A replica that
    # lost the lease (paused past its TTL, cut off from Redis) writes nothing: -2.
    _FENCE = """
    if ARGV[1] ~= '' then
        local held = redis.call('GET', KEYS[1])
        if not held or string.sub(held, 1, #ARGV[1]) ~= ARGV[1] then return -2 end
    end
    """
    # Appends (ARGV[2]) only to a job whose snapshot (KEYS[2]) exists: a bare RPUSH would
    # recreate a journal (KEYS[3]) without its snapshot after Redis lost the job.
    _APPEND = (
        _FENCE
        + """
    if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
    return redis.call('RPUSH', KEYS[3], ARGV[2])
    """
    )
    # Writes a snapshot or archive piece (ARGV[2]: field, ARGV[3]: blob) into hash KEYS[3] of a
    # job whose snapshot (KEYS[2]) exists.
    _PIECE = (
        _FENCE
        + """
    if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
    return redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
    """
    )
    # Completes an archived region (ARGV[2]: id, ARGV[3]: head; its pieces are in) in hash
    # KEYS[3] of a job whose snapshot (KEYS[2]) exists, and expires the regions up to id ARGV[4],
    # pieces and all (the hash holds about ``keep`` regions' fields to scan).
    _ARCHIVE = (
        _FENCE
        + """
    if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
    redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
    local last = tonumber(ARGV[4])
    for _, field in ipairs(redis.call('HKEYS', KEYS[3])) do
        if tonumber(string.match(field, '^%d+')) <= last then redis.call('HDEL', KEYS[3], field) end
    end
    return 0
    """
    )
    # Replaces the head (KEYS[2], ARGV[2]) of a job whose head exists, empties its journal
    # (KEYS[3]) and drops the pieces (hash KEYS[4]) the new head no longer names (ARGV[3:]).
    _SNAPSHOT = (
        _FENCE
        + """
    if redis.call('EXISTS', KEYS[2]) == 0 then return -1 end
    redis.call('SET', KEYS[2], ARGV[2])
    redis.call('DEL', KEYS[3])
    for i = 3, #ARGV do redis.call('HDEL', KEYS[4], ARGV[i]) end
    return 0
    """
    )
    # Records job ARGV[2] (set KEYS[2]) with head ARGV[3] (KEYS[3]), an empty journal and
    # archive (KEYS[4], KEYS[5]), without the pieces ARGV[4:] (hash KEYS[6]) and not finished
    # (hash KEYS[7]).
    _CREATE = (
        _FENCE
        + """
    redis.call('SADD', KEYS[2], ARGV[2])
    redis.call('SET', KEYS[3], ARGV[3])
    redis.call('DEL', KEYS[4], KEYS[5])
    for i = 4, #ARGV do redis.call('HDEL', KEYS[6], ARGV[i]) end
    redis.call('HDEL', KEYS[7], ARGV[2])
    return 0
    """
    )
    # Removes job ARGV[2] (set KEYS[2]; KEYS[3..6]; hash KEYS[7]) and, with leases, its lease:
    # the number of things removed.
    _DELETE = (
        _FENCE
        + """
    local removed = redis.call('SREM', KEYS[2], ARGV[2])
    removed = removed + redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
    redis.call('HDEL', KEYS[7], ARGV[2])
    if ARGV[1] ~= '' then redis.call('DEL', KEYS[1]) end
    return removed
    """
    )

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
            socket_timeout=5 + max_value_bytes / self.TIMEOUT_BYTES_PER_S,
            socket_connect_timeout=5,
            retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._append = self._redis.register_script(self._APPEND)
        self._archive = self._redis.register_script(self._ARCHIVE)
        self._piece = self._redis.register_script(self._PIECE)
        self._snapshot = self._redis.register_script(self._SNAPSHOT)
        self._create = self._redis.register_script(self._CREATE)
        self._delete = self._redis.register_script(self._DELETE)
        self._holder = ""  # "<token> " once fenced: every write checks the job's lease

    @property
    def client(self) -> Any:
        """The ``redis.asyncio.Redis`` client (the job leases share it)."""
        return self._redis

    def lease_key(self, job_id: str) -> str:
        """The key of the job's lease (:mod:`crest.service.leases`)."""
        return f"{self.prefix}lease:{job_id}"

    def fence(self, token: str) -> None:
        """From now on write a job only while its lease is held by ``token``: a write of a
        job whose lease another holder has, or nobody, raises :class:`NotOwner` and changes
        nothing (see :class:`crest.service.leases.RedisLeases`)."""
        if not token or " " in token:
            raise ValueError(f"a lease token is non-empty and has no spaces, got {token!r}")
        self._holder = f"{token} "

    def _key(self, job_id: str, part: str) -> str:
        return f"{self.prefix}job:{job_id}:{part}"

    def _keys(self, job_id: str, *parts: str) -> list[str]:
        """The job's lease key (checked by every write script), then the keys of ``parts``."""
        return [self.lease_key(job_id), *(self._key(job_id, part) for part in parts)]

    def _written(self, job_id: str, reply: Any) -> int:
        """A write script's reply: -1 the job is gone, -2 its lease is not this replica's."""
        result: int = int(reply)
        if result == -2:
            raise NotOwner(
                f"this coordinator replica no longer holds the lease of job {job_id!r}: "
                "another replica owns it now"
            )
        if result < 0:
            raise _lost(job_id)
        return result

    async def create(
        self, job_id: str, snapshot: bytes, pieces: Mapping[str, bytes] = _NO_PIECES
    ) -> None:
        _check_sizes(job_id, snapshot, pieces, self.max_value_bytes)
        stale = await self._write_pieces(job_id, pieces, guarded=False)
        keys = [*self._keys(job_id), f"{self.prefix}jobs",
                *(self._key(job_id, p) for p in ("snapshot", "log", "archive", "pieces")),
                f"{self.prefix}finished"]  # fmt: skip
        self._written(
            job_id, await self._create(keys=keys, args=[self._holder, job_id, snapshot, *stale])
        )

    async def _write_pieces(
        self, job_id: str, pieces: Mapping[str, bytes], guarded: bool
    ) -> list[str]:
        """Write the pieces the job does not hold yet, one command each (guarded: only while
        its head exists); returns the names held that ``pieces`` does not name."""
        key = self._key(job_id, "pieces")
        held = {_text(name) for name in await self._redis.hkeys(key)}
        for name in pieces:
            if name in held:  # named by its content: never packed (see codec.Pieces)
                continue
            if not guarded:
                await self._redis.hset(key, name, pieces[name])
            else:
                keys = [*self._keys(job_id, "snapshot"), key]
                reply = await self._piece(keys=keys, args=[self._holder, name, pieces[name]])
                self._written(job_id, reply)
        return sorted(held.difference(pieces))

    async def append(self, job_id: str, event: bytes) -> int:
        _check_size(job_id, "journal event", event, self.max_value_bytes)
        keys = self._keys(job_id, "snapshot", "log")
        return self._written(job_id, await self._append(keys=keys, args=[self._holder, event]))

    async def snapshot(
        self, job_id: str, snapshot: bytes, pieces: Mapping[str, bytes] = _NO_PIECES
    ) -> None:
        _check_sizes(job_id, snapshot, pieces, self.max_value_bytes)
        stale = await self._write_pieces(job_id, pieces, guarded=True)
        keys = self._keys(job_id, "snapshot", "log", "pieces")
        reply = await self._snapshot(keys=keys, args=[self._holder, snapshot, *stale])
        self._written(job_id, reply)

    async def load(self, job_id: str) -> StoredJob | None:
        """The job's head and journal (read together), then its pieces and events one by
        one: no reply carries more than one value. Only the coordinator that loads a job
        writes it, so nothing changes in between."""
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(self._key(job_id, "snapshot"))
            pipe.llen(self._key(job_id, "log"))
            pipe.hkeys(self._key(job_id, "pieces"))
            snapshot, length, names = await pipe.execute()
        if snapshot is None:
            return None
        log_key, pieces_key = self._key(job_id, "log"), self._key(job_id, "pieces")
        log = [_blob(job_id, await self._redis.lindex(log_key, i)) for i in range(length)]
        pieces = {}
        for name in names:
            pieces[_text(name)] = _blob(job_id, await self._redis.hget(pieces_key, name))
        return StoredJob(snapshot, log, pieces)

    async def archive(self, job_id: str, region_id: int, region: StoredRegion, keep: int) -> None:
        """The pieces one command each, then the head, which makes the region readable."""
        _check_sizes(job_id, region.head, region.pieces, self.max_value_bytes)
        keys = self._keys(job_id, "snapshot", "archive")
        for name in region.pieces:
            stored_name = f"{region_id}:{name}"
            reply = await self._piece(
                keys=keys, args=[self._holder, stored_name, region.pieces[name]]
            )
            self._written(job_id, reply)
        reply = await self._archive(
            keys=keys, args=[self._holder, region_id, region.head, region_id - keep]
        )
        self._written(job_id, reply)

    async def archived(self, job_id: str, region_id: int) -> StoredRegion | None:
        key = self._key(job_id, "archive")
        head = await self._redis.hget(key, str(region_id))
        if head is None:
            return None
        prefix = f"{region_id}:"
        pieces = {}
        for name in map(_text, await self._redis.hkeys(key)):
            if name.startswith(prefix):
                pieces[name.removeprefix(prefix)] = _blob(job_id, await self._redis.hget(key, name))
        return StoredRegion(_blob(job_id, head), pieces)

    async def job_ids(self) -> list[str]:
        members = await self._redis.smembers(f"{self.prefix}jobs")
        return sorted(_text(m) for m in members)

    async def delete(self, job_id: str) -> bool:
        keys = [*self._keys(job_id), f"{self.prefix}jobs",
                *(self._key(job_id, p) for p in ("snapshot", "log", "pieces", "archive")),
                f"{self.prefix}finished"]  # fmt: skip
        removed = await self._delete(keys=keys, args=[self._holder, job_id])
        return self._written(job_id, removed) > 0

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
