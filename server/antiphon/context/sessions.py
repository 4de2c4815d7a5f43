"""Session history: the interface and the embedded in-process store.

A session holds the turns of one conversation. Only one stream may hold a
session at a time (a lease), so two streams never interleave their turns.
The Redis store implements the same interface for several workers.
"""

from __future__ import annotations

import abc
import asyncio
import time
from dataclasses import dataclass, field
from typing import Literal

TurnRole = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class TurnRecord:
    role: TurnRole
    content: str
    created_us: int = field(default_factory=lambda: time.time_ns() // 1000)


@dataclass(slots=True)
class SessionRecord:
    session_id: str
    agent_profile: str
    turns: list[TurnRecord] = field(default_factory=list)
    summary: str = ""


class SessionStore(abc.ABC):
    @abc.abstractmethod
    async def get(self, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    async def create(self, session_id: str, agent_profile: str) -> SessionRecord:
        """Return the existing session or a new empty one."""

    @abc.abstractmethod
    async def append_turns(self, session_id: str, turns: list[TurnRecord]) -> None:
        """Append turns atomically (a user turn and its answer land together)."""

    @abc.abstractmethod
    async def delete(self, session_id: str) -> bool: ...

    @abc.abstractmethod
    async def acquire(self, session_id: str, owner: str) -> bool:
        """Take the session's lease; False if another stream holds it."""

    @abc.abstractmethod
    async def release(self, session_id: str, owner: str) -> None: ...

    async def aclose(self) -> None:
        return None


class MemorySessionStore(SessionStore):
    """In-process store, the embedded default. Sessions idle past ttl_s expire."""

    def __init__(self, *, ttl_s: float = 24 * 3600, max_sessions: int = 100_000) -> None:
        self._sessions: dict[str, tuple[SessionRecord, float]] = {}
        self._leases: dict[str, str] = {}
        self._ttl_s = ttl_s
        self._max_sessions = max_sessions
        self._lock = asyncio.Lock()

    def _expired(self, touched: float) -> bool:
        return time.monotonic() - touched > self._ttl_s

    async def get(self, session_id: str) -> SessionRecord | None:
        entry = self._sessions.get(session_id)
        if entry is None or self._expired(entry[1]):
            return None
        record = entry[0]
        return SessionRecord(record.session_id, record.agent_profile, list(record.turns), record.summary)

    async def create(self, session_id: str, agent_profile: str) -> SessionRecord:
        async with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None or self._expired(entry[1]):
                if len(self._sessions) >= self._max_sessions:
                    self._evict_oldest()
                entry = (SessionRecord(session_id, agent_profile), time.monotonic())
                self._sessions[session_id] = entry
        return await self.get(session_id) or entry[0]

    async def append_turns(self, session_id: str, turns: list[TurnRecord]) -> None:
        async with self._lock:
            entry = self._sessions.get(session_id)
            if entry is None:
                raise KeyError(session_id)
            entry[0].turns.extend(turns)
            self._sessions[session_id] = (entry[0], time.monotonic())

    async def delete(self, session_id: str) -> bool:
        async with self._lock:
            return self._sessions.pop(session_id, None) is not None

    async def acquire(self, session_id: str, owner: str) -> bool:
        holder = self._leases.setdefault(session_id, owner)
        return holder == owner

    async def release(self, session_id: str, owner: str) -> None:
        if self._leases.get(session_id) == owner:
            del self._leases[session_id]

    def _evict_oldest(self) -> None:
        oldest = min(
            (sid for sid in self._sessions if sid not in self._leases),
            key=lambda sid: self._sessions[sid][1],
            default=None,
        )
        if oldest is not None:
            del self._sessions[oldest]
