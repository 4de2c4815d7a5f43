"""Sessions on a real Redis: the store contract, restarts, outages."""

from __future__ import annotations

import gc
import signal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from antiphon.app import App
from antiphon.context.redis_sessions import RedisSessionStore
from antiphon.context.sessions import SessionStore, TurnRecord
from antiphon.errors import Unavailable
from antiphon_client import AntiphonClient
from tests.conftest import test_settings
from tests.eventually import eventually
from tests.fakes import FakeLLM
from tests.redis_server import RedisServer
from tests.session_contract import CONTRACT


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisSessionStore]:
    s = RedisSessionStore(redis_server.url, prefix=f"t{uuid.uuid4().hex[:8]}")
    try:
        yield s
    finally:
        await s.aclose()


@pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__)
async def test_redis_store_contract(store: RedisSessionStore, check: Callable[[SessionStore], Awaitable[None]]) -> None:
    await check(store)


async def test_lease_lapses_when_its_holder_dies(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    first = RedisSessionStore(redis_server.url, prefix=prefix, lease_ttl_s=0.3)
    second = RedisSessionStore(redis_server.url, prefix=prefix, lease_ttl_s=0.3)
    try:
        assert await first.acquire("t", "s", "worker-1")
        assert not await second.acquire("t", "s", "worker-2")
        await first.aclose()  # a stopped worker's leases are free once its heartbeat is gone

        async def acquired() -> bool:
            return await second.acquire("t", "s", "worker-2") is not None

        await eventually(
            acquired,
            interval_s=0.05,
            message="the dead worker's lease never lapsed",
        )
    finally:
        await second.aclose()


async def test_unreachable_redis_is_unavailable() -> None:
    from tests.redis_server import free_port

    store = RedisSessionStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    try:
        with pytest.raises(Unavailable, match="session store"):
            await store.get("t", "s")
        with pytest.raises(Unavailable):
            await store.append_turns("t", "s", [TurnRecord("user", "x")], "local")
    finally:
        await store.aclose()


def _settings(redis: RedisServer, prefix: str) -> object:
    return test_settings(context={"sessions": "redis", "redis_url": redis.url, "redis_prefix": prefix})


async def test_session_survives_a_server_restart(redis_server: RedisServer) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    for expected_history in (0, 2):
        app = App(_settings(redis_server, prefix), llm=FakeLLM())  # type: ignore[arg-type]
        await app.start()
        try:
            async with AntiphonClient(f"127.0.0.1:{app.port}") as client:
                conv = await client.conversation(session_id="kept")
                assert conv.started is not None
                assert conv.started.history_turns == expected_history
                await conv.turn("remember me")
                await conv.end()
                # The stream ends after its session's lease is released: leaving earlier cancels the
                # stream, and a stop can then cut the release short (the lease would block the rerun).
                assert [e async for e in conv.events()] == []
        finally:
            await app.stop(grace_s=1)


# redis-py drops (without closing) the sockets of connections the SIGKILL broke; they are collected
# at the end of this test rather than at a random point in a later one.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_redis_outage_mid_conversation(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path / "redis", durable=True)
    redis.start()
    fake = FakeLLM()
    app = App(_settings(redis, "outage"), llm=fake)  # type: ignore[arg-type]
    await app.start()
    try:
        async with AntiphonClient(f"127.0.0.1:{app.port}") as client:
            conv = await client.conversation(session_id="call")
            assert (await conv.turn("before")).errors == []
            redis.stop(signal.SIGKILL)  # no shutdown: what was acknowledged must already be on disk
            during = await conv.turn("during")
            assert [e.code for e in during.errors] == [grpc.StatusCode.UNAVAILABLE.value[0]]
            # Whichever Redis-backed store the turn reaches first (gateway quota or sessions) says so.
            assert "store is unavailable" in during.errors[0].message
            assert during.errors[0].retryable
            redis.start()  # same port, same data directory
            after = await conv.turn("after")
            assert after.errors == []
            await conv.end()
        # The history holds every acknowledged turn, and nothing of the failed one.
        store = RedisSessionStore(redis.url, prefix="outage")
        record = await store.get("default", "call")
        await store.aclose()
        assert record is not None
        assert [t.content for t in record.turns if t.role == "user"] == ["before", "after"]
    finally:
        await app.stop(grace_s=1)
        redis.stop()
        gc.collect()


async def test_delete_session_leaves_no_trace_in_redis(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    from antiphon.v1 import context_pb2, context_pb2_grpc

    prefix = f"t{uuid.uuid4().hex[:8]}"
    app = App(_settings(redis_server, prefix), llm=FakeLLM())  # type: ignore[arg-type]
    await app.start()
    client = aioredis.from_url(redis_server.url)
    try:
        async with AntiphonClient(f"127.0.0.1:{app.port}") as conv_client:
            conv = await conv_client.conversation(session_id="forget-me")
            await conv.turn("my card number is 4111")
            await conv.end()
            async for _ in conv.events():
                pass
        assert await client.keys(f"{prefix}:*forget-me*")  # it was there
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = context_pb2_grpc.ContextStub(channel)
            await stub.DeleteSession(context_pb2.DeleteSessionRequest(session_id="forget-me"))
        assert await client.keys(f"{prefix}:*forget-me*") == []
        values = [await client.dump(k) for k in await client.keys(f"{prefix}:*")]
        assert not any(v and b"4111" in v for v in values)  # nothing derived from it survives either
    finally:
        await client.aclose()
        await app.stop(grace_s=1)
