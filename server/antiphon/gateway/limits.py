"""Rate limits: token buckets per tenant and per credential; concurrent-stream slots.

Buckets (a rate per window; a bucket holds ``rate x burst`` and refills continuously):
  rps   requests per second        burst: limits.burst_s     checked on every call
  tpm   LLM tokens per minute      burst: one minute         admitted while positive, debited after each turn
  aspm  audio seconds per minute   burst: one minute         as tpm
A call passes only when every bucket that applies (tenant, credential) allows it, and
then every one is debited: in Redis, one atomic Lua script per check does both, with
Redis's own clock, so every worker draws on one budget. Over a limit: RateLimited
(RESOURCE_EXHAUSTED) with the time until the call would pass.

Tenant limits come from the config unless Admin.SetQuota overrode them (the override
hash in the key store; the Redis script reads it itself). 0 means unlimited.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from antiphon.config import LimitsSettings
from antiphon.errors import ResourceExhausted, Unavailable
from antiphon.gateway.keys import KeyStore, Quota
from antiphon.gateway.redis_keys import redis_errors, tenant_key

log = logging.getLogger(__name__)

Kind = Literal["rps", "tpm", "aspm"]
Mode = Literal["take", "admit", "debit"]
STREAM_RETRY_S = 1.0
_LABELS: dict[str, str] = {
    "rps": "requests per second",
    "tpm": "LLM tokens per minute",
    "aspm": "audio seconds per minute",
    "streams": "concurrent streams",
}


class RateLimited(ResourceExhausted):
    """Over a rate limit; ``retry_after_s`` is when the same call would pass."""

    retry_after_s: float

    def __init__(self, limit: str, scope: str, retry_after_s: float) -> None:
        self.limit = limit
        self.scope = scope
        self.retry_after_s = max(0.001, retry_after_s)
        super().__init__(
            f"{scope} is over its limit of {_LABELS.get(limit, limit)}; retry in {self.retry_after_s:.3f} s"
        )


@dataclass(frozen=True, slots=True)
class Rate:
    per_window: float  # 0 = unlimited
    window_s: float
    burst: float  # the bucket holds per_window x burst
    capacity: float = field(init=False)
    refill_per_s: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "capacity", self.per_window * self.burst)
        object.__setattr__(self, "refill_per_s", self.per_window / self.window_s)


def _override(kind: Kind, quota: Quota) -> float | None:
    if kind == "rps":
        return quota.requests_per_s
    if kind == "tpm":
        return None if quota.llm_tokens_per_min is None else float(quota.llm_tokens_per_min)
    return quota.audio_s_per_min


class Limiter(ABC):
    def __init__(self, limits: LimitsSettings, keys: KeyStore) -> None:
        self._limits = limits
        self._keys = keys

    def _defaults(self, kind: Kind) -> tuple[Rate, Rate]:
        """(tenant, credential) rates from the config."""
        s = self._limits
        if kind == "rps":
            return Rate(s.tenant_requests_per_s, 1.0, s.burst_s), Rate(s.key_requests_per_s, 1.0, s.burst_s)
        if kind == "tpm":
            return Rate(s.tenant_llm_tokens_per_min, 60.0, 1.0), Rate(s.key_llm_tokens_per_min, 60.0, 1.0)
        return Rate(s.tenant_audio_s_per_min, 60.0, 1.0), Rate(s.key_audio_s_per_min, 60.0, 1.0)

    def stream_defaults(self) -> tuple[int, int]:
        return self._limits.tenant_streams, self._limits.key_streams

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def admit_request(self, tenant: str, credential: str) -> None:
        await self.check("rps", "take", tenant, credential, 1.0)

    @abstractmethod
    async def check(self, kind: Kind, mode: Mode, tenant: str, credential: str, cost: float) -> None:
        """take: pass when every bucket holds ``cost``, then debit it; admit: pass while every bucket
        is positive (usage is debited afterwards); debit: take ``cost`` without checking."""

    @abstractmethod
    def debit(self, kind: Kind, tenant: str, credential: str, amount: float) -> None:
        """Usage known after the fact (a turn's tokens); never blocks, never raises."""

    async def flush(self) -> None:
        """Write debits that were deferred (Redis); nothing to do in process."""
        return

    @abstractmethod
    async def open_stream(self, tenant: str, credential: str, stream_id: str) -> None: ...

    @abstractmethod
    async def close_stream(self, tenant: str, credential: str, stream_id: str) -> None: ...


# --- in process --------------------------------------------------------------------------------------------------


class _Bucket:
    __slots__ = ("level", "ts")

    def __init__(self, level: float, ts: float) -> None:
        self.level = level
        self.ts = ts


class MemoryLimiter(Limiter):
    """Buckets in this process: exact for one worker, per worker when there are several."""

    def __init__(self, limits: LimitsSettings, keys: KeyStore, *, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(limits, keys)
        self._clock = clock
        self._rates: dict[Kind, tuple[Rate, Rate]] = {k: self._defaults(k) for k in ("rps", "tpm", "aspm")}
        self._buckets: dict[tuple[str, ...], _Bucket] = {}
        self._streams: dict[tuple[str, str], set[str]] = {}

    async def check(self, kind: Kind, mode: Mode, tenant: str, credential: str, cost: float) -> None:
        self._apply(kind, mode, tenant, credential, cost)

    def debit(self, kind: Kind, tenant: str, credential: str, amount: float) -> None:
        if amount > 0:
            self._apply(kind, "debit", tenant, credential, amount)

    def _apply(self, kind: Kind, mode: Mode, tenant: str, credential: str, cost: float) -> None:
        tenant_rate, key_rate = self._rates[kind]
        override = _override(kind, self._keys.quota_now(tenant))
        if override is not None:
            tenant_rate = Rate(override, tenant_rate.window_s, tenant_rate.burst)
        tenant_on = tenant_rate.per_window > 0
        key_on = key_rate.per_window > 0 and bool(credential)
        if not (tenant_on or key_on):
            return
        now = self._clock()
        tb = self._refilled(("t", tenant, kind), tenant_rate, now) if tenant_on else None
        kb = self._refilled(("k", tenant, credential, kind), key_rate, now) if key_on else None
        tenant_wait = _shortfall(mode, tb.level, cost) / tenant_rate.refill_per_s if tb is not None else 0.0
        key_wait = _shortfall(mode, kb.level, cost) / key_rate.refill_per_s if kb is not None else 0.0
        if tenant_wait > 0 or key_wait > 0:
            if tenant_wait >= key_wait:
                raise RateLimited(kind, f"tenant {tenant!r}", tenant_wait)
            raise RateLimited(kind, "this credential", key_wait)
        if mode != "admit":
            if tb is not None:
                tb.level = max(-tenant_rate.capacity, tb.level - cost)
            if kb is not None:
                kb.level = max(-key_rate.capacity, kb.level - cost)

    def _refilled(self, key: tuple[str, ...], rate: Rate, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) > 100_000:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(rate.capacity, now)
        else:
            bucket.level = min(rate.capacity, bucket.level + (now - bucket.ts) * rate.refill_per_s)
            bucket.ts = now
        return bucket

    def _prune(self, now: float) -> None:
        """Forget buckets that have been idle long enough to be full again (a full bucket is the default)."""
        self._buckets = {k: b for k, b in self._buckets.items() if now - b.ts < 120.0}

    async def open_stream(self, tenant: str, credential: str, stream_id: str) -> None:
        tenant_max, key_max = self.stream_defaults()
        override = self._keys.quota_now(tenant).streams
        if override is not None:
            tenant_max = override
        scopes = [(("t", tenant), tenant_max, f"tenant {tenant!r}")]
        if credential:
            scopes.append((("k", f"{tenant}/{credential}"), key_max, "this credential"))
        for key, limit, label in scopes:
            if limit > 0 and len(self._streams.get(key, ())) >= limit:
                raise RateLimited("streams", label, STREAM_RETRY_S)
        for key, _, _ in scopes:
            self._streams.setdefault(key, set()).add(stream_id)

    async def close_stream(self, tenant: str, credential: str, stream_id: str) -> None:
        for key in (("t", tenant), ("k", f"{tenant}/{credential}")):
            open_ = self._streams.get(key)
            if open_ is not None:
                open_.discard(stream_id)
                if not open_:
                    del self._streams[key]


def _shortfall(mode: Mode, level: float, cost: float) -> float:
    """How many units the bucket lacks for this call (0: it passes)."""
    if mode == "take":
        return max(0.0, cost - level)
    if mode == "admit":
        return 0.0 if level > 0 else -level + 1e-3
    return 0.0


# --- Redis -------------------------------------------------------------------------------------------------------

# KEYS[1]: the tenant's quota hash; KEYS[2..]: one bucket per scope.
# ARGV: mode, cost, then per bucket: rate per window, window (s), burst, override field ("" = none).
# Returns 0 when the call passes, else {wait in ms, index of the blocking bucket}.
_BUCKETS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local mode = ARGV[1]
local cost = tonumber(ARGV[2])
local state = {}
local wait, blocked = 0, 0
for i = 2, #KEYS do
  local a = 3 + (i - 2) * 4
  local rate = tonumber(ARGV[a])
  if ARGV[a + 3] ~= '' then
    local o = redis.call('HGET', KEYS[1], ARGV[a + 3])
    if o then rate = tonumber(o) end
  end
  if rate > 0 then
    local cap = rate * tonumber(ARGV[a + 2])
    local per_ms = rate / (tonumber(ARGV[a + 1]) * 1000)
    local b = redis.call('HMGET', KEYS[i], 'v', 't')
    local v = tonumber(b[1]) or cap
    local ts = tonumber(b[2]) or now
    if now > ts then v = math.min(cap, v + (now - ts) * per_ms) end
    local need = 0
    if mode == 'take' then need = cost - v elseif mode == 'admit' and v <= 0 then need = 1e-3 - v end
    if need > 0 and need / per_ms > wait then wait = need / per_ms; blocked = i - 1 end
    state[#state + 1] = {KEYS[i], v, cap, per_ms}
  end
end
if wait > 0 then return {math.ceil(wait), blocked} end
if mode ~= 'admit' then
  for _, s in ipairs(state) do
    local v = math.max(-s[3], s[2] - cost)
    redis.call('HSET', s[1], 'v', tostring(v), 't', tostring(now))
    redis.call('PEXPIRE', s[1], math.ceil((s[3] - v) / s[4]) + 1000)
  end
end
return 0
"""

# KEYS[1]: quota hash, KEYS[2]: the tenant's open streams, KEYS[3]: the credential's (optional).
# ARGV: stream id, lease (ms), tenant limit, credential limit. Expired entries (a crashed worker's) are dropped.
# Returns 0 when a slot was taken, else the index of the full scope (1 tenant, 2 credential).
_STREAMS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[2])
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4])}
local o = redis.call('HGET', KEYS[1], 'streams')
if o then limits[1] = tonumber(o) end
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
  if limits[i - 1] > 0 and redis.call('ZCARD', KEYS[i]) >= limits[i - 1] then return i - 1 end
end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], now + lease, ARGV[1])
  redis.call('PEXPIRE', KEYS[i], lease)
end
return 0
"""


class RedisLimiter(Limiter):
    """Buckets in Redis, shared by every worker; one script per check."""

    def __init__(self, limits: LimitsSettings, keys: KeyStore, client: Any, *, prefix: str = "antiphon") -> None:
        super().__init__(limits, keys)
        self._redis = client
        self._prefix = prefix
        self._buckets = client.register_script(_BUCKETS_LUA)
        self._streams = client.register_script(_STREAMS_LUA)
        max_s = limits.max_stream_s or 6 * 3600.0  # without a stream limit, a crashed worker's slots free in 6 h
        self._lease_ms = int((max_s + 60) * 1000)
        self._debits: dict[tuple[Kind, str, str], float] = {}

    async def check(self, kind: Kind, mode: Mode, tenant: str, credential: str, cost: float) -> None:
        tenant_rate, key_rate = self._defaults(kind)
        unlimited = tenant_rate.per_window <= 0 and (key_rate.per_window <= 0 or not credential)
        # Unlimited by the config: only an override can limit this tenant (the cached quota tells).
        if unlimited and _override(kind, await self._keys.quota(tenant)) in (None, 0.0):
            return
        field = {"rps": "rps", "tpm": "tpm", "aspm": "aspm"}[kind]
        keys = [tenant_key(self._prefix, tenant, "quota"), tenant_key(self._prefix, tenant, f"rl:{kind}")]
        args: list[Any] = [mode, cost, tenant_rate.per_window, tenant_rate.window_s, tenant_rate.burst, field]
        if credential:
            keys.append(tenant_key(self._prefix, tenant, f"rl:{kind}:{credential}"))
            args += [key_rate.per_window, key_rate.window_s, key_rate.burst, ""]
        async with redis_errors("rate limit"):
            result = await self._buckets(keys=keys, args=args)
        if result != 0:
            wait_ms, index = int(result[0]), int(result[1])
            raise RateLimited(kind, f"tenant {tenant!r}" if index == 1 else "this credential", wait_ms / 1000)

    def debit(self, kind: Kind, tenant: str, credential: str, amount: float) -> None:
        if amount > 0:
            key = (kind, tenant, credential)
            self._debits[key] = self._debits.get(key, 0.0) + amount

    async def flush(self) -> None:
        debits, self._debits = self._debits, {}
        try:
            for (kind, tenant, credential), amount in debits.items():
                await self.check(kind, "debit", tenant, credential, amount)
        except BaseException:
            for key, amount in debits.items():  # keep them for the next flush
                self._debits[key] = self._debits.get(key, 0.0) + amount
            raise

    async def open_stream(self, tenant: str, credential: str, stream_id: str) -> None:
        tenant_max, key_max = self.stream_defaults()
        if tenant_max <= 0 and (key_max <= 0 or not credential) and not (await self._keys.quota(tenant)).streams:
            return
        keys = [tenant_key(self._prefix, tenant, "quota"), tenant_key(self._prefix, tenant, "streams")]
        if credential:
            keys.append(tenant_key(self._prefix, tenant, f"streams:{credential}"))
        async with redis_errors("stream limit"):
            full = int(await self._streams(keys=keys, args=[stream_id, self._lease_ms, tenant_max, key_max]))
        if full:
            raise RateLimited("streams", f"tenant {tenant!r}" if full == 1 else "this credential", STREAM_RETRY_S)

    async def close_stream(self, tenant: str, credential: str, stream_id: str) -> None:
        keys = [tenant_key(self._prefix, tenant, "streams")]
        if credential:
            keys.append(tenant_key(self._prefix, tenant, f"streams:{credential}"))
        try:
            async with redis_errors("release stream"), self._redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.zrem(key, stream_id)
                await pipe.execute()
        except Unavailable:  # the slot frees itself when its lease expires
            log.warning("stream slot %s of tenant %r not released; it expires with its lease", stream_id, tenant)


def retry_delay_ms(exc: RateLimited) -> int:
    return max(1, math.ceil(exc.retry_after_s * 1000))
