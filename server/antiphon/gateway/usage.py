"""Usage ledger, cost and monthly budgets.

Usage is counted per tenant per calendar month (UTC, "YYYY-MM"): LLM tokens in and
out, STT and TTS audio seconds, tool calls and fuel, texts embedded, document bytes
written. In process by default; with Redis, one hash per tenant and month
(``{prefix}:gw:{tenant}:usage:YYYY-MM``, HINCRBY/HINCRBYFLOAT) that every worker adds to.
Recording never blocks the caller: increments collect in process and a background task
writes them (at once, in one pipeline; kept and retried while Redis is down).

Budgets: when a tenant's cost this month reaches its budget (``limits.monthly_budget``
or the Admin.SetQuota override), new turns and new metered calls are refused with
RESOURCE_EXHAUSTED; a turn in progress finishes (and is billed).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import dataclasses
import datetime as dt
import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from antiphon.aio import cancel_and_wait
from antiphon.config import LimitsSettings, PricingSettings
from antiphon.errors import InvalidArgument, ResourceExhausted, Unavailable
from antiphon.gateway.context import current_credential
from antiphon.gateway.keys import KeyStore
from antiphon.gateway.limits import Limiter
from antiphon.gateway.metrics import GatewayMetrics
from antiphon.gateway.principal import Principal
from antiphon.gateway.redis_keys import redis_errors, tenant_key

log = logging.getLogger(__name__)

PERIOD_RE = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")
_USAGE_TTL_S = 400 * 24 * 3600
FLUSH_RETRY_S = 1.0


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    stt_seconds: float = 0.0
    tts_seconds: float = 0.0
    tool_calls: int = 0
    tool_fuel: int = 0
    embeddings: int = 0
    stored_bytes: int = 0

    def add(self, deltas: Mapping[str, float]) -> None:
        for name, value in deltas.items():
            setattr(self, name, getattr(self, name) + (int(value) if name in INT_FIELDS else float(value)))

    def cost(self, p: PricingSettings) -> float:
        return (
            self.input_tokens / 1e6 * p.input_tokens_per_million
            + self.output_tokens / 1e6 * p.output_tokens_per_million
            + self.stt_seconds / 60 * p.stt_per_minute
            + self.tts_seconds / 60 * p.tts_per_minute
            + self.tool_calls * p.tool_call
            + self.tool_fuel / 1e9 * p.tool_fuel_per_billion
            + self.embeddings / 1e3 * p.embeddings_per_thousand
            + self.stored_bytes / (1 << 30) * p.stored_per_gib
        )

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> Usage:
        usage = cls()
        usage.add({k: float(v) for k, v in fields.items() if k in FIELDS})
        return usage


FIELDS = tuple(f.name for f in dataclasses.fields(Usage))
INT_FIELDS = frozenset(f.name for f in dataclasses.fields(Usage) if f.type in (int, "int"))


def period_of(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return f"{now.year:04d}-{now.month:02d}"


def check_period(period: str) -> str:
    """A "YYYY-MM" period; empty means the current month."""
    if not period:
        return period_of()
    if not PERIOD_RE.fullmatch(period):
        raise InvalidArgument(f"period: {period!r} is not a month as YYYY-MM")
    return period


def seconds_to_next_period(now: dt.datetime | None = None) -> float:
    now = now or dt.datetime.now(dt.UTC)
    days = calendar.monthrange(now.year, now.month)[1]
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (start + dt.timedelta(days=days) - now).total_seconds()


class BudgetExhausted(ResourceExhausted):
    retryable = False

    def __init__(self, tenant: str, budget: float, currency: str) -> None:
        self.retry_after_s = seconds_to_next_period()
        super().__init__(
            f"tenant {tenant!r} has spent its monthly budget of {budget:g} {currency}; new turns resume next month "
            "or when an operator raises the budget (Admin.SetQuota)"
        )


# --- ledgers -----------------------------------------------------------------------------------------------------


class UsageLedger(ABC):
    def __init__(self) -> None:
        # Increments not yet written: (tenant, period) -> field -> amount.
        self._pending: dict[tuple[str, str], dict[str, float]] = {}

    def add(self, tenant: str, period: str, deltas: Mapping[str, float]) -> None:
        bucket = self._pending.setdefault((tenant, period), {})
        for name, value in deltas.items():
            if value:
                bucket[name] = bucket.get(name, 0) + value

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    @abstractmethod
    async def get(self, tenant: str, period: str) -> Usage:
        """Usage so far, including increments not yet written."""

    @abstractmethod
    async def flush(self) -> None: ...


class MemoryLedger(UsageLedger):
    """In this process (lost on restart): the embedded default."""

    def __init__(self) -> None:
        super().__init__()
        self._totals: dict[tuple[str, str], Usage] = {}

    def add(self, tenant: str, period: str, deltas: Mapping[str, float]) -> None:
        self._totals.setdefault((tenant, period), Usage()).add({k: v for k, v in deltas.items() if v})

    async def get(self, tenant: str, period: str) -> Usage:
        return dataclasses.replace(self._totals.get((tenant, period), Usage()))

    async def flush(self) -> None:
        return


class RedisLedger(UsageLedger):
    def __init__(self, client: Any, *, prefix: str = "antiphon") -> None:
        super().__init__()
        self._redis = client
        self._prefix = prefix

    def _key(self, tenant: str, period: str) -> str:
        return tenant_key(self._prefix, tenant, f"usage:{period}")

    async def get(self, tenant: str, period: str) -> Usage:
        async with redis_errors("read usage"):
            fields = await self._redis.hgetall(self._key(tenant, period))
        usage = Usage.from_fields(fields)
        usage.add(self._pending.get((tenant, period), {}))
        return usage

    async def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if not pending:
            return
        try:
            async with redis_errors("write usage"), self._redis.pipeline(transaction=False) as pipe:
                for (tenant, period), deltas in pending.items():
                    key = self._key(tenant, period)
                    for name, value in deltas.items():
                        if name in INT_FIELDS:
                            pipe.hincrby(key, name, int(value))
                        else:
                            pipe.hincrbyfloat(key, name, float(value))
                    pipe.expire(key, _USAGE_TTL_S)
                await pipe.execute()
        except BaseException:
            # Keep them for the next flush. A pipeline that failed half-way may have written some
            # increments already: at-least-once is the safe side for usage that is billed.
            for (tenant, period), deltas in pending.items():
                UsageLedger.add(self, tenant, period, deltas)
            raise


# --- metering: what the rest of the server calls ----------------------------------------------------------------


class UsageSink(Protocol):
    """What a turn runner reports to: admission before a turn, usage after it."""

    async def admit_turn(self, principal: Principal) -> None:
        """Raise ResourceExhausted when the tenant may not start a turn now (budget, LLM token rate)."""

    def record_turn(self, principal: Principal, input_tokens: int, output_tokens: int) -> None:
        """Count a finished (or cancelled) turn's tokens; never blocks, never raises."""

    def record_tools(self, principal: Principal, calls: int, fuel: int) -> None:
        """Count the tool calls an agent made in a turn (and the wasm fuel they burnt)."""


