"""Session history in Redis, shared by every worker; survives a server restart.

Keys, per tenant (tenants never share a key prefix):
  {prefix}:{tenant}:s:{id}        hash: profile, owner, summary, summary_acl (JSON), version, created_us
  {prefix}:{tenant}:s:{id}:turns  list of JSON turns (role, content, created_us, acl)
  {prefix}:{tenant}:s:{id}:lease  the stream holding the session (expires unless refreshed)
Appends are one MULTI/EXEC (both turns, the version bump and the TTLs land
together); compaction is WATCH/MULTI on the version. Redis errors become
Unavailable: the server stays up and nothing is acknowledged that was not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

from redis.exceptions import RedisError, WatchError

from antiphon.config import ContextSettings
from antiphon.context.derived import OPEN, Acl, from_json
from antiphon.context.sessions import SessionRecord, SessionStore, TurnRecord, VersionConflict
from antiphon.errors import Unavailable
from antiphon.redis_support import close_redis, redis_client, unavailable_on_redis_error

log = logging.getLogger(__name__)

# Compare-and-delete / compare-and-extend: only the holder may release or refresh its lease.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
_REFRESH = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
# Create only what does not exist: an existing session keeps its owner (fields set one by one with
# HSETNX would let the first caller claim a session written before owners existed).
_CREATE = """
if redis.call('exists', KEYS[1]) == 0 then
  redis.call('hset', KEYS[1], 'profile', ARGV[1], 'owner', ARGV[2], 'version', 0, 'created_us', ARGV[3])
end
redis.call('pexpire', KEYS[1], ARGV[4])
redis.call('pexpire', KEYS[2], ARGV[4])
return 1
"""


def _turn_json(t: TurnRecord) -> str:
    data: dict[str, object] = {"role": t.role, "content": t.content, "created_us": t.created_us}
    if t.acl:
        data["acl"] = [list(labels) for labels in t.acl]
    return json.dumps(data)


def _turn(raw: str) -> TurnRecord:
    data = json.loads(raw)
    acl = from_json(data["acl"]) if "acl" in data else OPEN
    return TurnRecord(data["role"], data["content"], int(data["created_us"]), acl)


class RedisSessionStore(SessionStore):
    def __init__(
        self,
        where: str | ContextSettings,  # a redis:// URL, or [context] (sentinels, replica acknowledgement)
        *,
        prefix: str = "antiphon",
        ttl_s: int = 24 * 3600,
        lease_ttl_s: float = 30.0,
        max_connections: int = 64,
        timeout_s: float = 2.0,
    ) -> None:
        self._redis = redis_client(where, max_connections=max_connections, timeout_s=timeout_s)
        self._prefix = prefix
        self._ttl_ms = int(ttl_s * 1000)
        self._lease_ms = int(lease_ttl_s * 1000)
        self._refreshers: dict[tuple[str, str, str], asyncio.Task[None]] = {}
        self.url = where if isinstance(where, str) else where.redis_url

    def _key(self, tenant: str, session_id: str) -> str:
        return f"{self._prefix}:{tenant}:s:{session_id}"

    async def ping(self) -> None:
        async with self._errors("ping"):
            await self._redis.ping()

    def _errors(self, what: str) -> contextlib.AbstractAsyncContextManager[None]:
        return unavailable_on_redis_error("session store", what)

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        key = self._key(tenant, session_id)
        async with self._errors("read session"), self._redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(key)
            pipe.lrange(key + ":turns", 0, -1)
            meta, raw_turns = await pipe.execute()
        if not meta:
            return None
        summary_acl = from_json(json.loads(meta["summary_acl"])) if meta.get("summary_acl") else OPEN
        return SessionRecord(
            session_id,
            meta.get("profile", ""),
            [_turn(t) for t in raw_turns],
            meta.get("summary", ""),
            int(meta.get("version", 0)),
            meta.get("owner", ""),
            summary_acl,
        )

    async def create(self, tenant: str, session_id: str, agent_profile: str, owner: str) -> SessionRecord:
        key = self._key(tenant, session_id)
        async with self._errors("create session"):
            await self._redis.eval(
                _CREATE, 2, key, key + ":turns", agent_profile, owner, time.time_ns() // 1000, self._ttl_ms
            )
        record = await self.get(tenant, session_id)
        if record is None:  # expired between the two round trips: practically impossible
            raise Unavailable("the session vanished while it was created; retry")
        return record

    async def append_turns(self, tenant: str, session_id: str, turns: list[TurnRecord], owner: str) -> int:
        key = self._key(tenant, session_id)
        payload = [_turn_json(t) for t in turns]
        async with self._errors("append turns"), self._redis.pipeline(transaction=True) as pipe:
            pipe.rpush(key + ":turns", *payload)
            pipe.hsetnx(key, "owner", owner)  # only where the session expired meanwhile and starts afresh
            pipe.hincrby(key, "version", 1)
            pipe.pexpire(key, self._ttl_ms)
            pipe.pexpire(key + ":turns", self._ttl_ms)
            results = await pipe.execute()
        return int(results[2])

    async def compact(
        self,
        tenant: str,
        session_id: str,
        summary: str,
        drop_turns: int,
        expected_version: int,
        *,
        summary_acl: Acl = OPEN,
    ) -> int:
        key = self._key(tenant, session_id)
        async with self._errors("compact session"), self._redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                current = int(await pipe.hget(key, "version") or -1)
                if current != expected_version:
                    raise VersionConflict(f"session {session_id!r} is at version {current}, not {expected_version}")
                pipe.multi()
                pipe.ltrim(key + ":turns", drop_turns, -1)
                pipe.hset(key, mapping={"summary": summary, "summary_acl": json.dumps([list(x) for x in summary_acl])})
                pipe.hincrby(key, "version", 1)
                results = await pipe.execute()
            except WatchError:
                raise VersionConflict(f"session {session_id!r} changed during compaction") from None
        return int(results[2])

    async def delete(self, tenant: str, session_id: str) -> bool:
        key = self._key(tenant, session_id)
        async with self._errors("delete session"):
            removed = await self._redis.delete(key, key + ":turns", key + ":lease")
        return int(removed) > 0

    async def acquire(self, tenant: str, session_id: str, owner: str) -> bool:
        lease = self._key(tenant, session_id) + ":lease"
        async with self._errors("lease session"):
            taken = await self._redis.set(lease, owner, nx=True, px=self._lease_ms)
            if not taken and await self._redis.get(lease) != owner:
                return False
        refresher = (tenant, session_id, owner)
        if refresher not in self._refreshers:
            self._refreshers[refresher] = asyncio.create_task(self._keep(lease, owner), name=f"lease:{session_id}")
        return True

    async def _keep(self, lease: str, owner: str) -> None:
        """Refresh the lease while the stream is open; a crashed worker's lease lapses by itself."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                if not await self._redis.eval(_REFRESH, 1, lease, owner, self._lease_ms):
                    return
            except (RedisError, OSError) as exc:
                log.warning("lease refresh failed: %s", exc)

    async def release(self, tenant: str, session_id: str, owner: str) -> None:
        task = self._refreshers.pop((tenant, session_id, owner), None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lease = self._key(tenant, session_id) + ":lease"
        with contextlib.suppress(RedisError, OSError):  # unreleased leases expire on their own
            await self._redis.eval(_RELEASE, 1, lease, owner)

    async def aclose(self) -> None:
        for task in self._refreshers.values():
            task.cancel()
        await asyncio.gather(*self._refreshers.values(), return_exceptions=True)
        self._refreshers.clear()
        await close_redis(self._redis)
