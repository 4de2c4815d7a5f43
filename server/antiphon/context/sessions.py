"""Session history: the interface and the embedded in-process store.

A session holds the turns of one conversation, per tenant (tenants never share
a session namespace). Only one stream may hold a session at a time (a lease),
so two streams never interleave their turns. Writers that rewrite history
(the summariser) use the version for optimistic concurrency. The Redis store
(redis_sessions.py) implements the same interface for several workers.
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
    # Running summary of turns that no longer fit the context window (oldest first).
    summary: str = ""
    # Incremented by every write; compare-and-set for rewrites.
    version: int = 0


class VersionConflict(Exception):
    """The session changed since it was read; re-read and try again."""


class SessionStore(abc.ABC):
    @abc.abstractmethod
    async def get(self, tenant: str, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    async def create(self, tenant: str, session_id: str, agent_profile: str) -> SessionRecord:
        """Return the existing session or a new empty one."""

    @abc.abstractmethod
    async def append_turns(self, tenant: str, session_id: str, turns: list[TurnRecord]) -> int:
        """Append turns atomically (a user turn and its answer land together); returns the new version."""

    @abc.abstractmethod
    async def compact(self, tenant: str, session_id: str, summary: str, drop_turns: int, expected_version: int) -> int:
        """Replace the oldest drop_turns turns by a summary, if the session is still at
        expected_version (else VersionConflict); returns the new version."""

    @abc.abstractmethod
    async def delete(self, tenant: str, session_id: str) -> bool: ...

    @abc.abstractmethod
    async def acquire(self, tenant: str, session_id: str, owner: str) -> bool:
        """Take the session's lease; False if another stream holds it."""

    @abc.abstractmethod
    async def release(self, tenant: str, session_id: str, owner: str) -> None: ...

    async def ping(self) -> None:
        """Raise Unavailable if the store cannot be reached."""
        return

    async def aclose(self) -> None:
        return None


class MemorySessionStore(SessionStore):
    """In-process store, the embedded default. Sessions idle past ttl_s expire."""

    def __init__(self, *, ttl_s: float = 24 * 3600, max_sessions: int = 100_000) -> None:
        self._sessions: dict[tuple[str, str], tuple[SessionRecord, float]] = {}
        self._leases: dict[tuple[str, str], str] = {}
        self._ttl_s = ttl_s
        self._max_sessions = max_sessions
        self._lock = asyncio.Lock()

    def _live(self, key: tuple[str, str]) -> SessionRecord | None:
        entry = self._sessions.get(key)
        if entry is None or time.monotonic() - entry[1] > self._ttl_s:
            return None
        return entry[0]

    async def get(self, tenant: str, session_id: str) -> SessionRecord | None:
        record = self._live((tenant, session_id))
        if record is None:
            return None
        return SessionRecord(
            record.session_id, record.agent_profile, list(record.turns), record.summary, record.version
        )

    async def create(self, tenant: str, session_id: str, agent_profile: str) -> SessionRecord:
        key = (tenant, session_id)
        async with self._lock:
            record = self._live(key)
            if record is None:
                if len(self._sessions) >= self._max_sessions:
                    self._evict_oldest()
                record = SessionRecord(session_id, agent_profile)
                self._sessions[key] = (record, time.monotonic())
            return SessionRecord(
                record.session_id, record.agent_profile, list(record.turns), record.summary, record.version
            )

    async def append_turns(self, tenant: str, session_id: str, turns: list[TurnRecord]) -> int:
        async with self._lock:
            record = self._live((tenant, session_id))
            if record is None:  # expired (or deleted) while its stream was open: start afresh
                record = SessionRecord(session_id, "")
            record.turns.extend(turns)
            record.version += 1
            self._sessions[(tenant, session_id)] = (record, time.monotonic())
            return record.version

    async def compact(self, tenant: str, session_id: str, summary: str, drop_turns: int, expected_version: int) -> int:
        async with self._lock:
            record = self._live((tenant, session_id))
            if record is None:
                raise KeyError(session_id)
            if record.version != expected_version:
                raise VersionConflict(f"session {session_id!r} is at version {record.version}, not {expected_version}")
            del record.turns[:drop_turns]
            record.summary = summary
            record.version += 1
            return record.version

    async def delete(self, tenant: str, session_id: str) -> bool:
        async with self._lock:
            return self._sessions.pop((tenant, session_id), None) is not None

    async def acquire(self, tenant: str, session_id: str, owner: str) -> bool:
        holder = self._leases.setdefault((tenant, session_id), owner)
        return holder == owner

    async def release(self, tenant: str, session_id: str, owner: str) -> None:
        if self._leases.get((tenant, session_id)) == owner:
            del self._leases[(tenant, session_id)]

    def _evict_oldest(self) -> None:
        oldest = min(
            (key for key in self._sessions if key not in self._leases),
            key=lambda key: self._sessions[key][1],
            default=None,
        )
        if oldest is not None:
            del self._sessions[oldest]
