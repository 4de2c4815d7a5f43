"""Prompt building within the token budget, and what the history keeps."""

from __future__ import annotations

import pytest

from antiphon.agent.profiles import AgentProfile
from antiphon.agent.turn import TurnRunner, TurnState
from antiphon.context.builder import ContextLimits
from antiphon.context.sessions import MemorySessionStore, TurnRecord
from antiphon.inference.llm import SamplingOptions
from antiphon.telemetry.metrics import Metrics
from tests.fakes import FakeLLM, RecordingSink

PROFILE = AgentProfile("assistant", "Be brief.", SamplingOptions())


async def _runner_with_history(turns: int, context_tokens: int) -> tuple[TurnRunner, MemorySessionStore]:
    store = MemorySessionStore()
    await store.create("default", "s", "assistant", "local")
    for i in range(turns):
        await store.append_turns(
            "default", "s", [TurnRecord("user", f"question {i}"), TurnRecord("assistant", f"answer {i}")], "local"
        )
    return TurnRunner(FakeLLM(), store, Metrics.create(), limits=ContextLimits(context_tokens=context_tokens)), store


async def test_history_is_trimmed_from_the_oldest_turn() -> None:
    runner, _ = await _runner_with_history(turns=20, context_tokens=60)
    state = TurnState("s", PROFILE, SamplingOptions(max_tokens=10), "now")
    messages = await runner.build_messages(state)
    assert messages[0].role == "system"
    assert messages[-1].content == "now"
    history = messages[1:-1]
    assert history
    assert history[0].role == "user"  # never an orphan assistant reply first
    assert history[-1].content == "answer 19"  # the most recent turns survive
    assert state.dropped_turns == 40 - len(history)
    assert FakeLLM().count_tokens(messages) + 10 <= 60 + 3


async def test_everything_fits_in_a_large_budget() -> None:
    runner, _ = await _runner_with_history(turns=3, context_tokens=4096)
    state = TurnState("s", PROFILE, SamplingOptions(max_tokens=10), "now")
    assert len(await runner.build_messages(state)) == 2 + 6
    assert state.dropped_turns == 0


async def test_completed_turn_is_recorded() -> None:
    runner, store = await _runner_with_history(turns=0, context_tokens=4096)
    state = TurnState("s", PROFILE, SamplingOptions(max_tokens=10), "hi")
    sink = RecordingSink()
    await runner.run(state, sink)
    sent = sink.texts
    record = await store.get("default", "s")
    assert record is not None
    assert [(t.role, t.content) for t in record.turns] == [("user", "hi"), ("assistant", "".join(sent))]


async def test_long_conversation_is_summarised_within_budget() -> None:
    store = MemorySessionStore()
    await store.create("default", "long", "assistant", "local")
    llm = FakeLLM(tokens=["word"] * 12)
    runner = TurnRunner(llm, store, Metrics.create(), limits=ContextLimits(context_tokens=160))

    sink = RecordingSink()
    for i in range(30):
        state = TurnState("long", PROFILE, SamplingOptions(max_tokens=12), f"message number {i} about topic {i}")
        messages = await runner.build_messages(state)
        assert llm.count_tokens(messages) + 12 <= 160 + 3  # always within the window
        await runner.run(state, sink)
        await runner.after_turn(state)
    record = await store.get("default", "long")
    assert record is not None
    assert runner.summariser is not None
    assert runner.summariser.compactions > 0
    assert record.summary  # older turns live on in the summary ...
    assert len(record.turns) < 60  # ... instead of piling up
    assert any(m.content.startswith("Summarise the conversation") for p in llm.prompts for m in p)
    last = await runner.build_messages(TurnState("long", PROFILE, SamplingOptions(max_tokens=12), "next"))
    assert "Summary of the conversation so far" in last[0].content


async def test_the_call_deadline_bounds_the_turn(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    import antiphon.agent.turn as turn_module
    from antiphon.errors import DeadlineExceeded

    monkeypatch.setattr(turn_module, "remaining_s", lambda: 0.1)  # as the gateway reports the call's deadline
    store = MemorySessionStore()
    await store.create("default", "late", "assistant", "local")
    llm = FakeLLM()
    llm.gate = asyncio.Event()  # the model stalls after its first token
    runner = TurnRunner(llm, store, Metrics.create(), limits=ContextLimits(context_tokens=4096))
    with pytest.raises(DeadlineExceeded, match="deadline"):
        await runner.run(TurnState("late", PROFILE, SamplingOptions(max_tokens=10), "hi"), RecordingSink())
    assert llm.closed_streams == 1  # generation was stopped, not abandoned
