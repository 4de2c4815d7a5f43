"""One agent turn: build the prompt from the session, stream the answer, record it.

The caller owns a TurnState, so after a cancellation (interrupt, client gone)
it still knows what was sent and can report it; the session history keeps the
text the user actually received.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry.trace import Span, Status, StatusCode

from antiphon.agent.profiles import AgentProfile
from antiphon.context.sessions import SessionStore, TurnRecord, TurnRole
from antiphon.gateway.principal import EMBEDDED_PRINCIPAL, Principal
from antiphon.inference.llm import LLM, ChatMessage, FinishReason, GenerationStats, SamplingOptions
from antiphon.telemetry import tracing as tr
from antiphon.telemetry.metrics import Metrics

TextSink = Callable[[str], Awaitable[None]]


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
    principal: Principal = EMBEDDED_PRINCIPAL

    @property
    def text(self) -> str:
        return "".join(self.sent)


class TurnRunner:
    def __init__(self, llm: LLM, sessions: SessionStore, metrics: Metrics, *, context_tokens: int) -> None:
        self._llm = llm
        self._sessions = sessions
        self._metrics = metrics
        self._context_tokens = context_tokens
        # History turns are re-counted every turn; tokenizing them once keeps that O(new text).
        self._turn_tokens = functools.lru_cache(maxsize=8192)(self._count_turn)

    def _count_turn(self, role: TurnRole, content: str) -> int:
        return self._llm.count_tokens([ChatMessage(role, content)]) - 1  # minus the generation prompt's share

    async def build_messages(self, state: TurnState) -> list[ChatMessage]:
        """System prompt + the most recent turns that fit the token budget + the user's text."""
        record = await self._sessions.get(state.principal.tenant, state.session_id)
        turns = record.turns if record else []
        system = ChatMessage("system", state.profile.system_prompt)
        user = ChatMessage("user", state.user_text)
        budget = self._context_tokens - state.options.max_tokens - self._llm.count_tokens([system, user])
        kept: list[ChatMessage] = []
        for turn in reversed(turns):
            message = ChatMessage(turn.role, turn.content)
            cost = self._turn_tokens(turn.role, turn.content)
            if cost > budget:
                break
            budget -= cost
            kept.append(message)
        # Never start the history with an orphan assistant reply.
        while kept and kept[-1].role == "assistant":
            kept.pop()
        state.dropped_turns = len(turns) - len(kept)
        return [system, *reversed(kept), user]

    async def run(self, state: TurnState, sink: TextSink) -> None:
        model = self._llm.description.name
        provider = f"antiphon.{self._llm.description.backend}"
        t = tr.tracer()
        with t.start_as_current_span(f"invoke_agent {state.profile.name}") as span:
            span.set_attribute(tr.OPERATION, "invoke_agent")
            span.set_attribute(tr.AGENT_NAME, state.profile.name)
            span.set_attribute(tr.CONVERSATION_ID, state.session_id)
            span.set_attribute("antiphon.turn_id", state.turn_id)
            messages = await self.build_messages(state)
            span.set_attribute("antiphon.context.dropped_turns", state.dropped_turns)
            stream = self._llm.chat(messages, state.options)
            state.stats = stream.stats
            try:
                with t.start_as_current_span(f"chat {model}") as chat:
                    _request_attributes(chat, provider, model, state.options)
                    try:
                        async for delta in stream:
                            if state.first_sent_s is None:
                                state.first_sent_s = time.perf_counter() - state.started
                            state.sent.append(delta)
                            await sink(delta)
                    finally:
                        await stream.aclose()
                        _usage_attributes(chat, stream.stats)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                await self._record(state)

    async def _record(self, state: TurnState) -> None:
        """Keep completed turns, and interrupted ones up to what was sent; a failure before
        any text leaves no trace, so the client can retry the turn."""
        reason = state.stats.finish_reason
        if reason is None or (reason is FinishReason.CANCELLED and not state.sent):
            return
        await self._sessions.append_turns(
            state.principal.tenant,
            state.session_id,
            [TurnRecord("user", state.user_text), TurnRecord("assistant", state.text)],
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
