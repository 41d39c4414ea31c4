"""Capacity (SPEC §7): a global cap and a per-repository cap on runs that execute at once,
shared by every worker process through Redis.

Per scope (``global``, ``repo-<id>``) three sorted sets:

* ``waiting`` — runs in line, scored by enqueue time (FIFO; a run that comes back keeps its
  place because its score is its creation time);
* ``alive`` — when each waiting run stops counting as waiting unless it asks again (a waiter
  whose job vanished drops out of line by itself);
* ``held`` — runs holding a slot, scored by lease expiry (a crashed holder's slot frees itself
  when its lease lapses; the live holder renews it).

A run first queues for its repository; only when its place there is within the repository's
free slots does it queue globally, so a busy repository never blocks the global line. Each
decision is one Lua script (atomic across workers) using Redis' clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from arq.connections import ArqRedis

from bot.jobids import run_job_id
from bot.queuewake import wake

_PURGE = """
local function purge(now, wait, alive, held)
  redis.call('ZREMRANGEBYSCORE', held, '-inf', now)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', alive, '-inf', now)) do
    redis.call('ZREM', wait, id)
  end
  redis.call('ZREMRANGEBYSCORE', alive, '-inf', now)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: global waiting, alive, held; repo waiting, alive, held.
# ARGV: run, enqueue score, lease ms, waiter ttl ms, global cap, repo cap.
_ACQUIRE = (
    _PURGE
    + """
purge(now, KEYS[1], KEYS[2], KEYS[3])
purge(now, KEYS[4], KEYS[5], KEYS[6])
local run = ARGV[1]
local expiry = now + tonumber(ARGV[3])
local in_g = redis.call('ZSCORE', KEYS[3], run)
local in_r = redis.call('ZSCORE', KEYS[6], run)
if in_g and in_r then
  redis.call('ZADD', KEYS[3], expiry, run)
  redis.call('ZADD', KEYS[6], expiry, run)
  return {1, 0, 0, 'held'}
end
redis.call('ZREM', KEYS[3], run)
redis.call('ZREM', KEYS[6], run)
local alive = now + tonumber(ARGV[4])
redis.call('ZADD', KEYS[4], 'NX', ARGV[2], run)
redis.call('ZADD', KEYS[5], alive, run)
local ahead = redis.call('ZRANK', KEYS[4], run)
if ahead + redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[6]) then
  redis.call('ZREM', KEYS[1], run)
  redis.call('ZREM', KEYS[2], run)
  return {0, ahead + 1, redis.call('ZCARD', KEYS[4]), 'repo'}
end
redis.call('ZADD', KEYS[1], 'NX', ARGV[2], run)
redis.call('ZADD', KEYS[2], alive, run)
ahead = redis.call('ZRANK', KEYS[1], run)
if ahead + redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[5]) then
  return {0, ahead + 1, redis.call('ZCARD', KEYS[1]), 'global'}
end
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[4], KEYS[5]}) do redis.call('ZREM', key, run) end
redis.call('ZADD', KEYS[3], expiry, run)
redis.call('ZADD', KEYS[6], expiry, run)
return {1, 0, 0, 'granted'}
"""
)

# KEYS: global held, repo held. ARGV: run, lease ms. Returns 1 if the slot was still held.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local kept = redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZSCORE', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
if kept then return 1 end
return 0
"""

# KEYS: as for acquire. ARGV: run, how many of each line to wake.
_RELEASE = (
    _PURGE
    + """
for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
purge(now, KEYS[1], KEYS[2], KEYS[3])
purge(now, KEYS[4], KEYS[5], KEYS[6])
local n = tonumber(ARGV[2]) - 1
local wake = redis.call('ZRANGE', KEYS[4], 0, n)
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, n)) do table.insert(wake, id) end
return wake
"""
)


@dataclass(frozen=True)
class Slot:
    """The answer to "may this run start?": granted, or its place in which line."""

    granted: bool
    position: int = 0
    total: int = 0
    line: str = ""  # "repo" or "global" while waiting

    def describe(self, repo: str) -> str:
        where = f"the {repo} queue" if self.line == "repo" else "the global queue"
        return f"waiting: position {self.position} of {self.total} in {where}"


async def wake_runs(redis: ArqRedis, queue_name: str, run_ids: list[str]) -> None:
    """Make the deferred jobs of ``run_ids`` due now and wake the workers, so one picks them
    up at once instead of when their deferral ends (a job not deferred is left alone)."""
    if not run_ids:
        return
    now_ms = int((await redis.time())[0] * 1000)
    mapping: dict[Any, float] = {run_job_id(run_id): now_ms for run_id in run_ids}
    await redis.zadd(queue_name, mapping, xx=True)
    await wake(redis, queue_name)


class Capacity:
    """Slots under ``global_cap`` and each repository's cap, shared through ``redis``."""

    def __init__(
        self,
        redis: ArqRedis,
        *,
        namespace: str,
        queue_name: str,
        global_cap: int,
        lease_seconds: float,
        waiter_ttl_seconds: float,
    ) -> None:
        self.redis = redis
        self.namespace = namespace
        self.queue_name = queue_name
        self.global_cap = global_cap
        self.lease_ms = int(lease_seconds * 1000)
        self.waiter_ttl_ms = int(waiter_ttl_seconds * 1000)
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)

    def _keys(self, repository_id: int) -> list[str]:
        keys = []
        for scope in ("global", f"repo-{repository_id}"):
            keys += [f"{self.namespace}:capacity:{scope}:{part}" for part in _PARTS]
        return keys

    async def acquire(
        self, run_id: str, *, repository_id: int, enqueued_at: float, repo_cap: int
    ) -> Slot:
        """Take a slot for ``run_id`` if its turn has come (idempotent for a holder)."""
        args: list[Any] = [
            run_id,
            int(enqueued_at * 1000),
            self.lease_ms,
            self.waiter_ttl_ms,
            self.global_cap,
            repo_cap,
        ]
        granted, position, total, line = await self._acquire(
            keys=self._keys(repository_id), args=args
        )
        if int(granted):
            return Slot(True)
        line = line.decode() if isinstance(line, bytes) else str(line)
        return Slot(False, int(position), int(total), line)

    async def renew(self, run_id: str, *, repository_id: int) -> bool:
        """Extend the lease of ``run_id``'s slot; False if it had lapsed (it is taken again)."""
        keys = self._keys(repository_id)
        kept = await self._renew(keys=[keys[2], keys[5]], args=[run_id, self.lease_ms])
        return bool(int(kept))

    async def release(
        self, run_id: str, *, repository_id: int, repo_cap: int, wake: bool = True
    ) -> list[str]:
        """Give up ``run_id``'s slot (or place in line) and wake the runs next in line."""
        count = max(repo_cap, self.global_cap)
        raw = await self._release(keys=self._keys(repository_id), args=[run_id, count])
        woken = list(dict.fromkeys(r.decode() if isinstance(r, bytes) else str(r) for r in raw))
        if wake:
            await self.wake(woken)
        return woken

    async def wake(self, run_ids: list[str]) -> None:
        await wake_runs(self.redis, self.queue_name, run_ids)


_PARTS = ("waiting", "alive", "held")
