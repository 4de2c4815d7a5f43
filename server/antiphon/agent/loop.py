"""The tool-using agent loop: ReAct (decide, act, observe, repeat) and plan-and-solve.

Decisions are generated with constrained decoding against a JSON schema made of
one branch per tool (its name as a constant, its own argument schema) plus an
"answer" branch, so the model can only name tools it has, with arguments of
the right shape; the tool validates them again before it runs. The final
answer streams like a plain chat turn.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from antiphon.agent.tooling import AgentTool, ToolCallInfo, ToolOutcome, new_call_id
from antiphon.errors import InvalidArgument
from antiphon.inference.llm import LLM, ChatMessage, GenerationStats, SamplingOptions
from antiphon.telemetry import tracing as tr
from antiphon.tools.schema import load_json

log = logging.getLogger(__name__)

DECISION_MAX_TOKENS = 200
MAX_PLAN_STEPS = 4


class AgentEvents(Protocol):
    async def text(self, delta: str) -> None: ...
    async def tool_call(self, call: ToolCallInfo) -> None: ...
    async def tool_result(self, outcome: ToolOutcome) -> None: ...


def _call_schema(tool: AgentTool) -> dict[str, Any]:
    # Closed argument objects: a small model otherwise pads a call with invented fields.
    arguments = {"additionalProperties": False, **dict(tool.input_schema)}
    return {
        "type": "object",
        "properties": {"tool": {"const": tool.name}, "arguments": arguments},
        "required": ["tool", "arguments"],
        "additionalProperties": False,
    }


_ANSWER = {
    "type": "object",
    "properties": {"tool": {"const": "answer"}},
    "required": ["tool"],
    "additionalProperties": False,
}


def decision_schema(tools: Sequence[AgentTool]) -> dict[str, Any]:
    return {"anyOf": [*(_call_schema(t) for t in tools), _ANSWER]}


def plan_schema(tools: Sequence[AgentTool]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": {"anyOf": [_call_schema(t) for t in tools]}, "maxItems": MAX_PLAN_STEPS}
        },
        "required": ["steps"],
        "additionalProperties": False,
    }


def _example_arguments(schema: Mapping[str, Any]) -> dict[str, Any]:
    props = schema.get("properties", {})
    out: dict[str, Any] = {}
    for name in schema.get("required", list(props))[:3]:
        kind = props.get(name, {}).get("type", "string")
        out[name] = {"number": 2, "integer": 2, "boolean": True, "array": [], "object": {}}.get(kind, "...")
    return out


def rank_tools(tools: Sequence[AgentTool], request: str) -> list[AgentTool]:
    """Most relevant tools first (lexical overlap with the request): small models lean on the
    first tool listed and on the worked example, which uses it."""
    words = {w.strip(".,:;?!()").lower() for w in request.split()}
    words = {w for w in words if len(w) > 2}

    def score(tool: AgentTool) -> int:
        text = f"{tool.name} {tool.description}".lower()
        return sum(1 for w in words if w in text) + (3 if tool.name.lower() in words else 0)

    return sorted(tools, key=score, reverse=True)


def tools_prompt(tools: Sequence[AgentTool], *, plan: bool) -> str:
    lines = [
        f"- {t.name}: {t.description} Arguments: {json.dumps(dict(t.input_schema.get('properties', {})))}"
        for t in tools
    ]
    example = {"tool": tools[0].name, "arguments": _example_arguments(tools[0].input_schema)}
    if plan:
        how = (
            'First plan: reply with {"steps": [...]}, each step one tool call like '
            f"{json.dumps(example)}. The steps run, then you answer from their results."
        )
    else:
        how = (
            f"To call a tool reply with one JSON object, for example {json.dumps(example)}. "
            'When you can answer without another tool, reply {"tool": "answer"}.'
        )
    return "\n\nYou can use these tools:\n" + "\n".join(lines) + "\n" + how


class AgentLoop:
    def __init__(
        self,
        llm: LLM,
        tools: Sequence[AgentTool],
        events: AgentEvents,
        options: SamplingOptions,
        stats: GenerationStats,
        *,
        may_act: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._llm = llm
        # Returns once the turn's tools may run: a turn started before the user's turn was confirmed
        # runs no tool (server or client) until it is.
        self._may_act = may_act
        self._tools = {t.name: t for t in tools}
        self._events = events
        self._options = options
        self.stats = stats
        self.tool_calls = 0

    async def run(self, messages: list[ChatMessage], *, mode: str, max_steps: int) -> None:
        tools = rank_tools(list(self._tools.values()), messages[-1].content)
        system = messages[0]
        prompt = [ChatMessage("system", system.content + tools_prompt(tools, plan=mode == "plan")), *messages[1:]]
        if mode == "plan":
            scratch = await self._plan_and_solve(prompt)
        else:
            scratch = await self._react(prompt, max_steps)
        await self.answer(scratch)

    async def _react(self, scratch: list[ChatMessage], max_steps: int) -> list[ChatMessage]:
        schema = json.dumps(decision_schema(list(self._tools.values())))
        seen: set[tuple[str, str]] = set()
        for _ in range(max_steps):
            raw = await self._complete(scratch, schema)
            decision = _parse(raw)
            name = str(decision.get("tool", "answer"))
            if name == "answer" or name not in self._tools:
                break
            arguments = json.dumps(decision.get("arguments", {}), separators=(",", ":"))
            if (name, arguments) in seen:
                break  # the same call again would return the same result: answer instead
            seen.add((name, arguments))
            outcome = await self._call(name, arguments)
            scratch = [*scratch, ChatMessage("assistant", raw), _observation(name, outcome)]
        return scratch

    async def _plan_and_solve(self, scratch: list[ChatMessage]) -> list[ChatMessage]:
        raw = await self._complete(scratch, json.dumps(plan_schema(list(self._tools.values()))))
        steps = [s for s in _parse(raw).get("steps", []) if isinstance(s, dict) and s.get("tool") in self._tools]
        # Planned steps are independent by construction: run them together, each under its own limits.
        outcomes = await asyncio.gather(
            *(self._call(str(s["tool"]), json.dumps(s.get("arguments", {}), separators=(",", ":"))) for s in steps)
        )
        observations = [_observation(str(s["tool"]), o) for s, o in zip(steps, outcomes, strict=True)]
        return [*scratch, ChatMessage("assistant", raw), *observations]

    async def _call(self, name: str, arguments_json: str) -> ToolOutcome:
        tool = self._tools[name]
        call = ToolCallInfo(new_call_id(), name, arguments_json, tool.runs_on)
        self.tool_calls += 1
        self.stats.extra["tool_calls"] = self.stats.extra.get("tool_calls", 0.0) + 1
        with tr.tracer().start_as_current_span(f"execute_tool {name}") as span:
            span.set_attribute(tr.OPERATION, "execute_tool")
            span.set_attribute("gen_ai.tool.name", name)
            span.set_attribute("gen_ai.tool.call.id", call.call_id)
            await self._events.tool_call(call)
            if self._may_act is not None:
                await self._may_act()
            outcome = await tool.call(call)
            span.set_attribute("antiphon.tool.ok", outcome.ok)
            if outcome.queue_ms or outcome.run_ms:  # the call reached the sandbox
                span.set_attribute("antiphon.tool.queue_ms", outcome.queue_ms)
                span.set_attribute("antiphon.tool.run_ms", outcome.run_ms)
        self.stats.extra["tool_fuel"] = self.stats.extra.get("tool_fuel", 0.0) + outcome.fuel_used
        await self._events.tool_result(outcome)
        return outcome

    async def _complete(self, messages: list[ChatMessage], json_schema: str) -> str:
        options = SamplingOptions(max_tokens=DECISION_MAX_TOKENS, greedy=True, json_schema=json_schema)
        stream = self._llm.chat(messages, options)
        try:
            return "".join([piece async for piece in stream])
        finally:
            await stream.aclose()
            self._add(stream.stats)

    async def answer(self, scratch: list[ChatMessage]) -> None:
        """Stream the answer (the whole turn, for an agent without tools)."""
        stream = self._llm.chat(scratch, self._options)
        try:
            async for delta in stream:
                if self.stats.first_token_s is None:
                    self.stats.first_token_s = stream.stats.first_token_s
                await self._events.text(delta)
        finally:
            await stream.aclose()
            self._add(stream.stats)
            self.stats.finish_reason = stream.stats.finish_reason

    def _add(self, stats: GenerationStats) -> None:
        add_usage(self.stats, stats)


def add_usage(into: GenerationStats, stats: GenerationStats) -> None:
    """Fold one model call's (or a sub-agent's) usage into a turn's."""
    into.input_tokens += stats.input_tokens
    into.output_tokens += stats.output_tokens
    into.model_s += stats.model_s
    into.queue_s += stats.queue_s
    for key, value in stats.extra.items():
        into.extra[key] = into.extra.get(key, 0.0) + value


def _observation(name: str, outcome: ToolOutcome) -> ChatMessage:
    return ChatMessage("user", f"Result of {name}: {outcome.for_model()}")


def _parse(raw: str) -> dict[str, Any]:
    try:
        value = load_json(raw, where="agent decision")  # bounded: a model can be coaxed into deep JSON
    except InvalidArgument:
        log.info("agent decision was not JSON (or too deep); answering directly")
        return {}
    return value if isinstance(value, dict) else {}
