"""The tools an agent may call in a turn: server (wasm) tools, client tools and sub-agents.

Each is an AgentTool with one call signature; a failure of any kind comes back
as a ToolOutcome with ok=False and a message the model reads, never as an
exception that ends the turn.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from antiphon.errors import AntiphonError, InvalidArgument
from antiphon.gateway.principal import Principal
from antiphon.tools.deadlines import timing_of
from antiphon.tools.registry import ToolRegistry
from antiphon.tools.schema import load_json

RunsOn = Literal["server", "client"]
TOOL_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_RESULT_CHARS = 4000  # what the model is shown of one tool's output


@dataclass(frozen=True, slots=True)
class ToolCallInfo:
    call_id: str
    name: str
    arguments_json: str
    runs_on: RunsOn


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    call_id: str
    ok: bool
    output_json: str = ""
    error: str = ""
    fuel_used: int = 0  # wasm fuel the call burnt (server tools), for usage metering
    # Server tools: waiting for a sandbox worker, then on it (both 0 if the call never reached the sandbox).
    queue_ms: float = 0.0
    run_ms: float = 0.0

    def for_model(self) -> str:
        text = self.output_json if self.ok else f"error: {self.error}"
        return text[:MAX_RESULT_CHARS]


class AgentTool(Protocol):
    name: str
    description: str
    input_schema: Mapping[str, Any]
    runs_on: RunsOn

    async def call(self, call: ToolCallInfo) -> ToolOutcome: ...


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:12]


@dataclass
class ServerTool:
    """A WebAssembly tool from the registry, run in the sandbox as the caller."""

    registry: ToolRegistry
    principal: Principal
    name: str
    description: str
    input_schema: Mapping[str, Any]
    runs_on: RunsOn = "server"

    async def call(self, call: ToolCallInfo) -> ToolOutcome:
        try:
            result = await self.registry.invoke(self.principal, self.name, call.arguments_json)
        except AntiphonError as exc:  # ToolError, PermissionDenied: the model reads what went wrong
            timing = timing_of(exc)
            return ToolOutcome(
                call.call_id,
                False,
                error=exc.message,
                fuel_used=getattr(exc, "fuel_used", 0),
                queue_ms=timing.queue_ms,
                run_ms=timing.run_ms,
            )
        output = json.dumps(result.output, separators=(",", ":"))
        return ToolOutcome(
            call.call_id,
            True,
            output_json=output,
            fuel_used=result.fuel_used,
            queue_ms=result.queue_ms,
            run_ms=result.run_ms,
        )


ClientCall = Callable[[ToolCallInfo], Awaitable[ToolOutcome]]


@dataclass
class ClientTool:
    """A tool the client runs: the call goes out as a tool_call event, the answer comes back on the stream."""

    name: str
    description: str
    input_schema: Mapping[str, Any]
    ask_client: ClientCall
    runs_on: RunsOn = "client"

    async def call(self, call: ToolCallInfo) -> ToolOutcome:
        return await self.ask_client(call)


SUBAGENT_SCHEMA: Mapping[str, Any] = {
    "type": "object",
    "properties": {"task": {"type": "string", "description": "what the sub-agent should do"}},
    "required": ["task"],
    "additionalProperties": False,
}


@dataclass
class SubAgentTool:
    """Another agent profile, called as a tool: it runs a whole turn of its own and returns its answer."""

    name: str
    description: str
    run_subagent: Callable[[str], Awaitable[str]]
    input_schema: Mapping[str, Any] = field(default_factory=lambda: dict(SUBAGENT_SCHEMA))
    runs_on: RunsOn = "server"

    async def call(self, call: ToolCallInfo) -> ToolOutcome:
        try:
            task = str(load_json(call.arguments_json, where="arguments").get("task", ""))
        except (InvalidArgument, AttributeError):
            return ToolOutcome(call.call_id, False, error='arguments: expected {"task": "..."}')
        try:
            answer = await self.run_subagent(task)
        except AntiphonError as exc:
            return ToolOutcome(call.call_id, False, error=exc.message)
        return ToolOutcome(call.call_id, True, output_json=json.dumps({"answer": answer}))


def parse_client_tools(raw: list[tuple[str, str, str]], taken: set[str]) -> list[tuple[str, str, dict[str, Any]]]:
    """Validate SessionConfig.client_tools: (name, description, input_schema_json) triples."""
    tools = []
    for i, (name, description, schema_json) in enumerate(raw):
        where = f"session_config.client_tools[{i}]"
        if not TOOL_NAME_RE.fullmatch(name):
            raise InvalidArgument(f"{where}.name: must match [a-z][a-z0-9_]{{0,63}}")
        if name in taken:
            raise InvalidArgument(f"{where}.name: {name!r} is already a tool of this agent")
        try:
            schema = load_json(schema_json or '{"type": "object"}', where=f"{where}.input_schema_json")
        except InvalidArgument as exc:
            raise InvalidArgument(f"{exc.message} (not valid JSON, or too large or deep)") from None
        if not isinstance(schema, dict) or schema.get("type", "object") != "object":
            raise InvalidArgument(f"{where}.input_schema_json: must be an object schema")
        taken.add(name)
        tools.append((name, description, schema))
    return tools
