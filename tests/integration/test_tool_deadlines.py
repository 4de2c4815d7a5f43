"""Tool wall-clock limits bound what the caller waits, queueing for a sandbox worker included.

Real wasmtime, real hostile tools from tools/hostile (built by the fixtures of
test_wasm_sandbox). The sandbox has 2 workers, so 8 calls at once must queue.

The bound: a caller may wait its limit plus ``SLACK_MS``. Within the limit a
call either runs or, if no worker came free in time, is refused; past it, only
the stop of a running call (the next epoch check, and the OS scheduling the
call's thread back: 8 spinning threads on 2 cores stop within ~35 ms here) and
the hop back to the event loop. 250 ms leaves a loaded machine room many times
over; what it catches is a call that waited in the queue and then ran its full
limit, which overshoots by a whole tool run (400 ms or more in these tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from antiphon.agent.loop import AgentLoop
from antiphon.agent.tooling import ServerTool, ToolOutcome
from antiphon.api.stream_session import _StreamSink
from antiphon.api.tools import ToolsServicer
from antiphon.gateway.context import CallContext, set_call
from antiphon.inference.llm import ChatMessage, GenerationStats, SamplingOptions
from antiphon.telemetry import tracing
from antiphon.tools import CallResult, Sandbox, ToolError, ToolRegistry
from antiphon.tools.deadlines import CallControl, CallTiming, timing_of
from antiphon.tools.sandbox import SandboxBusy
from antiphon.v1 import events_pb2 as pb
from antiphon.v1 import tools_pb2 as tpb
from antiphon.v1 import tools_pb2_grpc
from tests.eventually import eventually
from tests.fakes import FakeLLM, RecordingSink
from tests.integration.test_tools_api import principal_of
from tests.integration.test_wasm_sandbox import ALICE, cache_dir, hostile, tools_dir

__all__ = ["cache_dir", "tools_dir"]  # fixtures shared with test_wasm_sandbox

SLACK_MS = 250  # see the module docstring
# What the caller's wait may exceed queue_ms + run_ms by: the hops between the event loop and a worker.
HOP_SLACK_MS = 100
SPIN = 20_000_000_000  # fuel enough that only the wall clock stops a spinning tool
BIG_MEMORY_MIB = 256


@pytest.fixture
def sandbox(cache_dir: Path) -> Iterator[Sandbox]:
    box = Sandbox(cache_dir=cache_dir, max_workers=2)
    yield box
    box.close()


@pytest.fixture
async def registry(sandbox: Sandbox, tools_dir: Path) -> ToolRegistry:
    reg = ToolRegistry(sandbox, tools_dir=tools_dir)
    await reg.start()
    return reg


@pytest.fixture
def runs(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The tools that started running in the sandbox, by stdin (the tools below are told apart by name)."""
    started: list[str] = []
    run = sandbox.run

    def counted(tool: Any, stdin: bytes, limits: Any, **kwargs: Any) -> CallResult:
        started.append(stdin.decode())
        return run(tool, stdin, limits, **kwargs)

    monkeypatch.setattr(sandbox, "run", counted)
    return started


async def register(registry: ToolRegistry, name: str, source: str, **limits: int) -> None:
    manifest, wasm = hostile(source, **limits)
    await registry.register(ALICE, dataclasses.replace(manifest, name=name), wasm)


@dataclasses.dataclass(frozen=True)
class Waited:
    name: str
    limit_ms: int
    wait_ms: float  # what the caller waited, measured around registry.invoke
    result: CallResult | None
    error: ToolError | None

    @property
    def timing(self) -> CallTiming:
        if self.result is not None:
            return CallTiming(self.result.queue_ms, self.result.run_ms)
        assert self.error is not None
        return timing_of(self.error)


async def timed_call(registry: ToolRegistry, name: str, limit_ms: int) -> Waited:
    started = time.monotonic()
    try:
        result = await registry.invoke(ALICE, name, json.dumps({"who": name}))
    except ToolError as exc:
        return Waited(name, limit_ms, (time.monotonic() - started) * 1000, None, exc)
    return Waited(name, limit_ms, (time.monotonic() - started) * 1000, result, None)


