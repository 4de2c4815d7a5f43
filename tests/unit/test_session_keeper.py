"""The session store's heartbeat task stops on close even when a Redis call swallows its cancellation
(a client library that turns CancelledError into its own TimeoutError, which the keeper retries)."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import TimeoutError as RedisTimeout

from antiphon.context.redis_sessions import RedisSessionStore


class SwallowingRedis:
    """Answers every call; a call cancelled while in flight raises redis's TimeoutError instead."""

    def __init__(self) -> None:
        self.evals = 0
        self.in_flight = asyncio.Event()
        self.closed = False
        self.connection_pool = self

    async def _call(self) -> Any:
        self.in_flight.set()
        try:
            await asyncio.sleep(0.001)
        except asyncio.CancelledError:
            raise RedisTimeout("Timeout reading from socket") from None
        return [1, ""]

    async def eval(self, *_args: Any) -> Any:
        self.evals += 1
        reply = await self._call()
        return [] if self.evals > 1 else reply  # the keeper's eval reports no lost leases

    async def set(self, *_args: Any, **_kwargs: Any) -> None:
        return None

    async def delete(self, *_args: Any) -> None:
        return None

    async def aclose(self) -> None:
        self.closed = True


async def test_close_stops_the_keeper_whose_cancel_a_redis_call_swallowed() -> None:
    store = RedisSessionStore("redis://127.0.0.1:1/0", heartbeat_ms=4)  # 1 ms between heartbeats
    fake = SwallowingRedis()
    store._redis = fake
    assert await store.acquire("t", "s", "owner") is not None
    keeper = store._keeper
    assert keeper is not None
    before = fake.evals
    while fake.evals < before + 3:  # the keeper is heartbeating (bounded by the test's timeout)
        fake.in_flight.clear()
        await fake.in_flight.wait()
    await asyncio.wait_for(store.aclose(), timeout=10)
    assert keeper.done()
    assert fake.closed
