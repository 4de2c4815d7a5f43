"""One way to reach Redis: a bounded, blocking connection pool on one server or on the master that
Redis Sentinel names, writes acknowledged by replicas where configured, and failures as UNAVAILABLE."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool, SentinelManagedConnection
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from antiphon.errors import Unavailable

if TYPE_CHECKING:
    from antiphon.config import ContextSettings

log = logging.getLogger(__name__)


def redis_client(
    where: str | ContextSettings, *, max_connections: int = 64, timeout_s: float = 2.0, decode_responses: bool = True
) -> Any:
    """A client on a blocking pool: past max_connections callers wait instead of failing (the default
    pool raises MaxConnectionsError past its limit). ``where`` is a URL, or the [context] settings:
    their sentinels (which then name the host), master name and replica acknowledgement. Close it
    with `close_redis`."""
    options: dict[str, Any] = {
        "max_connections": max_connections,
        "timeout": timeout_s,
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "decode_responses": decode_responses,
        # One immediate retry on a broken connection. It must be set on the pool: a client given a
        # pool ignores its own retry settings. After Redis restarts, pooled connections to the old
        # process fail once ("Connection closed by server") and a fresh connection succeeds; under
        # Sentinel the retry's new connection asks the sentinels for the master again.
        "retry": Retry(NoBackoff(), 1),
        "retry_on_error": [RedisConnectionError],
    }
    if isinstance(where, str):
        return Redis(connection_pool=BlockingConnectionPool.from_url(where, **options))
    pool = (
        _sentinel_pool(where, options)
        if where.redis_sentinels
        else BlockingConnectionPool.from_url(where.redis_url, **options)
    )
    if where.redis_min_replicas_ack == 0:
        return Redis(connection_pool=pool)
    client = AckedRedis(connection_pool=pool)
    client.replicas, client.ack_timeout_ms = where.redis_min_replicas_ack, where.redis_replica_ack_timeout_ms
    return client


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """SentinelConnectionPool (the master's address asked of the sentinels at each connect, so a
    reconnection after a failover finds the new master; a READONLY reply from a demoted master drops
    the connection and raises ConnectionError, which the retry turns into such a reconnection, given
    RediscoveringConnection) with BlockingConnectionPool's waiting for a free connection: redis-py's
    own SentinelConnectionPool derives from ConnectionPool and would raise MaxConnectionsError
    instead. The MRO puts the sentinel's connect logic first and the blocking get_connection/release
    beneath it (tests/unit/test_redis_sentinel_config.py checks the pool is both)."""


class RediscoveringConnection(SentinelManagedConnection):
    """Reconnects through the sentinels. redis-py's own reconnects a dropped connection on its next
    send to the address it last had (redis/redis-py#3874): the retry after a READONLY from a demoted
    master went back to that replica, and after a crash to the dead address."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self.is_connected:
            await self.connect()  # type: ignore[no-untyped-call]  # asks the sentinels for the master
        await super().send_packed_command(command, check_health)


def _sentinel_pool(c: ContextSettings, options: dict[str, Any]) -> BlockingSentinelPool:
    # From redis_url only db, username and password: the sentinels name the host.
    target = {k: v for k, v in parse_url(c.redis_url).items() if k not in ("host", "port")}
    sentinel_options: dict[str, Any] = {k: v for k, v in options.items() if k.startswith("socket_")}
    # No retry on a sentinel: discover_master moves on to the next sentinel, which is the retry.
    sentinel_options |= {"password": c.redis_sentinel_password or None, "retry": Retry(NoBackoff(), 0)}
    addresses = [split_host_port(a) for a in c.redis_sentinels]
    # redis-py's sentinel pool carries no annotations.
    sentinel = Sentinel(addresses, sentinel_kwargs=sentinel_options)
    return BlockingSentinelPool(  # type: ignore[no-untyped-call]
        c.redis_master, sentinel, connection_class=RediscoveringConnection, **options, **target
    )


def split_host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


async def close_redis(client: Any) -> None:
    await client.aclose()
    pool = client.connection_pool
    await pool.aclose()  # a pool passed in is not closed by the client
    if isinstance(pool, SentinelConnectionPool):
        await pool.sentinel_manager.aclose()  # its own clients, one per sentinel


# --- replica acknowledgement ------------------------------------------------------------------------------------

# Commands that write nothing a failover could lose; every other command (EVAL included) is
# followed by WAIT. A read missing here costs one round trip; a write missing would cost durability.
_READS = (
    "GET MGET HGET HMGET HGETALL HEXISTS HLEN HKEYS HVALS HSCAN LRANGE LLEN LINDEX SMEMBERS SISMEMBER SCARD "
    "SSCAN ZRANGE ZRANGEBYSCORE ZSCORE ZCARD ZSCAN XREAD XRANGE XREVRANGE XLEN XINFO EXISTS TYPE TTL PTTL SCAN "
    "KEYS DUMP STRLEN EVAL_RO EVALSHA_RO PING ECHO TIME INFO ROLE WATCH UNWATCH MULTI DISCARD SCRIPT CLIENT "
    "CONFIG COMMAND DBSIZE WAIT SELECT AUTH HELLO PUBLISH"
)
_NO_WAIT = frozenset(_READS.split())


class NotReplicated(RedisError):
    """Fewer replicas than context.redis_min_replicas_ack confirmed a write in time: it is not
    acknowledged (it may still persist, or be lost in a failover)."""


def _writes(command: object) -> bool:
    name = command.decode() if isinstance(command, bytes) else str(command)
    return name.split(" ", 1)[0].upper() not in _NO_WAIT


class AckedRedis(Redis):
    """Each write is followed, on its own connection, by ``WAIT replicas ack_timeout_ms``; the command
    returns only once that many replicas hold it. Sentinel promotes the replica with the largest
    replication offset, so an acknowledged write survives the primary's crash. A WAIT on a
    connection that wrote nothing new returns at once."""

    replicas = 0
    ack_timeout_ms = 500

    async def _send_command_parse_response(self, conn: Any, command_name: Any, *args: Any, **options: Any) -> Any:
        send = super()._send_command_parse_response
        result = await send(conn, command_name, *args, **options)  # type: ignore[no-untyped-call]  # untyped upstream
        if _writes(command_name):
            await wait_for_replicas(conn, self.replicas, self.ack_timeout_ms)
        return result

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = AckedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.replicas, pipe.ack_timeout_ms = self.replicas, self.ack_timeout_ms
        return pipe


class AckedPipeline(Pipeline):
    """A pipeline or MULTI/EXEC that wrote anything ends with one WAIT (after EXEC, on its connection).
    Commands run at once while WATCHing are reads here (the session store's compaction)."""

    replicas = 0
    ack_timeout_ms = 500

    async def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: Any) -> Any:
        result = await super()._execute_transaction(connection, commands, raise_on_error)
        if any(_writes(args[0]) for args, _ in commands):
            await wait_for_replicas(connection, self.replicas, self.ack_timeout_ms)
        return result

    async def _execute_pipeline(self, connection: Any, commands: Any, raise_on_error: bool) -> Any:
        result = await super()._execute_pipeline(connection, commands, raise_on_error)
        if any(_writes(args[0]) for args, _ in commands):
            await wait_for_replicas(connection, self.replicas, self.ack_timeout_ms)
        return result


