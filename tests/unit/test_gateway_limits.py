"""Rate limits: bucket arithmetic on a virtual clock, trailers, stream slots, stream duration, deadlines, Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from antiphon.config import LimitsSettings
from antiphon.gateway.context import current_call, remaining_s
from antiphon.gateway.interceptor import build_gateway
from antiphon.gateway.keys import FileKeyStore, Quota
from antiphon.gateway.limits import MemoryLimiter, RateLimited, RedisLimiter
from antiphon.gateway.redis_keys import RedisKeyStore
from antiphon.redis_support import redis_client
from antiphon.v1 import admin_pb2, admin_pb2_grpc
from antiphon_client import AntiphonClient
from tests.conftest import test_settings
from tests.redis_server import RedisServer
from tests.unit.test_gateway_support import retry_delays_ms, secured_settings, start_secured, stop_secured


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _limiter(tmp_path: Path, **limits: float) -> tuple[MemoryLimiter, Clock, FileKeyStore]:
    clock = Clock()
    keys = FileKeyStore(tmp_path / "keys.json")
    return MemoryLimiter(LimitsSettings(**limits), keys, clock=clock), clock, keys  # type: ignore[arg-type]


async def test_request_bucket_bursts_then_refills(tmp_path: Path) -> None:
    limiter, clock, _ = _limiter(tmp_path, tenant_requests_per_s=10, burst_s=0.5)
    for _ in range(5):  # capacity = 10/s x 0.5 s
        await limiter.admit_request("acme", "ak:1")
    with pytest.raises(RateLimited) as err:
        await limiter.admit_request("acme", "ak:1")
    assert err.value.retry_after_s == pytest.approx(0.1)
    assert "tenant 'acme'" in err.value.message
    clock.now += 0.1
    await limiter.admit_request("acme", "ak:2")
    with pytest.raises(RateLimited):
        await limiter.admit_request("acme", "ak:2")
    await limiter.admit_request("globex", "ak:3")  # tenants are separate


async def test_key_limit_and_tenant_override(tmp_path: Path) -> None:
    limiter, clock, keys = _limiter(tmp_path, key_requests_per_s=2, burst_s=1)
    await limiter.admit_request("acme", "ak:1")
    await limiter.admit_request("acme", "ak:1")
    with pytest.raises(RateLimited) as err:
        await limiter.admit_request("acme", "ak:1")
    assert err.value.scope == "this credential"
    assert err.value.retry_after_s == pytest.approx(0.5)
    await limiter.admit_request("acme", "ak:other")
    # A tenant override (Admin.SetQuota) applies at once.
    await keys.set_quota("acme", Quota(requests_per_s=1))
    await limiter.admit_request("acme", "ak:new")
    with pytest.raises(RateLimited) as err:
        await limiter.admit_request("acme", "ak:new2")
    assert err.value.scope == "tenant 'acme'"
    clock.now += 1.0
    await limiter.admit_request("acme", "ak:new")


async def test_token_bucket_admits_while_positive_and_debits_after(tmp_path: Path) -> None:
    limiter, clock, _ = _limiter(tmp_path, tenant_llm_tokens_per_min=600)
    await limiter.check("tpm", "admit", "acme", "", 0)
    limiter.debit("tpm", "acme", "", 900)  # a turn used more than the bucket held: it goes into debt
    with pytest.raises(RateLimited) as err:
        await limiter.check("tpm", "admit", "acme", "", 0)
    assert err.value.retry_after_s == pytest.approx(30.0, abs=0.01)  # 300 tokens of debt at 10 tokens/s
    clock.now += 30.01
    await limiter.check("tpm", "admit", "acme", "", 0)


async def test_stream_slots(tmp_path: Path) -> None:
    limiter, _, keys = _limiter(tmp_path, tenant_streams=2, key_streams=1)
    await limiter.open_stream("acme", "ak:1", "s1")
    with pytest.raises(RateLimited) as err:
        await limiter.open_stream("acme", "ak:1", "s2")
    assert err.value.limit == "streams"
    await limiter.open_stream("acme", "ak:2", "s3")
    with pytest.raises(RateLimited):
        await limiter.open_stream("acme", "ak:3", "s4")  # the tenant's 2 are taken
    await limiter.close_stream("acme", "ak:1", "s1")
    await limiter.open_stream("acme", "ak:3", "s4")
    await keys.set_quota("acme", Quota(streams=0))  # 0 = unlimited
    await limiter.open_stream("acme", "", "s5")


async def test_over_the_rate_is_resource_exhausted_with_retry_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await start_secured(secured_settings(tmp_path, limits={"key_requests_per_s": 2, "burst_s": 1}))
    try:
        # The server's buckets on a virtual clock: nothing refills while the calls are made.
        clock = Clock()
        assert isinstance(s.app.gateway.limiter, MemoryLimiter)
        monkeypatch.setattr(s.app.gateway.limiter, "_clock", clock)
        stub = admin_pb2_grpc.AdminStub(s.channel)
        for _ in range(2):
            await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=s.md("reader"))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=s.md("reader"))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "requests per second" in (err.value.details() or "")
        retry_info_ms, retry_after_ms = retry_delays_ms(err.value)
        assert retry_info_ms == retry_after_ms
        assert retry_after_ms == 500  # one request at 2 per second
        # Another key of the same tenant has its own bucket.
        await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=s.md("member"))
        clock.now += retry_after_ms / 1000
        await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=s.md("reader"))
        rejected = s.app.metrics.registry.get_sample_value(
            "antiphon_gateway_rejected_total", {"tenant": "acme", "reason": "rate_limited"}
        )
        assert rejected == 1
    finally:
        await stop_secured(s)


async def test_concurrent_stream_limit_per_key(tmp_path: Path) -> None:
    s = await start_secured(secured_settings(tmp_path, limits={"key_streams": 1}))
    try:
        async with AntiphonClient(s.address, api_key=s.keys["member"]) as client:
            conv = await client.conversation()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.conversation()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "concurrent streams" in (err.value.details() or "")
            assert retry_delays_ms(err.value)[1] == 1000
            await conv.end()
            assert [e async for e in conv.events()] == []
            conv = await client.conversation()  # the slot is free again
            await conv.end()
    finally:
        await stop_secured(s)


async def test_stream_past_its_maximum_duration_ends_with_deadline_exceeded(tmp_path: Path) -> None:
    s = await start_secured(secured_settings(tmp_path, limits={"max_stream_s": 0.3, "key_streams": 1}))
    try:
        async with AntiphonClient(s.address, api_key=s.keys["member"]) as client:
            conv = await client.conversation()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in conv.events():
                    pass
            assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert "limits.max_stream_s" in (err.value.details() or "")
            conv = await client.conversation()  # its slot was released
            assert (await conv.turn("hi")).text == "Hello, world."
            await conv.end()
    finally:
        await stop_secured(s)


async def test_remaining_deadline_is_visible_to_handlers() -> None:
    """A handler sees the client's deadline through gateway.context.remaining_s()."""
    settings = test_settings()
    gateway = build_gateway(settings, CollectorRegistry())
    seen: list[tuple[float | None, str]] = []

    async def deadline(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        call = current_call()
        seen.append((remaining_s(), call.credential if call else ""))
        return b""

    handler = grpc.method_handlers_generic_handler(
        "test.Probe", {"Deadline": grpc.unary_unary_rpc_method_handler(deadline)}
    )
    server = grpc.aio.server(interceptors=[gateway.interceptor])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await gateway.start()
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            probe = channel.unary_unary("/test.Probe/Deadline")
            await probe(b"", timeout=5.0)
            await probe(b"")
    finally:
        await server.stop(0)
        await gateway.aclose()
    (with_deadline, credential), (without, _) = seen
    assert with_deadline is not None
    assert 4.0 < with_deadline <= 5.05  # gRPC rounds the timeout header up
    assert credential == "embedded"
    assert without is None
    assert remaining_s() is None  # outside a call


@pytest.fixture
async def redis_limiter(redis_server: RedisServer) -> AsyncIterator[tuple[RedisLimiter, RedisKeyStore]]:
    client = redis_client(redis_server.url)
    prefix = f"t{uuid.uuid4().hex[:8]}"  # tests share one Redis
    keys = RedisKeyStore(redis_server.url, prefix=prefix, client=client)
    await keys.start()
    limiter = RedisLimiter(
        LimitsSettings(tenant_requests_per_s=50, burst_s=1, key_streams=2), keys, client, prefix=prefix
    )
    try:
        yield limiter, keys
    finally:
        await keys.aclose()
        await client.aclose()
        await client.connection_pool.aclose()


async def test_redis_buckets_are_exact_under_concurrency(redis_limiter: tuple[RedisLimiter, RedisKeyStore]) -> None:
    limiter, keys = redis_limiter

    async def attempt(i: int) -> bool:
        try:
            await limiter.admit_request("acme", f"ak:{i % 7}")
        except RateLimited:
            return False
        return True

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    results = await asyncio.gather(*(attempt(i) for i in range(300)))
    elapsed = loop.time() - t0
    passed = sum(results)
    # 50 in the bucket, plus what refilled (50/s) while the 300 attempts ran.
    assert 50 <= passed <= 50 + 50 * elapsed + 1, (passed, elapsed)
    # An override written through the key store is read by the script itself.
    await keys.set_quota("globex", Quota(requests_per_s=3))
    ok, delays = 0, []
    for _ in range(10):
        try:
            await limiter.admit_request("globex", "")
            ok += 1
        except RateLimited as exc:
            delays.append(exc.retry_after_s)
    assert ok == 3
    assert all(0 < d <= 1 / 3 + 0.01 for d in delays)


async def test_redis_token_debt_and_stream_slots(redis_limiter: tuple[RedisLimiter, RedisKeyStore]) -> None:
    limiter, keys = redis_limiter
    await keys.set_quota("acme", Quota(llm_tokens_per_min=60))
    await limiter.check("tpm", "admit", "acme", "", 0)
    limiter.debit("tpm", "acme", "", 90)
    await limiter.flush()
    with pytest.raises(RateLimited) as err:
        await limiter.check("tpm", "admit", "acme", "", 0)
    assert 29 < err.value.retry_after_s <= 31  # 30 tokens of debt at 1 token/s
    await limiter.open_stream("acme", "ak:1", "a")
    await limiter.open_stream("acme", "ak:1", "b")
    with pytest.raises(RateLimited):
        await limiter.open_stream("acme", "ak:1", "c")
    await limiter.close_stream("acme", "ak:1", "a")
    await limiter.open_stream("acme", "ak:1", "c")


def test_limits_config_names_the_field() -> None:
    from antiphon.config import ConfigError, load_settings

    with pytest.raises(ConfigError, match=r"limits\.tenant_streams"):
        load_settings(None, {"ANTIPHON_LIMITS_TENANT_STREAMS": "-1"})
    with pytest.raises(ConfigError, match=r"limits\.burst_s"):
        load_settings(None, {"ANTIPHON_LIMITS_BURST_S": "0"})
    s = load_settings(None, {"ANTIPHON_LIMITS_TENANT_REQUESTS_PER_S": "25", "ANTIPHON_PRICING_CURRENCY": "EUR"})
    assert s.limits.tenant_requests_per_s == 25
    assert s.pricing.currency == "EUR"
