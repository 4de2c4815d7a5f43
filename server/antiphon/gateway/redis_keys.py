"""API keys and quotas in Redis, shared by every worker (revocation reaches them through pub/sub)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from antiphon.aio import cancel_and_wait
from antiphon.config import ContextSettings
from antiphon.gateway.keys import ApiKey, KeyStore, Quota
from antiphon.redis_support import close_redis, redis_client, unavailable_on_redis_error

log = logging.getLogger(__name__)


def redis_errors(what: str) -> contextlib.AbstractAsyncContextManager[None]:
    return unavailable_on_redis_error("gateway store", what)


def tenant_key(prefix: str, tenant: str, suffix: str) -> str:
    """A per-tenant Redis key; the tenant is a hash tag, so a tenant's keys share one cluster slot."""
    return f"{prefix}:gw:{{{tenant}}}:{suffix}"


class RedisKeyStore(KeyStore):
    def __init__(
        self, where: str | ContextSettings, *, prefix: str = "antiphon", cache_ms: int = 1000, client: Any = None
    ) -> None:
        self._redis = client if client is not None else redis_client(where)
        self._owns_client = client is None
        self._prefix = prefix
        self._keys_hash = f"{prefix}:gw:keys"
        self.channel = f"{prefix}:gw:changed"
        self._cache_s = cache_ms / 1000
        self._keys: dict[str, tuple[float, ApiKey | None]] = {}
        self._quotas: dict[str, tuple[float, Quota]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._closing = False  # the loop's own exit: a Redis call may swallow its cancel
        self._listening = asyncio.Event()

    async def start(self) -> None:
        if self._cache_s > 0 and self._listener is None:
            self._listener = asyncio.create_task(self._listen(), name="keys:invalidate")
            # Wait briefly for the subscription: until then nothing is cached (see _cacheable).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), 2.0)

    async def aclose(self) -> None:
        if self._listener is not None:
            self._closing = True
            await cancel_and_wait(self._listener)
            self._listener = None
        if self._owns_client:
            await close_redis(self._redis)

    async def _listen(self) -> None:
        """Drop cached entries when another worker changes them; reconnect after errors."""
        from redis.exceptions import RedisError

        while not self._closing:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                self._clear()  # messages may have been missed while not subscribed
                self._listening.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._evict(str(message["data"]))
            except (RedisError, OSError) as exc:
                log.warning("key-change subscription lost: %s; reconnecting", exc)
            finally:
                self._listening.clear()
                self._clear()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            if not self._closing:
                await asyncio.sleep(0.5)

    def _clear(self) -> None:
        self._keys.clear()
        self._quotas.clear()

    def _evict(self, what: str) -> None:
        kind, _, name = what.partition(":")
        if kind == "key":
            self._keys.pop(name, None)
        elif kind == "quota":
            self._quotas.pop(name, None)

    def _cacheable(self) -> bool:
        return self._cache_s > 0 and self._listening.is_set()

    async def _changed(self, what: str) -> None:
        self._evict(what)
        async with redis_errors("announce key change"):
            await self._redis.publish(self.channel, what)

    async def get(self, key_id: str) -> ApiKey | None:
        now = time.monotonic()
        hit = self._keys.get(key_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with redis_errors("read key"):
            raw = await self._redis.hget(self._keys_hash, key_id)
        record = ApiKey.from_json(json.loads(raw)) if raw else None
        if self._cacheable():
            if len(self._keys) > 100_000:
                self._keys.clear()
            self._keys[key_id] = (now + self._cache_s, record)
        return record

    async def add(self, key: ApiKey) -> None:
        async with redis_errors("write key"):
            await self._redis.hset(self._keys_hash, key.key_id, json.dumps(key.to_json()))
        await self._changed(f"key:{key.key_id}")

    async def list(self, tenant: str | None) -> list[ApiKey]:
        async with redis_errors("list keys"):
            raw = await self._redis.hgetall(self._keys_hash)
        keys = [ApiKey.from_json(json.loads(v)) for v in raw.values()]
        keys = [k for k in keys if tenant is None or k.tenant == tenant]
        return sorted(keys, key=lambda k: (k.created_us, k.key_id))

    async def revoke(self, key_id: str) -> ApiKey | None:
        # Compare-and-set in one script: a concurrent revoke keeps the first timestamp.
        script = """
        local raw = redis.call('HGET', KEYS[1], ARGV[1])
        if not raw then return false end
        local rec = cjson.decode(raw)
        if (rec['revoked_us'] or 0) == 0 then
          rec['revoked_us'] = tonumber(ARGV[2])
          raw = cjson.encode(rec)
          redis.call('HSET', KEYS[1], ARGV[1], raw)
        end
        return raw
        """
        async with redis_errors("revoke key"):
            raw = await self._redis.eval(script, 1, self._keys_hash, key_id, time.time_ns() // 1000)
        await self._changed(f"key:{key_id}")
        return ApiKey.from_json(json.loads(raw)) if raw else None

    async def quota(self, tenant: str) -> Quota:
        now = time.monotonic()
        hit = self._quotas.get(tenant)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with redis_errors("read quota"):
            fields = await self._redis.hgetall(tenant_key(self._prefix, tenant, "quota"))
        quota = Quota.from_fields(fields)
        if self._cacheable():
            if len(self._quotas) > 100_000:
                self._quotas.clear()
            self._quotas[tenant] = (now + self._cache_s, quota)
        return quota

    async def set_quota(self, tenant: str, quota: Quota, *, reset: bool = False) -> Quota:
        key = tenant_key(self._prefix, tenant, "quota")
        async with redis_errors("write quota"), self._redis.pipeline(transaction=True) as pipe:
            if reset:
                pipe.delete(key)
            if fields := quota.to_fields():
                pipe.hset(key, mapping=fields)
            pipe.hgetall(key)
            results = await pipe.execute()
        await self._changed(f"quota:{tenant}")
        return Quota.from_fields(results[-1])
