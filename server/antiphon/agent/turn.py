"""One agent turn: build the prompt from the session, stream the answer, record it.

The caller owns a TurnState, so after a cancellation (interrupt, client gone)
it still knows what was sent and can report it; the session history keeps the
text the user actually received.
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from opentelemetry.trace import Span, Status, StatusCode

from antiphon.agent.loop import AgentLoop, add_usage
from antiphon.agent.profiles import AgentProfile, ProfileRegistry
from antiphon.agent.tooling import AgentTool, ClientTool, ServerTool, SubAgentTool, ToolCallInfo, ToolOutcome
from antiphon.context.builder import ContextBuilder, ContextLimits, Retriever
from antiphon.context.compression import CompressionPolicy, Summariser
from antiphon.context.derived import OPEN, Acl
from antiphon.context.sessions import SessionStore, TurnRecord
from antiphon.errors import DeadlineExceeded
from antiphon.gateway.context import remaining_s
from antiphon.gateway.principal import EMBEDDED_PRINCIPAL, Principal
from antiphon.inference.llm import LLM, ChatMessage, FinishReason, GenerationStats, SamplingOptions
from antiphon.telemetry import tracing as tr
from antiphon.telemetry.metrics import Metrics
from antiphon.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from antiphon.gateway.usage import UsageSink  # gateway: budgets and usage metering

MAX_SUBAGENT_DEPTH = 2


class TurnSink(Protocol):
    """Where a turn's events go (the stream), and how a client tool is asked."""

    @property
    def client_tools(self) -> Sequence[tuple[str, str, dict[str, Any]]]: ...

    async def text(self, delta: str) -> None: ...
    async def tool_call(self, call: ToolCallInfo) -> None: ...
    async def tool_result(self, outcome: ToolOutcome) -> None: ...
    async def ask_client(self, call: ToolCallInfo) -> ToolOutcome: ...
    async def confirmed(self) -> None:
        """Returns once the turn may act (run tools): at once, or when a speculative turn is confirmed."""
        ...


class _TurnEvents:
    """Passes events on to the stream and keeps what was sent, for the history."""

    def __init__(self, state: TurnState, sink: TurnSink) -> None:
        self._state = state
        self._sink = sink

    async def text(self, delta: str) -> None:
        if self._state.first_sent_s is None:
            self._state.first_sent_s = time.perf_counter() - self._state.started
        self._state.sent.append(delta)
        await self._sink.text(delta)

    async def tool_call(self, call: ToolCallInfo) -> None:
        await self._sink.tool_call(call)

    async def tool_result(self, outcome: ToolOutcome) -> None:
        await self._sink.tool_result(outcome)


class _Collector:
    """Events of a sub-agent: its text is its answer; its tool calls stay inside it."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    async def text(self, delta: str) -> None:
        self.parts.append(delta)

    async def tool_call(self, call: ToolCallInfo) -> None:
        return None

    async def tool_result(self, outcome: ToolOutcome) -> None:
        return None


DEFAULT_COMPRESSION = CompressionPolicy()


@dataclass(slots=True)
class TurnState:
    session_id: str
    profile: AgentProfile
    options: SamplingOptions
    user_text: str
    turn_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    started: float = field(default_factory=time.perf_counter)
    sent: list[str] = field(default_factory=list)
    stats: GenerationStats = field(default_factory=GenerationStats)
    first_sent_s: float | None = None
    dropped_turns: int = 0
    # The documents (through memories, history or summary) the answer may repeat: it carries them.
    acl: Acl = OPEN
    principal: Principal = EMBEDDED_PRINCIPAL
    tool_calls: int = 0
    # Voice: waits until the answer has been spoken (the turn lasts as long as its audio);
    # after an interruption, what the user heard, which the history keeps instead of `text`.
    until_spoken: Callable[[], Awaitable[None]] | None = None
    heard_text: str | None = None
    interrupted: bool = False
    voice: Any = None  # the stream's per-turn voice timings (antiphon.voice.timing.VoiceTiming)
    lease: str = ""  # the stream's lease owner: the turn is recorded only while it holds the session

    @property
    def text(self) -> str:
        return "".join(self.sent)

    @property
    def kept_text(self) -> str:
        """The agent's reply as the history keeps it: what was heard, when that is known."""
        return self.text if self.heard_text is None else self.heard_text


