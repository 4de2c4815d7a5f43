"""The agent loop with scripted model decisions: server tools, client tools, plans, sub-agents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from antiphon.agent.loop import AgentLoop, decision_schema
from antiphon.agent.tooling import RunsOn, ToolCallInfo, ToolOutcome
from antiphon.app import App
from antiphon.inference.llm import ChatMessage, GenerationStats, SamplingOptions
from antiphon.v1 import admin_pb2, admin_pb2_grpc, conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from tests.conftest import test_settings
from tests.eventually import eventually
from tests.fakes import FakeLLM, RecordingSink

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"


class EchoTool:
    runs_on: RunsOn = "server"

    def __init__(self, name: str = "echo", fail: bool = False, together: int = 1) -> None:
        self.name = name
        self.description = "Repeats its input."
        self.input_schema: Mapping[str, Any] = {"type": "object", "properties": {"text": {"type": "string"}}}
        self.fail = fail
        self.calls: list[str] = []
        self.running = 0
        self.peak = 0
        self.together = together  # a call returns only once this many have been running at once
        self._gathered = asyncio.Event()

    async def call(self, call: ToolCallInfo) -> ToolOutcome:
        self.calls.append(call.arguments_json)
        self.running += 1
        self.peak = max(self.peak, self.running)
        if self.running >= self.together:
            self._gathered.set()
        async with asyncio.timeout(10):  # calls made one after another fail here instead of hanging
            await self._gathered.wait()
        await asyncio.sleep(0)
        self.running -= 1
        if self.fail:
            return ToolOutcome(call.call_id, False, error="boom")
        return ToolOutcome(call.call_id, True, output_json=call.arguments_json)


def _decisions(*answers: str) -> Any:
    """Decision calls (the ones with a JSON schema) get these in order; the final answer gets "Done"."""
    queue = list(answers)

    def respond(messages: Sequence[ChatMessage], options: SamplingOptions) -> list[str] | None:
        if options.json_schema is not None:
            return [queue.pop(0) if queue else '{"tool": "answer"}']
        return ["Done", "."]

    return respond


async def _run(
    llm: FakeLLM, tools: list[Any], mode: str = "react", max_steps: int = 4
) -> tuple[AgentLoop, RecordingSink]:
    sink = RecordingSink()
    loop = AgentLoop(llm, tools, sink, SamplingOptions(max_tokens=8), GenerationStats())
    await loop.run([ChatMessage("system", "Be useful."), ChatMessage("user", "go")], mode=mode, max_steps=max_steps)
    return loop, sink


async def test_react_calls_the_tool_then_answers() -> None:
    llm = FakeLLM()
    llm.responder = _decisions('{"tool": "echo", "arguments": {"text": "hi"}}')
    tool = EchoTool()
    loop, sink = await _run(llm, [tool])
    assert [c.name for c in sink.calls] == ["echo"]
    assert sink.results[0].ok
    assert "".join(sink.texts) == "Done."
    # The tool's result is in the prompt of the final answer.
    assert any("Result of echo" in m.content for m in llm.prompts[-1])
    # The decision was constrained to the tools' schema.
    schema = json.loads(llm.options[0].json_schema or "{}")
    assert schema == decision_schema([tool])
    assert loop.stats.output_tokens > 0


async def test_tool_failure_is_fed_back_not_raised() -> None:
    llm = FakeLLM()
    llm.responder = _decisions('{"tool": "echo", "arguments": {"text": "x"}}')
    _, sink = await _run(llm, [EchoTool(fail=True)])
    assert not sink.results[0].ok
    assert any("error: boom" in m.content for m in llm.prompts[-1])
    assert "".join(sink.texts) == "Done."


async def test_step_limit_and_repeated_calls_stop_the_loop() -> None:
    llm = FakeLLM()
    llm.responder = _decisions(*[f'{{"tool": "echo", "arguments": {{"text": "{i}"}}}}' for i in range(10)])
    _, sink = await _run(llm, [EchoTool()], max_steps=3)
    assert len(sink.calls) == 3
    llm = FakeLLM()
    llm.responder = _decisions(*['{"tool": "echo", "arguments": {"text": "same"}}'] * 5)
    _, sink = await _run(llm, [EchoTool()])
    assert len(sink.calls) == 1  # the same call twice would only repeat itself


async def test_unparseable_or_unknown_decision_answers_directly() -> None:
    for raw in ("not json", '{"tool": "nope", "arguments": {}}', "[1, 2]"):
        llm = FakeLLM()
        llm.responder = _decisions(raw)
        _, sink = await _run(llm, [EchoTool()])
        assert sink.calls == []
        assert "".join(sink.texts) == "Done."


async def test_plan_runs_its_steps_in_parallel() -> None:
    llm = FakeLLM()
    plan = {"steps": [{"tool": "echo", "arguments": {"text": str(i)}} for i in range(3)]}
    llm.responder = _decisions(json.dumps(plan))
    tool = EchoTool(together=3)
    _, sink = await _run(llm, [tool], mode="plan")
    assert len(sink.calls) == 3
    assert tool.peak == 3  # all three were running at once
    assert "".join(sink.texts) == "Done."


async def test_calculator_tool_and_client_tool_over_grpc() -> None:
    """The real wasm calculator (server) and a client-side tool, through Converse."""
    llm = FakeLLM()
    decisions = [
        '{"tool": "calculator", "arguments": {"expression": "17 * 23"}}',
        '{"tool": "weather", "arguments": {"city": "Paris"}}',
    ]
    llm.responder = _decisions(*decisions)
    tools_dir = TOOLS_DIR
    app = App(test_settings(tools={"dir": str(tools_dir)}), llm=llm)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            call = conversation_pb2_grpc.ConversationStub(channel).Converse()
            weather = pb.ClientTool(
                name="weather",
                description="Current weather in a city.",
                input_schema_json=json.dumps({"type": "object", "properties": {"city": {"type": "string"}}}),
            )
            await call.write(
                pb.ClientEvent(session_config=pb.SessionConfig(agent_profile="tools", client_tools=[weather]))
            )
            assert (await call.read()).HasField("session_started")
            await call.write(pb.ClientEvent(text=pb.TextInput(content="17 times 23, and the weather in Paris?")))
            seen: list[pb.ServerEvent] = []
            while True:
                event = await call.read()
                seen.append(event)
                if event.HasField("tool_call") and event.tool_call.runs_on == pb.ToolCall.RUNS_ON_CLIENT:
                    result = pb.ToolResult(call_id=event.tool_call.call_id, output_json='{"sky": "clear"}')
                    await call.write(pb.ClientEvent(tool_result=result))
                if event.HasField("turn_end"):
                    break
            await call.done_writing()
            admin = admin_pb2_grpc.AdminStub(channel)
            usage = admin_pb2.UsageReport()

            async def metered() -> bool:  # the ledger is written in the background
                nonlocal usage
                reply: admin_pb2.UsageReport = await admin.GetUsage(admin_pb2.GetUsageRequest())
                usage = reply
                return usage.tool_calls >= 2

            await eventually(metered, message="the tool calls never reached the usage ledger")
    finally:
        await app.stop(grace_s=1)
    assert usage.tool_calls == 2  # the agent's tool calls are metered (server and client)
    assert usage.tool_fuel > 0  # and the fuel the wasm call burnt
    calls = [e.tool_call for e in seen if e.HasField("tool_call")]
    results = [e.tool_result for e in seen if e.HasField("tool_result")]
    assert [(c.name, c.runs_on) for c in calls] == [
        ("calculator", pb.ToolCall.RUNS_ON_SERVER),
        ("weather", pb.ToolCall.RUNS_ON_CLIENT),
    ]
    assert results[0].ok
    assert json.loads(results[0].output_json)["result"] == 391  # computed inside the wasm sandbox
    assert results[1].ok
    assert json.loads(results[1].output_json) == {"sky": "clear"}
    assert "".join(e.agent_text.delta for e in seen if e.HasField("agent_text")) == "Done."
    assert seen[-1].turn_end.reason == pb.TurnEnd.REASON_COMPLETED


async def test_interrupt_while_waiting_for_a_client_tool() -> None:
    llm = FakeLLM()
    llm.responder = _decisions('{"tool": "lookup", "arguments": {}}')
    app = App(test_settings(), llm=llm)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            call = conversation_pb2_grpc.ConversationStub(channel).Converse()
            lookup = pb.ClientTool(name="lookup", description="Looks something up.")
            await call.write(pb.ClientEvent(session_config=pb.SessionConfig(client_tools=[lookup])))
            await call.read()
            await call.write(pb.ClientEvent(text=pb.TextInput(content="look it up")))
            event = await call.read()
            assert event.tool_call.name == "lookup"
            await call.write(pb.ClientEvent(interrupt=pb.Interrupt()))
            interrupted = await call.read()
            assert interrupted.interrupted.heard_text == ""
            end = await call.read()
            assert end.turn_end.reason == pb.TurnEnd.REASON_INTERRUPTED
            # A late answer to the cancelled call is reported, and the stream goes on.
            await call.write(
                pb.ClientEvent(tool_result=pb.ToolResult(call_id=event.tool_call.call_id, output_json="{}"))
            )
            late = await call.read()
            assert late.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            await call.done_writing()
            assert await call.code() == grpc.StatusCode.OK
    finally:
        await app.stop(grace_s=1)


async def test_client_tool_names_are_validated() -> None:
    app = App(test_settings(), llm=FakeLLM())
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            call = conversation_pb2_grpc.ConversationStub(channel).Converse()
            bad = pb.ClientTool(name="Bad Name")
            await call.write(pb.ClientEvent(session_config=pb.SessionConfig(client_tools=[bad])))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "client_tools[0].name" in (err.value.details() or "")
    finally:
        await app.stop(grace_s=1)


def test_rank_tools_puts_the_named_tool_first() -> None:
    from antiphon.agent.loop import rank_tools

    convert, calc = EchoTool("unit_convert"), EchoTool("calculator")
    convert.description = "Converts units of length and mass."
    calc.description = "Evaluates arithmetic."
    assert [t.name for t in rank_tools([convert, calc], "Use the calculator: 2 * 3?")] == ["calculator", "unit_convert"]
    assert [t.name for t in rank_tools([calc, convert], "convert 3 km to miles, length")] == [
        "unit_convert",
        "calculator",
    ]