async def wait_for_replicas(conn: Any, replicas: int, timeout_ms: int) -> None:
    await conn.send_command("WAIT", replicas, timeout_ms)
    acked = int(await conn.read_response())
    if acked < replicas:
        raise NotReplicated(f"{acked} of {replicas} replicas confirmed the write within {timeout_ms} ms")


# --- errors ----------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def unavailable_on_redis_error(store: str, what: str, hint: str = "retry shortly") -> AsyncIterator[None]:
    """Redis down or timing out becomes Unavailable naming the store and the operation."""
    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("redis %s failed: %s", what, _short(exc))
        raise Unavailable(f"the {store} is unavailable ({what}); {hint}") from None


def _short(exc: BaseException) -> str:
    if isinstance(exc, MasterNotFoundError):  # its message goes on with the repr of every sentinel client
        return str(exc).split(" : ", 1)[0]
    return str(exc).rstrip(".") or type(exc).__name__


async def sentinel_problem(c: ContextSettings, timeout_s: float) -> str | None:
    """Why the sentinels name no usable master: none answers, none monitors context.redis_master, or
    they hold it down. None when they name one that is up (the fault is then the master itself)."""
    answers: list[dict[str, Any]] = []
    failures: list[str] = []

    async def ask(address: str) -> None:
        host, port = split_host_port(address)
        client = Redis(
            host=host,
            port=port,
            password=c.redis_sentinel_password or None,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        try:
            answers.append(await asyncio.wait_for(client.execute_command("SENTINEL MASTERS"), timeout_s))  # type: ignore[no-untyped-call]
        except (RedisError, OSError, TimeoutError) as exc:
            failures.append(f"{address}: {_short(exc)}")
        finally:
            await client.aclose()

    await asyncio.gather(*(ask(a) for a in c.redis_sentinels))
    if not answers:
        return f"no sentinel answered ({'; '.join(failures)})"
    sentinels = f"the sentinels ({', '.join(c.redis_sentinels)})"
    states = [a[c.redis_master] for a in answers if c.redis_master in a]
    if not states:
        known = ", ".join(sorted({name for a in answers for name in a})) or "none"
        return (
            f"{sentinels} monitor no master named {c.redis_master!r} (set context.redis_master; they monitor: {known})"
        )
    if all(s.get("is_sdown") or s.get("is_odown") for s in states):
        return f"{sentinels} hold master {c.redis_master!r} at {states[0]['ip']}:{states[0]['port']} down"
    return None