def assert_within_limit(w: Waited) -> None:
    assert w.wait_ms <= w.limit_ms + SLACK_MS, f"{w.name}: waited {w.wait_ms:.0f} ms on a {w.limit_ms} ms limit"
    timing = w.timing
    assert timing.queue_ms >= 0
    assert timing.run_ms >= 0
    # The caller's wait contains the sandbox's measured interval, and exceeds it only by the hops.
    assert timing.queue_ms + timing.run_ms <= w.wait_ms + 0.01, (w.name, timing, w.wait_ms)
    assert w.wait_ms - (timing.queue_ms + timing.run_ms) <= HOP_SLACK_MS, (w.name, timing, w.wait_ms)


def assert_busy(w: Waited) -> None:
    """Refused without running: no worker came free within the call's limit."""
    assert isinstance(w.error, SandboxBusy), (w.name, w.error)
    assert w.error.kind == "timeout"
    assert w.error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert w.error.retryable
    assert "the tool sandbox is busy" in w.error.message
    assert w.timing.run_ms == 0
    assert w.timing.queue_ms >= w.limit_ms - 1  # refused at the deadline, not before


async def assert_healthy(registry: ToolRegistry) -> None:
    result = await registry.invoke(ALICE, "calculator", '{"expression": "6*7"}')
    assert result.output == {"result": 42}


async def start_blockers(registry: ToolRegistry, sandbox: Sandbox, count: int = 2) -> list[asyncio.Task[Waited]]:
    """Spinning calls with a long limit, running on every worker until cancelled.

    Register tools before: registering compiles on a worker too.
    """
    await register(registry, "blocker", "loop", fuel=SPIN, wall_clock_ms=30_000)
    tasks = [asyncio.create_task(timed_call(registry, "blocker", 30_000)) for _ in range(count)]
    await eventually(lambda: sandbox.active_calls == count, interval_s=0.002, message="the blockers never started")
    return tasks


