"""The context of one agent turn: system prompt, retrieved memories, summary and recent turns,
within the model's token budget, counted with the model's own tokenizer."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Protocol

from antiphon.context.derived import OPEN, Acl, merge, readable
from antiphon.context.sessions import SessionStore, TurnRecord, TurnRole
from antiphon.gateway.principal import Principal
from antiphon.inference.llm import LLM, ChatMessage


@dataclass(frozen=True, slots=True)
class RetrievedMemory:
    id: str
    text: str
    score: float
    labels: frozenset[str] = frozenset()  # the document's: an answer built on it carries them


class Retriever(Protocol):
    """Long-term memory search, already filtered to what the principal may read."""

    async def retrieve(
        self, principal: Principal, query: str, top_k: int, min_score: float
    ) -> list[RetrievedMemory]: ...


@dataclass(slots=True)
class BuiltContext:
    messages: list[ChatMessage]
    prompt_tokens: int = 0
    history_turns: int = 0
    dropped_turns: int = 0
    memories: list[RetrievedMemory] = field(default_factory=list)
    summary_used: bool = False
    # What the prompt was derived from (memories, history, summary): the answer inherits it.
    acl: Acl = OPEN
    # History turns and summary left out because this principal may not read them.
    withheld_turns: int = 0


@dataclass(frozen=True, slots=True)
class ContextLimits:
    context_tokens: int = 4096
    memory_top_k: int = 4
    memory_min_score: float = 0.35
    # Retrieved memories may use at most this share of the prompt budget.
    memory_budget_fraction: float = 0.25


class ContextBuilder:
    def __init__(
        self, llm: LLM, sessions: SessionStore, limits: ContextLimits, retriever: Retriever | None = None
    ) -> None:
        self._llm = llm
        self._sessions = sessions
        self._limits = limits
        self.retriever = retriever
        # History turns are re-counted every turn; tokenizing each once keeps that O(new text).
        self._turn_tokens = functools.lru_cache(maxsize=8192)(self._count_turn)

    def _count_turn(self, role: TurnRole | str, content: str) -> int:
        return self._llm.count_tokens([ChatMessage(role, content)]) - 1  # type: ignore[arg-type]  # minus the generation prompt

    def history_budget(self, system_prompt: str, max_tokens: int) -> int:
        """Tokens left for summary, memories and history once the answer and system prompt are reserved."""
        fixed = self._llm.count_tokens([ChatMessage("system", system_prompt)])
        return self._limits.context_tokens - max_tokens - fixed

    async def build(
        self, principal: Principal, session_id: str, system_prompt: str, user_text: str, max_tokens: int
    ) -> BuiltContext:
        record = await self._sessions.get(principal.tenant, session_id)
        all_turns = record.turns if record else []
        turns = visible_turns(principal, all_turns)
        summary = record.summary if record and readable(principal, record.summary_acl) else ""
        user = ChatMessage("user", user_text)
        budget = self.history_budget(system_prompt, max_tokens) - self._count_turn("user", user_text)

        memories: list[RetrievedMemory] = []
        if self.retriever is not None:
            found = await self.retriever.retrieve(
                principal, user_text, self._limits.memory_top_k, self._limits.memory_min_score
            )
            memory_budget = int(budget * self._limits.memory_budget_fraction)
            for memory in found:
                cost = self._count_turn("system", memory.text) + 2
                if cost > memory_budget:
                    continue
                memory_budget -= cost
                budget -= cost
                memories.append(memory)

        system_text = system_prompt
        if memories:
            system_text += "\n\nRelevant knowledge:\n" + "\n".join(f"- {m.text}" for m in memories)
        if summary:
            system_text += f"\n\nSummary of the conversation so far: {summary}"
            budget -= self._count_turn("system", summary) + 8

        kept: list[TurnRecord] = []
        for turn in reversed(turns):
            cost = self._turn_tokens(turn.role, turn.content)
            if cost > budget:
                break
            budget -= cost
            kept.append(turn)
        while kept and kept[-1].role == "assistant":  # never open the history with an orphan reply
            kept.pop()
        history = [ChatMessage(t.role, t.content) for t in reversed(kept)]
        messages = [ChatMessage("system", system_text), *history, user]
        acl = merge(
            [m.labels for m in memories],
            *(t.acl for t in kept),
            record.summary_acl if summary and record else OPEN,
        )
        return BuiltContext(
            messages=messages,
            # From the per-message counts already made: re-tokenizing the whole prompt each turn
            # would cost O(history) on the event loop.
            prompt_tokens=self._limits.context_tokens - max_tokens - budget,
            history_turns=len(turns),
            dropped_turns=len(turns) - len(kept),
            memories=memories,
            summary_used=bool(summary),
            acl=acl,
            withheld_turns=len(all_turns) - len(turns) + int(bool(record and record.summary and not summary)),
        )


def visible_turns(principal: Principal, turns: list[TurnRecord]) -> list[TurnRecord]:
    """The history this principal may see: an answer it may not read is left out with its question
    (the pair is one exchange; a question without its answer would invite the model to answer it)."""
    visible: list[TurnRecord] = []
    for turn in turns:
        if readable(principal, turn.acl):
            visible.append(turn)
        elif turn.role == "assistant" and visible and visible[-1].role == "user":
            visible.pop()
    return visible
