"""Usage, cost and budgets: a budget spent mid-session (FakeLLM), metered RPCs, the ledgers."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry

from antiphon.app import App
from antiphon.config import LimitsSettings, PricingSettings
from antiphon.context.documents import DocumentService
from antiphon.context.memory import MemoryStore
from antiphon.errors import InvalidArgument, Unavailable
from antiphon.gateway.limits import RedisLimiter
from antiphon.gateway.metrics import GatewayMetrics
from antiphon.gateway.principal import Principal
from antiphon.gateway.redis_keys import RedisKeyStore
from antiphon.gateway.usage import (
    BudgetExhausted,
    Metering,
    RedisLedger,
    Usage,
    check_period,
    period_of,
    seconds_to_next_period,
)
from antiphon.redis_support import redis_client
from antiphon.v1 import admin_pb2, admin_pb2_grpc, context_pb2, context_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from antiphon_client import AntiphonClient
from tests.conftest import test_settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.redis_server import RedisServer
from tests.unit.test_gateway_support import retry_delays_ms

# One currency unit per token, so costs are token counts.
PER_TOKEN: dict[str, object] = {"input_tokens_per_million": 1_000_000, "output_tokens_per_million": 1_000_000}
RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


@pytest.fixture
async def budget_app(fake_llm: FakeLLM, tmp_path: Path) -> AsyncIterator[App]:
    settings = test_settings(
        limits={"monthly_budget": 10}, pricing=PER_TOKEN, auth={"keys_file": str(tmp_path / "keys.json")}
    )
    app = App(settings, llm=fake_llm, documents=DocumentService(MemoryStore(), FakeEmbedder()))
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=1)


async def test_budget_spent_mid_session_refuses_the_next_turn(budget_app: App) -> None:
    """The turn that spends the budget finishes; the next turn of the same stream gets an error event
    RESOURCE_EXHAUSTED (and turn_end REASON_ERROR), the stream stays open; a new stream is refused
    with the status RESOURCE_EXHAUSTED and a RetryInfo (the start of next month)."""
    address = f"127.0.0.1:{budget_app.port}"
    async with AntiphonClient(address) as client:
        conv = await client.conversation()
        first = await conv.turn("hi")
        assert first.text == "Hello, world."
        assert first.turn_end is not None
        assert first.turn_end.reason == pb.TurnEnd.REASON_COMPLETED
        spent = first.turn_end.usage.input_tokens + first.turn_end.usage.output_tokens
        assert spent > 10
        second = await conv.turn("again")
        assert second.text == ""
        assert [e.code for e in second.errors] == [RESOURCE_EXHAUSTED]
        assert "monthly budget of 10 USD" in second.errors[0].message
        assert second.errors[0].retryable is False
        assert second.turn_end is not None
        assert second.turn_end.reason == pb.TurnEnd.REASON_ERROR
        await conv.end()
        assert [e async for e in conv.events()] == []

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.conversation()
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        delay_ms, _ = retry_delays_ms(err.value)
        assert abs(delay_ms / 1000 - seconds_to_next_period()) < 5

    channel = grpc.aio.insecure_channel(address)
    admin = admin_pb2_grpc.AdminStub(channel)
    report = await admin.GetUsage(admin_pb2.GetUsageRequest())
    assert (report.tenant, report.period) == ("default", period_of())
    assert report.input_tokens + report.output_tokens == spent
    assert report.cost == pytest.approx(spent)
    assert (report.monthly_budget, report.budget_exhausted, report.currency) == (10, True, "USD")
    # An operator raises the budget: turns resume.
    reply = await admin.SetQuota(admin_pb2.SetQuotaRequest(tenant="default", monthly_budget=1000))
    assert reply.quota.monthly_budget == 1000
    async with AntiphonClient(address) as client:
        events = [e async for e in client.send("back")]
        assert events[-1].turn_end.reason == pb.TurnEnd.REASON_COMPLETED
    await channel.close()


async def test_a_turn_in_progress_finishes_when_the_budget_runs_out(budget_app: App, fake_llm: FakeLLM) -> None:
    address = f"127.0.0.1:{budget_app.port}"
    channel = grpc.aio.insecure_channel(address)
    admin = admin_pb2_grpc.AdminStub(channel)
    await admin.SetQuota(admin_pb2.SetQuotaRequest(tenant="default", monthly_budget=1000))
    fake_llm.gate = asyncio.Event()
    async with AntiphonClient(address) as client:
        conv = await client.conversation()
        await conv.say("tell me a story")
        events = conv.events()
        assert (await anext(events)).agent_text.delta == "Hello"
        # The budget drops below what is already spent while the turn runs.
        await admin.SetQuota(admin_pb2.SetQuotaRequest(tenant="default", monthly_budget=0.5))
        fake_llm.gate.set()
        rest = [await anext(events) for _ in range(4)]
        assert "".join(e.agent_text.delta for e in rest[:3]) == ", world."
        assert rest[3].turn_end.reason == pb.TurnEnd.REASON_COMPLETED
        refused = await conv.turn("more")
        assert [e.code for e in refused.errors] == [RESOURCE_EXHAUSTED]
        await conv.end()
    fake_llm.gate = None
    await channel.close()


async def test_metered_rpcs_and_prometheus_counters(budget_app: App) -> None:
    address = f"127.0.0.1:{budget_app.port}"
    async with grpc.aio.insecure_channel(address) as channel:
        ctx = context_pb2_grpc.ContextStub(channel)
        text = "Antiphon meters what it stores. " * 10
        put = await ctx.PutDocuments(
            context_pb2.PutDocumentsRequest(documents=[context_pb2.Document(id="d1", text=text, acl_labels=["public"])])
        )
        await ctx.Search(context_pb2.SearchRequest(query="meters", top_k=1))
        report = await admin_pb2_grpc.AdminStub(channel).GetUsage(admin_pb2.GetUsageRequest())
    assert report.stored_bytes == len(text.encode())
    assert report.embeddings == put.chunks + 1
    registry = budget_app.metrics.registry
    assert registry.get_sample_value("antiphon_usage_total", {"tenant": "default", "kind": "embeddings"}) == (
        put.chunks + 1
    )
    assert registry.get_sample_value("antiphon_gateway_requests_total", {"tenant": "default"}) == 3


async def test_get_usage_names_bad_fields(budget_app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{budget_app.port}") as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        for request, field in (
            (admin_pb2.GetUsageRequest(period="2024-13"), "period"),
            (admin_pb2.GetUsageRequest(tenant="a b"), "tenant"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.GetUsage(request)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith(f"{field}:")
        for quota, field in (
            (admin_pb2.SetQuotaRequest(), "tenant"),
            (admin_pb2.SetQuotaRequest(tenant="acme", monthly_budget=-1), "monthly_budget"),
            (admin_pb2.SetQuotaRequest(tenant="acme", monthly_budget=float("inf")), "monthly_budget"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await admin.SetQuota(quota)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert (err.value.details() or "").startswith(f"{field}:")
        old = await admin.GetUsage(admin_pb2.GetUsageRequest(period="2020-01"))
        assert (old.period, old.cost, old.budget_exhausted) == ("2020-01", 0, False)
        # Overrides merge; reset returns to the configured limits.
        await admin.SetQuota(admin_pb2.SetQuotaRequest(tenant="acme", requests_per_second=7))
        merged = await admin.SetQuota(admin_pb2.SetQuotaRequest(tenant="acme", max_concurrent_streams=3))
        assert (merged.quota.requests_per_second, merged.quota.max_concurrent_streams) == (7, 3)
        reset = await admin.SetQuota(admin_pb2.SetQuotaRequest(tenant="acme", reset=True))
        assert (reset.quota.requests_per_second, reset.quota.monthly_budget) == (0, 10)


def test_cost_and_periods() -> None:
    p = PricingSettings()
    u = Usage(input_tokens=2_000_000, output_tokens=1_000_000, stt_seconds=120, tool_calls=10, stored_bytes=1 << 30)
    expected = 2 * p.input_tokens_per_million + p.output_tokens_per_million + 2 * p.stt_per_minute
    expected += 10 * p.tool_call + p.stored_per_gib
    assert u.cost(p) == pytest.approx(expected)
    assert period_of(dt.datetime(2025, 3, 31, 23, 59, tzinfo=dt.UTC)) == "2025-03"
    assert seconds_to_next_period(dt.datetime(2025, 12, 31, 23, 59, tzinfo=dt.UTC)) == 60
    assert check_period("") == period_of()
    with pytest.raises(InvalidArgument, match="period"):
        check_period("2025-1")


@pytest.fixture
async def redis_metering(redis_server: RedisServer) -> AsyncIterator[tuple[Metering, RedisLedger, RedisKeyStore]]:
    client = redis_client(redis_server.url)
    prefix = f"u{uuid.uuid4().hex[:8]}"  # tests share one Redis
    keys = RedisKeyStore(redis_server.url, prefix=prefix, client=client)
    ledger = RedisLedger(client, prefix=prefix)
    limiter = RedisLimiter(LimitsSettings(), keys, client, prefix=prefix)
    metering = Metering(
        ledger,
        limiter,
        keys,
        limits=LimitsSettings(monthly_budget=5),
        pricing=PricingSettings(**PER_TOKEN),  # type: ignore[arg-type]
        metrics=GatewayMetrics.create(CollectorRegistry()),
    )
    await keys.start()
    await metering.start()
    try:
        yield metering, ledger, keys
    finally:
        await metering.aclose()
        await keys.aclose()
        await client.aclose()
        await client.connection_pool.aclose()


async def test_redis_ledger_shared_budget(redis_metering: tuple[Metering, RedisLedger, RedisKeyStore]) -> None:
    metering, ledger, _ = redis_metering
    acme = Principal("acme", "a", frozenset({"member"}), frozenset({"public"}))
    await metering.admit_turn(acme)
    metering.record_turn(acme, 3, 1)
    metering.record(acme.tenant, {"tool_calls": 2, "tool_fuel": 1000, "stt_seconds": 1.5})
    # Another worker's ledger on the same Redis sees it once written.
    await metering.flush()
    other = RedisLedger(ledger._redis, prefix=ledger._prefix)
    usage = await other.get("acme", period_of())
    assert (usage.input_tokens, usage.output_tokens, usage.tool_calls, usage.tool_fuel) == (3, 1, 2, 1000)
    assert usage.stt_seconds == pytest.approx(1.5)
    metering.record_turn(acme, 1, 0)  # cost 5 = budget: the next turn is refused
    with pytest.raises(BudgetExhausted):
        await metering.admit_turn(acme)


async def test_redis_ledger_keeps_usage_while_redis_is_down() -> None:
    client = redis_client("redis://127.0.0.1:1/0", timeout_s=0.2)
    ledger = RedisLedger(client, prefix="u")
    ledger.add("acme", "2025-01", {"input_tokens": 5})
    with pytest.raises(Unavailable):
        await ledger.flush()
    assert ledger.pending
    with pytest.raises(Unavailable):
        await ledger.get("acme", "2025-01")
    await client.aclose()
    await client.connection_pool.aclose()