@dataclass(frozen=True, slots=True)
class UsageReport:
    tenant: str
    period: str
    usage: Usage
    cost: float
    currency: str
    budget: float
    exhausted: bool


class Metering:
    """The UsageSink of the server: ledger, budgets and the usage-based rate limits together."""

    def __init__(
        self,
        ledger: UsageLedger,
        limiter: Limiter,
        keys: KeyStore,
        *,
        limits: LimitsSettings,
        pricing: PricingSettings,
        metrics: GatewayMetrics,
        period: Callable[[], str] = period_of,
    ) -> None:
        self.ledger = ledger
        self._limiter = limiter
        self._keys = keys
        self._limits = limits
        self._pricing = pricing
        self._metrics = metrics
        self._period = period
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closing = False  # the loop's own exit: a store call may swallow its cancel

    async def start(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_loop(), name="usage:flush")

    async def aclose(self) -> None:
        if self._flusher is not None:
            self._closing = True
            await cancel_and_wait(self._flusher)
            self._flusher = None
        try:
            await self.flush()
        except Unavailable:
            log.error("usage not written at shutdown: the store is unavailable")

    async def flush(self) -> None:
        await self.ledger.flush()
        await self._limiter.flush()

    async def _flush_loop(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except Unavailable:  # kept in process; retried
                await asyncio.sleep(FLUSH_RETRY_S)
                self._wake.set()
            except Exception:  # the loop's one documented catch-all: metering must outlive a bug
                log.exception("usage flush failed")
                await asyncio.sleep(FLUSH_RETRY_S)

    def record(self, tenant: str, deltas: Mapping[str, float]) -> None:
        """Add usage to the tenant's ledger (and metrics); written in the background."""
        deltas = {k: v for k, v in deltas.items() if v}
        if not deltas:
            return
        self.ledger.add(tenant, self._period(), deltas)
        for name, value in deltas.items():
            self._metrics.usage.labels(tenant, name).inc(value)
        cost = Usage.from_fields(deltas).cost(self._pricing)
        if cost > 0:
            self._metrics.cost.labels(tenant, self._pricing.currency).inc(cost)
        self._wake.set()

    # UsageSink
    def record_turn(self, principal: Principal, input_tokens: int, output_tokens: int) -> None:
        self.record(principal.tenant, {"input_tokens": input_tokens, "output_tokens": output_tokens})
        self._limiter.debit("tpm", principal.tenant, current_credential(), input_tokens + output_tokens)

    def record_tools(self, principal: Principal, calls: int, fuel: int) -> None:
        self.record(principal.tenant, {"tool_calls": calls, "tool_fuel": fuel})

    def record_audio(self, principal: Principal, stt_seconds: float = 0.0, tts_seconds: float = 0.0) -> None:
        self.record(principal.tenant, {"stt_seconds": stt_seconds, "tts_seconds": tts_seconds})
        self._limiter.debit("aspm", principal.tenant, current_credential(), stt_seconds + tts_seconds)

    async def admit_turn(self, principal: Principal) -> None:
        await self.check_budget(principal.tenant)
        await self._limiter.check("tpm", "admit", principal.tenant, current_credential(), 0.0)

    async def admit_audio(self, principal: Principal) -> None:
        await self._limiter.check("aspm", "admit", principal.tenant, current_credential(), 0.0)

    async def budget_of(self, tenant: str) -> float:
        override = (await self._keys.quota(tenant)).monthly_budget
        return self._limits.monthly_budget if override is None else override

    async def check_budget(self, tenant: str) -> None:
        budget = await self.budget_of(tenant)
        if budget <= 0:
            return
        if self.ledger.pending:
            with contextlib.suppress(Unavailable):  # unwritten increments still count (get adds them)
                await self.ledger.flush()
        usage = await self.ledger.get(tenant, self._period())
        if usage.cost(self._pricing) >= budget:
            raise BudgetExhausted(tenant, budget, self._pricing.currency)

    async def report(self, tenant: str, period: str) -> UsageReport:
        usage = await self.ledger.get(tenant, period)
        budget = await self.budget_of(tenant)
        cost = usage.cost(self._pricing)
        exhausted = budget > 0 and period == self._period() and cost >= budget
        return UsageReport(tenant, period, usage, cost, self._pricing.currency, budget, exhausted)


# Usage that unary RPCs carry in their request and response: method -> (request, response) -> deltas.
def _invoke_tool(request: Any, response: Any) -> dict[str, float]:
    return {"tool_calls": 1, "tool_fuel": int(response.fuel_used)}


def _put_documents(request: Any, response: Any) -> dict[str, float]:
    stored = sum(len(d.text.encode()) for d in request.documents)
    return {"stored_bytes": stored, "embeddings": int(response.chunks)}


def _search(request: Any, response: Any) -> dict[str, float]:
    return {"embeddings": 1}


RESPONSE_METERS: Mapping[str, Callable[[Any, Any], dict[str, float]]] = {
    "/antiphon.v1.Tools/InvokeTool": _invoke_tool,
    "/antiphon.v1.Context/PutDocuments": _put_documents,
    "/antiphon.v1.Context/Search": _search,
}

# Calls that cost money: refused with RESOURCE_EXHAUSTED once the tenant's budget is spent.
BUDGETED_METHODS = frozenset(
    {
        "/antiphon.v1.Conversation/Converse",
        "/antiphon.v1.Conversation/Send",
        *RESPONSE_METERS,
    }
)