async def stop(tasks: list[asyncio.Task[Waited]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# ---- eight hostile calls at once --------------------------------------------------------


async def test_eight_concurrent_hostile_tools_each_wait_at_most_their_limit(registry: ToolRegistry) -> None:
    await register(registry, "spin", "loop", fuel=SPIN, wall_clock_ms=400)
    await register(registry, "bomb", "membomb", fuel=SPIN, wall_clock_ms=1000, memory_mib=BIG_MEMORY_MIB)
    calls = [("spin", 400) if i % 2 == 0 else ("bomb", 1000) for i in range(8)]

    waited = await asyncio.gather(*(timed_call(registry, name, limit) for name, limit in calls))

    for w in waited:
        assert w.error is not None, f"{w.name} cannot succeed"
        assert_within_limit(w)
        if w.name == "spin":
            assert w.error.kind == "timeout", w.error
            assert w.wait_ms >= w.limit_ms - 1  # a spinning tool never ends early: it runs out its limit or is refused
        else:
            assert w.error.kind in ("memory_limit", "timeout"), w.error
        if isinstance(w.error, SandboxBusy):
            assert_busy(w)
    await assert_healthy(registry)


async def test_calls_queued_past_their_limit_are_refused_without_running(
    registry: ToolRegistry, sandbox: Sandbox, runs: list[str]
) -> None:
    await register(registry, "spin", "loop", fuel=SPIN, wall_clock_ms=300)
    await register(registry, "bomb", "membomb", fuel=SPIN, wall_clock_ms=500, memory_mib=BIG_MEMORY_MIB)
    blockers = await start_blockers(registry, sandbox)
    calls = [("spin", 300), ("bomb", 500)] * 3
    try:
        waited = await asyncio.gather(*(timed_call(registry, name, limit) for name, limit in calls))
        assert sandbox.active_calls == 2  # the blockers still hold both workers
    finally:
        await stop(blockers)
    for w in waited:
        assert_busy(w)
        assert_within_limit(w)
    assert runs == ['{"who":"blocker"}'] * 2  # none of the six ran
    assert sandbox.waiting_calls == 0
    await assert_healthy(registry)


async def test_a_call_that_starts_late_runs_only_what_is_left_of_its_limit(tools_dir: Path, cache_dir: Path) -> None:
    sandbox = Sandbox(cache_dir=cache_dir, max_workers=1)
    try:
        registry = ToolRegistry(sandbox)
        await register(registry, "first", "loop", fuel=SPIN, wall_clock_ms=300)
        await register(registry, "second", "loop", fuel=SPIN, wall_clock_ms=700)
        first, second = await asyncio.gather(timed_call(registry, "first", 300), timed_call(registry, "second", 700))
    finally:
        sandbox.close()
    assert_within_limit(first)
    assert_within_limit(second)
    assert second.error is not None
    assert second.error.kind == "timeout"
    assert not isinstance(second.error, SandboxBusy)
    # It waited for the first call's whole limit, then ran the rest of its own: 700 ms in all, not 300 + 700.
    assert second.timing.queue_ms >= 290
    assert second.timing.run_ms > 0
    assert "ran past its 700 ms wall-clock limit (" in second.error.message
    assert "ms of it waiting for a sandbox worker)" in second.error.message


async def test_the_callers_deadline_bounds_the_call_when_it_is_sooner(registry: ToolRegistry) -> None:
    await register(registry, "spin", "loop", fuel=SPIN, wall_clock_ms=5_000)

    async def with_rpc_deadline(seconds: float) -> Waited:
        set_call(CallContext(ALICE, "embedded", "/test", deadline=asyncio.get_running_loop().time() + seconds))
        return await timed_call(registry, "spin", 5_000)

    w = await asyncio.create_task(with_rpc_deadline(0.2))
    assert w.error is not None
    assert w.error.kind == "timeout"
    assert "the tool ran past the caller's deadline" in w.error.message
    assert w.wait_ms <= 200 + SLACK_MS
    assert w.timing.queue_ms + w.timing.run_ms <= w.wait_ms + 0.01

    late = await asyncio.create_task(with_rpc_deadline(0.0))
    assert late.error is not None
    assert late.error.kind == "timeout"
    assert "deadline passed before the tool could start" in late.error.message


async def test_cancelling_a_queued_call_returns_at_once_and_it_never_runs(
    registry: ToolRegistry, sandbox: Sandbox, runs: list[str]
) -> None:
    await register(registry, "spin", "loop", fuel=SPIN, wall_clock_ms=10_000)
    blockers = await start_blockers(registry, sandbox)
    try:
        queued = asyncio.create_task(timed_call(registry, "spin", 10_000))
        await eventually(lambda: sandbox.waiting_calls == 1, interval_s=0.002, message="the call never queued")
        cancelled_at = time.monotonic()
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        # No wait for a worker to stop it: it never had one.
        assert time.monotonic() - cancelled_at < 0.2
        assert sandbox.waiting_calls == 0
    finally:
        await stop(blockers)
    assert runs == ['{"who":"blocker"}'] * 2
    await assert_healthy(registry)


def test_timing_counts_the_queue_until_a_refusal() -> None:
    control = CallControl(budget_s=1.0)
    control.finished = control.submitted + 0.25  # refused before starting
    refused = control.timing()
    assert refused.queue_ms == pytest.approx(250)
    assert refused.run_ms == 0
    control.started, control.finished = control.submitted + 0.1, control.submitted + 0.4
    ran = control.timing()
    assert ran.queue_ms == pytest.approx(100)
    assert ran.run_ms == pytest.approx(300)
    assert control.budget_ms == pytest.approx(1000)
    assert timing_of(ValueError("not a tool call")) == CallTiming()


# ---- the timings reach InvokeTool, the agent's events and its trace --------------------------


@pytest.fixture
async def stub(registry: ToolRegistry) -> AsyncIterator[tools_pb2_grpc.ToolsStub]:
    server = grpc.aio.server()
    tools_pb2_grpc.add_ToolsServicer_to_server(ToolsServicer(registry, principal_of), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield tools_pb2_grpc.ToolsStub(channel)
    finally:
        await channel.close()
        await server.stop(grace=None)


ALICE_METADATA = (("x-tenant", "alice"), ("x-roles", "admin"))


async def test_invoke_tool_reports_queue_and_run_time(
    stub: tools_pb2_grpc.ToolsStub, registry: ToolRegistry, sandbox: Sandbox
) -> None:
    started = time.monotonic()
    ok: tpb.InvokeToolResponse = await stub.InvokeTool(
        tpb.InvokeToolRequest(name="calculator", arguments_json='{"expression": "6*7"}'), metadata=ALICE_METADATA
    )
    wait_ms = (time.monotonic() - started) * 1000
    assert json.loads(ok.output_json) == {"result": 42}
    assert ok.queue_ms >= 0
    assert ok.run_ms >= ok.duration_ms > 0  # the run, plus the schema checks around it
    assert ok.queue_ms + ok.run_ms <= wait_ms

    failed: tpb.InvokeToolResponse = await stub.InvokeTool(
        tpb.InvokeToolRequest(name="calculator", arguments_json='{"expression": "1/0"}'), metadata=ALICE_METADATA
    )
    assert failed.WhichOneof("result") == "error"
    assert failed.run_ms >= failed.duration_ms > 0

    await register(registry, "spin", "loop", fuel=SPIN, wall_clock_ms=200)
    blockers = await start_blockers(registry, sandbox)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.InvokeTool(tpb.InvokeToolRequest(name="spin", arguments_json="{}"), metadata=ALICE_METADATA)
    finally:
        await stop(blockers)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the tool sandbox is busy" in (caught.value.details() or "")


class _Session:
    """What _StreamSink needs of a stream session: the events it puts."""

    def __init__(self) -> None:
        self.client_tools: list[Any] = []
        self.events: list[dict[str, Any]] = []

    async def put(self, turn_id: str, **event: Any) -> None:
        self.events.append(event)


async def test_the_agents_tool_result_and_span_carry_queue_and_run_time(
    registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", lambda: provider.get_tracer("test"))
    info = next(t for t in registry.list(ALICE) if t.name == "calculator")
    tool = ServerTool(registry, ALICE, info.name, info.description, info.input_schema)
    llm = FakeLLM()
    decisions = ['{"tool": "calculator", "arguments": {"expression": "6*7"}}']

    def respond(messages: Any, options: SamplingOptions) -> list[str]:
        if options.json_schema is not None:
            return [decisions.pop(0) if decisions else '{"tool": "answer"}']
        return ["42"]

    llm.responder = respond
    sink = RecordingSink()
    loop = AgentLoop(llm, [tool], sink, SamplingOptions(max_tokens=8), GenerationStats())
    await loop.run([ChatMessage("system", "Be useful."), ChatMessage("user", "6*7?")], mode="react", max_steps=2)

    (outcome,) = sink.results
    assert outcome.ok
    assert outcome.queue_ms >= 0
    assert outcome.run_ms > 0
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "execute_tool calculator"]
    assert span.attributes is not None
    assert span.attributes["antiphon.tool.queue_ms"] == outcome.queue_ms
    assert span.attributes["antiphon.tool.run_ms"] == outcome.run_ms

    session = _Session()
    await _StreamSink(cast(Any, session), "turn-1").tool_result(outcome)
    event = session.events[0]["tool_result"]
    assert isinstance(event, pb.ToolCallResult)
    assert (event.queue_ms, event.run_ms) == (outcome.queue_ms, outcome.run_ms)
    failed = ToolOutcome("call_x", False, error="timeout: the tool sandbox is busy", queue_ms=400.0)
    await _StreamSink(cast(Any, session), "turn-1").tool_result(failed)
    assert (session.events[1]["tool_result"].queue_ms, session.events[1]["tool_result"].run_ms) == (400.0, 0.0)
