"""Keep long conversations within the context window: summarise, don't drop.

After a turn, when the session's history passes a high-water mark of its token
budget, the oldest turns (all but the most recent few) are summarised by the
LLM together with the previous summary, and replaced by the new running
summary with a compare-and-set on the session's version.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from antiphon.context.builder import ContextBuilder
from antiphon.context.derived import merge
from antiphon.context.sessions import SessionStore, TurnRecord, VersionConflict
from antiphon.errors import AntiphonError
from antiphon.gateway.principal import Principal
from antiphon.inference.llm import LLM, ChatMessage, SamplingOptions

log = logging.getLogger(__name__)

SUMMARY_PROMPT = (
    "Summarise the conversation below in at most four sentences. Keep names, numbers, facts, "
    "decisions and open questions; leave out greetings."
)


@dataclass(frozen=True, slots=True)
class CompressionPolicy:
    # Compact once history takes more than this share of its budget ...
    high_water: float = 0.75
    # ... keeping this many of the most recent turns verbatim.
    keep_recent_turns: int = 4
    max_summary_tokens: int = 160


class Summariser:
    def __init__(self, llm: LLM, sessions: SessionStore, builder: ContextBuilder, policy: CompressionPolicy) -> None:
        self._llm = llm
        self._sessions = sessions
        self._builder = builder
        self._policy = policy
        self.compactions = 0

    async def maybe_compact(self, principal: Principal, session_id: str, system_prompt: str, max_tokens: int) -> bool:
        """Summarise old turns if history is over the high-water mark; True if it compacted."""
        record = await self._sessions.get(principal.tenant, session_id)
        if record is None or len(record.turns) <= self._policy.keep_recent_turns:
            return False
        budget = self._builder.history_budget(system_prompt, max_tokens) - self._policy.max_summary_tokens
        used = self._llm.count_tokens([ChatMessage(t.role, t.content) for t in record.turns])
        if used <= self._policy.high_water * budget:
            return False
        drop = len(record.turns) - self._policy.keep_recent_turns
        drop -= drop % 2  # whole exchanges: a user turn and its answer go together
        if drop <= 0:
            return False
        # The summary may repeat anything it absorbs: it is readable only by who could read all of it.
        acl = merge(record.summary_acl, *(t.acl for t in record.turns[:drop]))
        try:
            summary = await self._summarise(record.summary, record.turns[:drop])
            await self._sessions.compact(principal.tenant, session_id, summary, drop, record.version, summary_acl=acl)
        except VersionConflict:
            return False  # another writer moved on; the next turn tries again
        except AntiphonError as exc:
            log.warning("summarising the session failed; history kept as is: %s", exc.message)
            return False
        self.compactions += 1
        log.info("session compacted", extra={"dropped_turns": drop, "history_tokens": used})
        return True

    async def _summarise(self, previous: str, turns: list[TurnRecord]) -> str:
        transcript = "\n".join(f"{t.role}: {t.content}" for t in turns)
        if previous:
            transcript = f"Earlier summary: {previous}\n{transcript}"
        stream = self._llm.chat(
            [ChatMessage("system", SUMMARY_PROMPT), ChatMessage("user", transcript)],
            SamplingOptions(max_tokens=self._policy.max_summary_tokens, greedy=True),
        )
        try:
            text = "".join([piece async for piece in stream]).strip()
        finally:
            await stream.aclose()
        return text or previous
