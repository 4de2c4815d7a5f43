"""Session history in Redis, shared by every worker; survives a server restart.

Keys, per tenant (tenants never share a key prefix):
  {prefix}:{tenant}:s:{id}        hash: profile, owner, summary, summary_acl (JSON), version, created_us
  {prefix}:{tenant}:s:{id}:turns  list of JSON turns (role, content, created_us, acl)
  {prefix}:{tenant}:s:{id}:lease  "worker|stream" holding the session (expires unless refreshed)
  {prefix}:{tenant}:s:{id}:turn   the user input of the turn in flight
  {prefix}:w:{worker}             the worker's heartbeat (a short TTL, refreshed with its leases)
A lease whose worker has no heartbeat is taken over at once (a crashed worker's
session resumes within the heartbeat TTL, not the lease's); the taker gets the
turn that was in flight as lost. Appends are one script that checks the lease
first (a stream taken over cannot write), then lands both turns, the version
bump and the TTLs together; compaction is WATCH/MULTI on the version. Redis errors become
Unavailable: the server stays up and nothing is acknowledged that was not written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import RedisError, WatchError

from antiphon.aio import cancel_and_wait
from antiphon.config import ContextSettings
from antiphon.context.derived import OPEN, Acl, from_json
from antiphon.context.sessions import Lease, SessionRecord, SessionStore, TurnRecord, VersionConflict
from antiphon.errors import FailedPrecondition, Unavailable
from antiphon.redis_support import close_redis, redis_client, unavailable_on_redis_error

log = logging.getLogger(__name__)

# Take a free lease, or one whose worker's heartbeat is gone (KEYS: lease, turn in flight; ARGV:
# "worker|stream", lease ms, heartbeat key prefix). Returns {0} held, {1} taken, {2, lost turn} taken over.
# A value without a worker (not written by this version) counts as held until it expires.
_ACQUIRE = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then return {1} end
if holder then
  local worker = string.match(holder, '^([^|]+)|')
  if (not worker) or redis.call('exists', ARGV[3] .. worker) == 1 then return {0} end
end
redis.call('set', KEYS[1], ARGV[1], 'px', ARGV[2])
local lost = redis.call('get', KEYS[2])
redis.call('del', KEYS[2])
if lost then return {2, lost} end
if holder then return {2} end
return {1}
"""
# Heartbeat, then every lease this worker holds extended; returns the (1-based) leases found taken over.
# KEYS: heartbeat, leases...; ARGV: heartbeat ms, lease ms, each lease's value.
_KEEP = """
redis.call('set', KEYS[1], '1', 'px', ARGV[1])
local lost = {}
for i = 2, #KEYS do
  if redis.call('get', KEYS[i]) == ARGV[i + 1] then redis.call('pexpire', KEYS[i], ARGV[2])
  else table.insert(lost, i - 1) end
end
return lost
"""
# Compare-and-delete: only the holder releases its lease, and forgets its turn in flight with it.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[2]); return redis.call('del', KEYS[1]) end
return 0
"""
_IF_HELD = "if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end "
_BEGIN_TURN = _IF_HELD + "redis.call('set', KEYS[2], ARGV[2], 'px', ARGV[3]) return 1"
_END_TURN = _IF_HELD + "return redis.call('del', KEYS[2])"
# Append (KEYS: session, turns, lease, turn in flight; ARGV: owner, ttl ms, lease value or "", turns...).
_APPEND = """
if ARGV[3] ~= '' and redis.call('get', KEYS[3]) ~= ARGV[3] then return -1 end
redis.call('rpush', KEYS[2], unpack(ARGV, 4))
redis.call('hsetnx', KEYS[1], 'owner', ARGV[1])
local version = redis.call('hincrby', KEYS[1], 'version', 1)
redis.call('pexpire', KEYS[1], ARGV[2])
redis.call('pexpire', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then redis.call('del', KEYS[4]) end
return version
"""
LOST_TURN_CHARS = 2000  # what of a lost turn's input is kept to report it
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


@dataclass(slots=True)
class _Held:
    lease: str  # key
    value: str  # "worker|stream"
    on_lost: Callable[[], None] | None


class RedisSessionStore(SessionStore):
    def __init__(
        self,
        where: str | ContextSettings,  # a redis:// URL, or [context] (sentinels, replica acknowledgement)
        *,
        prefix: str = "antiphon",
        ttl_s: int = 24 * 3600,
        lease_ttl_s: float = 30.0,
        heartbeat_ms: int = 2000,
        max_connections: int = 64,
        timeout_s: float = 2.0,
    ) -> None:
        self._redis = redis_client(where, max_connections=max_connections, timeout_s=timeout_s)
        self._prefix = prefix
        self._ttl_ms = int(ttl_s * 1000)
        self._lease_ms = int(lease_ttl_s * 1000)
        # The heartbeat's TTL bounds how long a dead worker's sessions stay locked; it is refreshed
        # four times per TTL, so a worker stalled for most of a TTL still keeps its leases.
        self._heartbeat_ms = heartbeat_ms
        self.worker_id = uuid.uuid4().hex[:16]
        self._heartbeat = f"{prefix}:w:{self.worker_id}"
        self._held: dict[tuple[str, str, str], _Held] = {}
        self._keeper: asyncio.Task[None] | None = None
        self._stopping = False  # the keeper's own exit: a Redis call may swallow the keeper's cancel
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

    async def append_turns(
        self, tenant: str, session_id: str, turns: list[TurnRecord], owner: str, lease: str = ""
    ) -> int:
        key = self._key(tenant, session_id)
        payload = [_turn_json(t) for t in turns]
        value = self._value(lease) if lease else ""
        async with self._errors("append turns"):
            version = int(
                await self._redis.eval(
                    _APPEND, 4, key, key + ":turns", key + ":lease", key + ":turn", owner, self._ttl_ms, value, *payload
                )
            )
        if version < 0:
            raise FailedPrecondition(
                f"session {session_id!r} was resumed on another stream; this turn was not recorded"
            )
        return version

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
            removed = await self._redis.delete(key, key + ":turns", key + ":lease", key + ":turn")
        return int(removed) > 0

    def _value(self, owner: str) -> str:
        return f"{self.worker_id}|{owner}"

    async def acquire(
        self, tenant: str, session_id: str, owner: str, on_lost: Callable[[], None] | None = None
    ) -> Lease | None:
        key = self._key(tenant, session_id)
        value = self._value(owner)
        async with self._errors("lease session"):
            if self._keeper is None or self._keeper.done():
                # Alive before holding anything: a lease must never name a worker without a heartbeat.
                await self._redis.set(self._heartbeat, "1", px=self._heartbeat_ms)
                self._keeper = asyncio.create_task(self._keep(), name="session-leases")
            reply = await self._redis.eval(
                _ACQUIRE, 2, key + ":lease", key + ":turn", value, self._lease_ms, f"{self._prefix}:w:"
            )
        if int(reply[0]) == 0:
            return None
        if int(reply[0]) == 2:
            log.info("session taken over from a worker without a heartbeat", extra={"session": session_id})
        self._held[(tenant, session_id, owner)] = _Held(key + ":lease", value, on_lost)
        return Lease(lost_turn=reply[1] if len(reply) > 1 else "")

    async def _keep(self) -> None:
        """Every quarter heartbeat: the heartbeat and all this worker's leases in one round trip. A
        lease found taken over (this worker looked dead: stalled, or cut off from Redis) is dropped
        and its stream told; a crashed worker's heartbeat lapses by itself."""
        while not self._stopping:
            await asyncio.sleep(self._heartbeat_ms / 4000)
            held = list(self._held.items())
            try:
                lost = await self._redis.eval(
                    _KEEP,
                    1 + len(held),
                    self._heartbeat,
                    *(h.lease for _, h in held),
                    self._heartbeat_ms,
                    self._lease_ms,
                    *(h.value for _, h in held),
                )
            except (RedisError, OSError) as exc:
                if self._stopping:
                    return
                log.warning("heartbeat failed: %s", exc)
                continue
            for index in lost:
                name, h = held[int(index) - 1]
                if self._held.get(name) is h:
                    del self._held[name]
                    log.warning("session lease taken over by another stream", extra={"session": name[1]})
                    if h.on_lost is not None:
                        h.on_lost()

    async def begin_turn(self, tenant: str, session_id: str, owner: str, user_text: str) -> None:
        key = self._key(tenant, session_id)
        text = user_text[:LOST_TURN_CHARS]
        async with self._errors("note the turn"):
            await self._redis.eval(
                _BEGIN_TURN, 2, key + ":lease", key + ":turn", self._value(owner), text, self._ttl_ms
            )

    async def end_turn(self, tenant: str, session_id: str, owner: str) -> None:
        key = self._key(tenant, session_id)
        async with self._errors("end the turn"):
            await self._redis.eval(_END_TURN, 2, key + ":lease", key + ":turn", self._value(owner))

    async def release(self, tenant: str, session_id: str, owner: str) -> None:
        self._held.pop((tenant, session_id, owner), None)
        key = self._key(tenant, session_id)
        with contextlib.suppress(RedisError, OSError):  # unreleased leases expire on their own
            await self._redis.eval(_RELEASE, 2, key + ":lease", key + ":turn", self._value(owner))

    async def _stop_keeper(self) -> None:
        """Stop heartbeating (bounded, even if a Redis call swallows the cancel)."""
        self._stopping = True
        await cancel_and_wait(self._keeper)
        self._keeper = None

    async def aclose(self) -> None:
        if self._keeper is not None:
            await self._stop_keeper()
            with contextlib.suppress(RedisError, OSError):  # a clean stop frees its sessions at once
                await self._redis.delete(self._heartbeat)
        self._held.clear()
        await close_redis(self._redis)
