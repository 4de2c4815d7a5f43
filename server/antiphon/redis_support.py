"""One way to reach Redis: a bounded, blocking connection pool, and Redis failures as UNAVAILABLE."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from antiphon.errors import Unavailable

log = logging.getLogger(__name__)


def redis_client(url: str, *, max_connections: int = 64, timeout_s: float = 2.0, decode_responses: bool = True) -> Any:
    """A client on a BlockingConnectionPool: past max_connections callers wait instead of failing
    (the default pool raises MaxConnectionsError past its limit). Close it with `close_redis`."""
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError

    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        decode_responses=decode_responses,
        # One immediate retry on a broken connection. It must be set on the pool: a client given a
        # pool ignores its own retry settings. After Redis restarts, pooled connections to the old
        # process fail once ("Connection closed by server") and a fresh connection succeeds.
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[RedisConnectionError],
    )
    return aioredis.Redis(connection_pool=pool)


async def close_redis(client: Any) -> None:
    await client.aclose()
    await client.connection_pool.aclose()  # a pool passed in is not closed by the client


@contextlib.asynccontextmanager
async def unavailable_on_redis_error(store: str, what: str, hint: str = "retry shortly") -> AsyncIterator[None]:
    """Redis down or timing out becomes Unavailable naming the store and the operation."""
    from redis.exceptions import RedisError

    try:
        yield
    except (RedisError, OSError) as exc:
        log.warning("redis %s failed: %s", what, exc)
        raise Unavailable(f"the {store} is unavailable ({what}); {hint}") from None
