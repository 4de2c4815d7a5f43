"""Two server processes, one Redis, auth.mode = "required": one rate budget, one key store, one quota."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import grpc
import pytest

from antiphon.gateway.keys import new_key
from antiphon.gateway.redis_keys import RedisKeyStore, tenant_key
from antiphon.redis_support import redis_client
from antiphon.v1 import admin_pb2, admin_pb2_grpc
from antiphon_client import AntiphonClient
from tests.eventually import eventually
from tests.integration.conftest import require_model
from tests.integration.server_process import serve
from tests.redis_server import RedisServer

TENANT_RPS = 20  # tenant requests per second; the bucket holds one second of it
REVOCATION_BOUND_S = 1.0  # the key cache's bound; pub/sub makes it milliseconds in practice


@dataclass
class Workers:
    addresses: list[str]
    redis_url: str
    prefix: str
    admin_key: str
    reader_key: str


async def _serve(redis: RedisServer, prefix: str) -> tuple[asyncio.subprocess.Process, str]:
    return await serve(
        CONTEXT_SESSIONS="redis",
        CONTEXT_REDIS_URL=redis.url,
        CONTEXT_REDIS_PREFIX=prefix,
        AUTH_MODE="required",
        LIMITS_TENANT_REQUESTS_PER_S=str(TENANT_RPS),
        LIMITS_BURST_S="1",
        TOOLS_DIR="",
    )


@pytest.fixture
async def workers(redis_server: RedisServer) -> AsyncIterator[Workers]:
    require_model()
    prefix = f"gw{uuid.uuid4().hex[:8]}"
    store = RedisKeyStore(redis_server.url, prefix=prefix, cache_ms=0)
    admin_key, admin = new_key("acme", ["admin"])
    reader_key, reader = new_key("acme", ["reader"])
    await store.add(admin)
    await store.add(reader)
    await store.aclose()
    started = [await _serve(redis_server, prefix) for _ in range(2)]
    try:
        for _, address in started:
            async with AntiphonClient(address) as client:
                await client.wait_ready(120)
        yield Workers([a for _, a in started], redis_server.url, prefix, admin_key, reader_key)
    finally:
        for proc, _ in started:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 30)


async def _burst(stubs: list[admin_pb2_grpc.AdminStub], key: str, n: int) -> tuple[int, int, float]:
    """n concurrent ListModels, alternating workers: (passed, refused, seconds it took)."""
    md = (("x-api-key", key),)

    async def one(i: int) -> grpc.StatusCode:
        try:
            await stubs[i % 2].ListModels(admin_pb2.ListModelsRequest(), metadata=md, timeout=10)
        except grpc.aio.AioRpcError as err:
            return err.code()
        return grpc.StatusCode.OK

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    codes = await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = loop.time() - t0
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    passed = codes.count(grpc.StatusCode.OK)
    return passed, n - passed, elapsed


async def _refilled(workers: Workers, tenant: str) -> None:
    """Until the tenant's request bucket holds its whole burst again: its level and time as the
    limiter's script left them, refilled up to Redis's clock now (the clock the script uses)."""
    client = redis_client(workers.redis_url)
    key = tenant_key(workers.prefix, tenant, "rl:rps")
    capacity, per_ms = TENANT_RPS * 1.0, TENANT_RPS / 1000  # limits.burst_s = 1

    async def full() -> bool:
        level, at_ms = await client.hmget(key, "v", "t")
        if level is None:
            return True  # the key expires once the bucket is full
        seconds, micros = await client.time()
        now_ms = int(seconds) * 1000 + int(micros) / 1000
        return float(level) + max(0.0, now_ms - float(at_ms)) * per_ms >= capacity

    try:
        await eventually(full, message=f"the request bucket of {tenant!r} never refilled")
    finally:
        await client.aclose()
        await client.connection_pool.aclose()


async def _code(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_one_rate_budget_key_store_and_quota_across_workers(workers: Workers) -> None:
    channels = [grpc.aio.insecure_channel(a) for a in workers.addresses]
    stubs = [admin_pb2_grpc.AdminStub(c) for c in channels]
    admin_md = (("x-api-key", workers.admin_key),)
    try:
        for stub in stubs:  # connections up, before the clock matters
            await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=admin_md)
        await _refilled(workers, "acme")

        # 1. Rate: both workers draw on one bucket of TENANT_RPS x 1 s.
        passed, refused, elapsed = await _burst(stubs, workers.reader_key, 120)
        bound = TENANT_RPS + TENANT_RPS * elapsed + 1
        print(f"rate: {passed} passed, {refused} refused in {elapsed * 1000:.0f} ms (bound {bound:.1f})")
        assert TENANT_RPS <= passed <= bound
        assert passed < 2 * TENANT_RPS  # per-worker buckets would have let 2 x TENANT_RPS through
        await _refilled(workers, "acme")  # for the admin calls below

        # 2. A quota set through one worker limits the tenant on the other.
        globex_key = (
            await stubs[0].CreateKey(admin_pb2.CreateKeyRequest(tenant="globex", roles=["reader"]), metadata=admin_md)
        ).key
        reply = await stubs[0].SetQuota(
            admin_pb2.SetQuotaRequest(tenant="globex", requests_per_second=5), metadata=admin_md
        )
        assert reply.quota.requests_per_second == 5
        passed, _, elapsed = await _burst([stubs[1], stubs[1]], globex_key, 30)
        assert 5 <= passed <= 5 + 5 * elapsed + 1

        # 3. A key revoked through one worker fails on the other from the next call on.
        created = await stubs[0].CreateKey(admin_pb2.CreateKeyRequest(roles=["admin"]), metadata=admin_md)
        md = (("x-api-key", created.key),)
        await stubs[1].ListKeys(admin_pb2.ListKeysRequest(), metadata=md)  # now cached on worker 1
        await stubs[0].RevokeKey(admin_pb2.RevokeKeyRequest(key_id=created.info.key_id), metadata=admin_md)
        loop = asyncio.get_running_loop()
        revoked_at = loop.time()
        code = grpc.StatusCode.OK

        async def turned_away() -> bool:
            nonlocal code
            code = await _code(stubs[1].ListKeys(admin_pb2.ListKeysRequest(), metadata=md))
            return bool(code != grpc.StatusCode.OK)

        # A call made after the bound must be refused.
        await eventually(
            turned_away,
            timeout_s=REVOCATION_BOUND_S,
            interval_s=0.005,
            message="the other worker still accepts a revoked key",
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        print(f"revocation: refused by the other worker after {(loop.time() - revoked_at) * 1000:.1f} ms")
    finally:
        for channel in channels:
            await channel.close()


async def test_stream_slots_are_shared_across_workers(workers: Workers) -> None:
    async with grpc.aio.insecure_channel(workers.addresses[0]) as channel:
        await admin_pb2_grpc.AdminStub(channel).SetQuota(
            admin_pb2.SetQuotaRequest(tenant="acme", max_concurrent_streams=1, requests_per_second=1000),
            metadata=(("x-api-key", workers.admin_key),),
        )
    async with (
        AntiphonClient(workers.addresses[0], api_key=workers.admin_key) as a,
        AntiphonClient(workers.addresses[1], api_key=workers.admin_key) as b,
    ):
        conv = await a.conversation()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await b.conversation()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "concurrent streams" in (err.value.details() or "")
        await conv.end()
        assert [e async for e in conv.events()] == []
        conv = await b.conversation()  # the slot was released on worker a
        await conv.end()