class TurnRunner:
    def __init__(
        self,
        llm: LLM,
        sessions: SessionStore,
        metrics: Metrics,
        *,
        limits: ContextLimits,
        retriever: Retriever | None = None,
        compression: CompressionPolicy | None = DEFAULT_COMPRESSION,
        tools: ToolRegistry | None = None,
        profiles: ProfileRegistry | None = None,
        usage: UsageSink | None = None,
    ) -> None:
        self._llm = llm
        self._usage = usage  # gateway: admits each turn (budget, token rate) and meters its tokens
        self._tools = tools
        self._profiles = profiles
        self._sessions = sessions
        self._metrics = metrics
        self.builder = ContextBuilder(llm, sessions, limits, retriever)
        self.summariser = Summariser(llm, sessions, self.builder, compression) if compression else None

    async def build_messages(self, state: TurnState) -> list[ChatMessage]:
        """System prompt + memories + summary + the recent turns that fit + the user's text."""
        with tr.tracer().start_as_current_span("retrieval") as span:
            built = await self.builder.build(
                state.principal,
                state.session_id,
                state.profile.system_prompt,
                state.user_text,
                state.options.max_tokens,
            )
            state.dropped_turns = built.dropped_turns
            state.acl = built.acl
            span.set_attribute("antiphon.context.withheld_turns", built.withheld_turns)
            span.set_attribute("antiphon.context.prompt_tokens", built.prompt_tokens)
            span.set_attribute("antiphon.context.history_turns", built.history_turns)
            span.set_attribute("antiphon.context.dropped_turns", built.dropped_turns)
            span.set_attribute("antiphon.context.summary_used", built.summary_used)
            span.set_attribute("antiphon.retrieval.ids", [m.id for m in built.memories])
            span.set_attribute("antiphon.retrieval.scores", [round(m.score, 4) for m in built.memories])
        return built.messages

    async def after_turn(self, state: TurnState) -> None:
        """Work that may follow a turn without delaying it: compress a long history."""
        if self.summariser is not None and state.stats.finish_reason is not None:
            await self.summariser.maybe_compact(
                state.principal, state.session_id, state.profile.system_prompt, state.options.max_tokens
            )

    async def run(self, state: TurnState, sink: TurnSink) -> None:
        """Run one turn; the call's deadline, if any, bounds everything in it (model, tools, sub-agents)."""
        try:
            async with asyncio.timeout(remaining_s()):
                await self._run(state, sink)
        except TimeoutError:
            raise DeadlineExceeded(
                "the call's deadline passed during the turn; its model and tool calls were stopped"
            ) from None

    async def _run(self, state: TurnState, sink: TurnSink) -> None:
        model = self._llm.description.name
        provider = f"antiphon.{self._llm.description.backend}"
        t = tr.tracer()
        if self._usage is not None:  # gateway: refuse a new turn over budget/limits (ResourceExhausted)
            await self._usage.admit_turn(state.principal)
        with t.start_as_current_span(f"invoke_agent {state.profile.name}") as span:
            span.set_attribute(tr.OPERATION, "invoke_agent")
            span.set_attribute(tr.AGENT_NAME, state.profile.name)
            span.set_attribute(tr.CONVERSATION_ID, state.session_id)
            span.set_attribute("antiphon.turn_id", state.turn_id)
            messages = await self.build_messages(state)
            events = _TurnEvents(state, sink)
            try:
                with t.start_as_current_span(f"chat {model}") as chat:
                    _request_attributes(chat, provider, model, state.options)
                    tools = self.agent_tools(state.profile, state.principal, sink, depth=0, stats=state.stats)
                    loop = AgentLoop(self._llm, tools, events, state.options, state.stats, may_act=sink.confirmed)
                    try:
                        if tools:
                            await loop.run(messages, mode=state.profile.mode, max_steps=state.profile.max_steps)
                        else:
                            await loop.answer(messages)
                    finally:
                        state.tool_calls = loop.tool_calls
                        _usage_attributes(chat, state.stats)
                if state.until_spoken is not None:
                    await state.until_spoken()
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                if self._usage is not None:  # gateway: meter what the turn used, even if it was cut short
                    self._usage.record_turn(state.principal, state.stats.input_tokens, state.stats.output_tokens)
                    calls, fuel = state.stats.extra.get("tool_calls", 0), state.stats.extra.get("tool_fuel", 0)
                    if calls:
                        self._usage.record_tools(state.principal, int(calls), int(fuel))
                await self._record(state)

    def agent_tools(
        self, profile: AgentProfile, principal: Principal, sink: TurnSink | None, *, depth: int, stats: GenerationStats
    ) -> list[AgentTool]:
        """The tools this profile may call in this turn: its server tools, its sub-agents, the client's tools."""
        tools: list[AgentTool] = []
        if self._tools is not None and profile.tools:
            known = {info.name: info for info in self._tools.list(principal)}
            tools += [
                ServerTool(self._tools, principal, name, known[name].description, known[name].input_schema)
                for name in profile.tools
                if name in known
            ]
        if self._profiles is not None and depth < MAX_SUBAGENT_DEPTH:
            for name in profile.subagents:
                sub = self._profiles.get(name)
                tools.append(
                    SubAgentTool(
                        f"agent_{name.replace('-', '_')}",
                        f"Ask the {name} agent to do a task; it answers in text.",
                        functools.partial(self._run_subagent, sub, principal, depth=depth + 1, usage=stats),
                    )
                )
        if sink is not None:
            tools += [ClientTool(n, d, schema, sink.ask_client) for n, d, schema in sink.client_tools]
        return tools

    async def _run_subagent(
        self, profile: AgentProfile, principal: Principal, task: str, *, depth: int, usage: GenerationStats
    ) -> str:
        """One whole turn of another profile on a task; its answer comes back as text."""
        with tr.tracer().start_as_current_span(f"invoke_agent {profile.name}") as span:
            span.set_attribute(tr.OPERATION, "invoke_agent")
            span.set_attribute(tr.AGENT_NAME, profile.name)
            collected = _Collector()
            messages = [ChatMessage("system", profile.system_prompt), ChatMessage("user", task)]
            stats = GenerationStats()
            tools = self.agent_tools(profile, principal, None, depth=depth, stats=stats)
            loop = AgentLoop(self._llm, tools, collected, profile.defaults, stats)
            try:
                if tools:
                    await loop.run(messages, mode=profile.mode, max_steps=profile.max_steps)
                else:
                    await loop.answer(messages)
            finally:
                add_usage(usage, stats)  # the caller's turn pays for its sub-agents
            return "".join(collected.parts)

    async def _record(self, state: TurnState) -> None:
        """Keep completed turns, and interrupted ones up to what was sent; a failure before
        any text leaves no trace, so the client can retry the turn."""
        reason = state.stats.finish_reason
        if reason is None or (reason is FinishReason.CANCELLED and not state.sent):
            return
        if state.interrupted and not state.kept_text:
            return  # cut off before the user heard a word: as if the turn never happened
        await self._sessions.append_turns(
            state.principal.tenant,
            state.session_id,
            [TurnRecord("user", state.user_text), TurnRecord("assistant", state.kept_text, acl=state.acl)],
            state.principal.subject,
            lease=state.lease,
        )

    def observe(self, state: TurnState, reason: str) -> None:
        """Count a finished turn in the metrics."""
        m = self._metrics
        m.turns.labels(state.profile.name, reason).inc()
        m.tokens.labels("input").inc(state.stats.input_tokens)
        m.tokens.labels("output").inc(state.stats.output_tokens)
        if state.first_sent_s is not None:
            m.time_to_first_token.observe(state.first_sent_s)
        m.turn_duration.observe(time.perf_counter() - state.started)


def _request_attributes(span: Span, provider: str, model: str, options: SamplingOptions) -> None:
    span.set_attribute(tr.OPERATION, "chat")
    span.set_attribute(tr.PROVIDER, provider)
    span.set_attribute(tr.REQUEST_MODEL, model)
    span.set_attribute(tr.REQUEST_MAX_TOKENS, options.max_tokens)
    if not options.greedy:
        span.set_attribute(tr.REQUEST_TEMPERATURE, options.temperature)
        span.set_attribute(tr.REQUEST_TOP_P, options.top_p)
    if options.seed is not None:
        span.set_attribute(tr.REQUEST_SEED, options.seed)


def _usage_attributes(span: Span, stats: GenerationStats) -> None:
    span.set_attribute(tr.USAGE_INPUT_TOKENS, stats.input_tokens)
    span.set_attribute(tr.USAGE_OUTPUT_TOKENS, stats.output_tokens)
    if stats.finish_reason is not None:
        span.set_attribute(tr.RESPONSE_FINISH_REASONS, [stats.finish_reason.value])
