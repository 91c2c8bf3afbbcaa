"""Job leases: which of several coordinator replicas sharing one Redis owns which job.

A job is served by exactly one replica at a time: the holder of its lease, the Redis key
``<prefix>lease:<job_id>`` whose value is ``"<token> <host:port>"`` (the holder's token, unique
to the process, and the address trainers reach it at) and which expires ``ttl_s`` after its
last renewal. A replica takes a lease that is free or has expired (``SET NX PX`` in a script),
renews the leases of the jobs it holds every ``ttl_s / 3`` (compare-and-``PEXPIRE``), and gives
them up when it stops (compare-and-``DEL``). A replica that dies stops renewing: ``ttl_s`` later
another replica takes each of its jobs over when a trainer next calls, rebuilding the job from
its snapshot and journal, which hold every change the dead replica acknowledged.

Fencing: the store is fenced with the token (:meth:`RedisStore.fence`), so that each write of a
job checks the lease atomically with the write. A replica that lost a lease without noticing
(paused past the TTL, cut off from Redis) cannot write the job any more, and no change it
would journal is acknowledged; reads it answers from memory are of the same deterministic
state the new owner replays.
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass

from crest.service.store import RedisStore

log = logging.getLogger(__name__)

DEFAULT_LEASE_S = 5.0
RENEW_BATCH = 1000  # lease keys per renewal script

# KEYS[1] the lease; ARGV[1] the new value, ARGV[2] the TTL (ms), ARGV[3] this holder's prefix
# ("<token> "). Takes a free lease or refreshes ours: {1}; else {0, value, remaining ms}.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held and string.sub(held, 1, #ARGV[3]) ~= ARGV[3] then
    return {0, held, redis.call('PTTL', KEYS[1])}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1}
"""
# KEYS the leases; ARGV[1] this holder's prefix, ARGV[2] the TTL (ms). Extends those still
# ours; returns 1 (kept) or 0 (lost) per key.
_RENEW = """
local kept = {}
for i, key in ipairs(KEYS) do
    local held = redis.call('GET', key)
    if held and string.sub(held, 1, #ARGV[1]) == ARGV[1] then
        redis.call('PEXPIRE', key, ARGV[2])
        kept[i] = 1
    else
        kept[i] = 0
    end
end
return kept
"""
# KEYS the leases; ARGV[1] this holder's prefix. Deletes those still ours.
_RELEASE = """
local released = 0
for _, key in ipairs(KEYS) do
    local held = redis.call('GET', key)
    if held and string.sub(held, 1, #ARGV[1]) == ARGV[1] then
        released = released + redis.call('DEL', key)
    end
end
return released
"""

_REPLICA_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: a replica's token, its advertised address, the lease's time left."""

    token: str
    address: str
    expires_in_s: float


class RedisLeases:
    """This replica's leases, in the Redis of ``store``, which it fences with its token.

    Args:
        store: the Redis store the replicas share (same URL and prefix).
        ttl_s: a lease expires this long after its last renewal: how long a dead replica's
            jobs wait before another takes them over.
        address: ``host:port`` trainers reach this replica at (sent to them in redirects);
            may be set later (:attr:`address`), before the first lease is taken.
        replica_id: a name for logs and redirects (e.g. the pod's name); the token adds a
            random part, so that a restarted replica of the same name never passes for its
            previous life.

    Raises:
        ValueError: a TTL that is not positive, or a replica id that is not 1-64 letters,
            digits, ``.``, ``_`` or ``-``.
    """

    def __init__(
        self,
        store: RedisStore,
        ttl_s: float = DEFAULT_LEASE_S,
        address: str = "",
        replica_id: str | None = None,
    ) -> None:
        if not ttl_s > 0:
            raise ValueError(f"the lease TTL must be > 0, got {ttl_s}")
        replica_id = replica_id or uuid.uuid4().hex[:12]
        if not _REPLICA_ID.fullmatch(replica_id):
            raise ValueError(
                f"a replica id is 1-64 letters, digits, '.', '_' or '-', got {replica_id!r}"
            )
        self.store = store
        self.ttl_s = ttl_s
        self.address = address
        self.replica_id = replica_id
        self.token = f"{replica_id}/{uuid.uuid4().hex[:12]}"
        self._prefix = f"{self.token} "
        redis = store.client
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        store.fence(self.token)

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl_s * 1000))

    async def acquire(self, job_id: str) -> Holder | None:
        """Take (or refresh) the job's lease: None when this replica holds it now, else the
        replica that does."""
        value = f"{self._prefix}{self.address}"
        reply = await self._acquire(
            keys=[self.store.lease_key(job_id)], args=[value, self.ttl_ms, self._prefix]
        )
        if int(reply[0]) == 1:
            return None
        token, _, address = _text(reply[1]).partition(" ")
        return Holder(token, address, max(0, int(reply[2])) / 1000)

    async def renew(self, job_ids: list[str]) -> set[str]:
        """Extend the leases of ``job_ids`` this replica still holds; returns those."""
        kept: set[str] = set()
        for start in range(0, len(job_ids), RENEW_BATCH):
            batch = job_ids[start : start + RENEW_BATCH]
            keys = [self.store.lease_key(job_id) for job_id in batch]
            flags = await self._renew(keys=keys, args=[self._prefix, self.ttl_ms])
            kept.update(job_id for job_id, flag in zip(batch, flags, strict=True) if int(flag))
        return kept

    async def release(self, job_ids: list[str]) -> int:
        """Give up the leases of ``job_ids`` still held (a stopping replica), so that another
        replica takes the jobs over at once instead of after the TTL; returns how many."""
        released = 0
        for start in range(0, len(job_ids), RENEW_BATCH):
            keys = [self.store.lease_key(job_id) for job_id in job_ids[start : start + RENEW_BATCH]]
            released += int(await self._release(keys=keys, args=[self._prefix]))
        return released


def _text(reply: bytes | str) -> str:
    return reply.decode() if isinstance(reply, bytes) else reply
