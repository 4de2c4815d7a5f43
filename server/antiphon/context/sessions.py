"""Session history: the interface and the embedded in-process store.

A session holds the turns of one conversation, per tenant (tenants never share
a session namespace), and belongs to the principal that created it (``owner``,
its subject). A turn derived from restricted documents carries their ACL
(context/derived.py), as does a summary that absorbed such a turn; readers
without those labels never see them (api/context.py, context/builder.py).
Only one stream may hold a session at a time (a lease),
so two streams never interleave their turns; a lease whose worker died is taken
over (the Redis store: worker heartbeats), and the turn that was in flight there
is reported as lost, never re-run or half recorded. Writers that rewrite history
(the summariser) use the version for optimistic concurrency. The Redis store
(redis_sessions.py) implements the same interface for several workers.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from antiphon.context.derived import OPEN, Acl

TurnRole = Literal["user", "assistant"]


@dataclass(frozen=True, slots=True)
class TurnRecord:
    role: TurnRole
    content: str
    created_us: int = field(default_factory=lambda: time.time_ns() // 1000)
    # Label sets of the documents this turn was derived from (directly, or through history).
    acl: Acl = OPEN


@dataclass(slots=True)
class SessionRecord:
    session_id: str
    agent_profile: str
    turns: list[TurnRecord] = field(default_factory=list)
    # Running summary of turns that no longer fit the context window (oldest first).
    summary: str = ""
    # Incremented by every write; compare-and-set for rewrites.
    version: int = 0
    # The subject of the principal that created the session ("" in records older than owners).
    owner: str = ""
    summary_acl: Acl = OPEN

    def copy(self) -> SessionRecord:
        return SessionRecord(
            self.session_id,
            self.agent_profile,
            list(self.turns),
            self.summary,
            self.version,
            self.owner,
            self.summary_acl,
        )


@dataclass(frozen=True, slots=True)
class Lease:
    """A taken lease. ``lost_turn``: the input of the turn a dead worker was answering when it died
    (recorded neither there nor here, and not re-run): the stream tells its client."""

    lost_turn: str = ""


class VersionConflict(Exception):
    """The session changed since it was read; re-read and try again."""


class SessionStore(abc.ABC):
    @abc.abstractmethod
    async def get(self, tenant: str, session_id: str) -> SessionRecord | None: ...

    @abc.abstractmethod
    async def create(self, tenant: str, session_id: str, agent_profile: str, owner: str) -> SessionRecord:
        """Return the existing session (whoever owns it) or a new empty one owned by ``owner``."""

    @abc.abstractmethod
    async def append_turns(
        self, tenant: str, session_id: str, turns: list[TurnRecord], owner: str, lease: str = ""
    ) -> int:
        """Append turns atomically (a user turn and its answer land together); returns the new version.
        A session that expired meanwhile starts afresh, owned by ``owner``. With ``lease`` (the
        stream's lease owner) nothing is written unless that stream still holds the lease
        (FailedPrecondition): a stream whose session was taken over cannot write into it."""

    @abc.abstractmethod
    async def compact(
        self,
        tenant: str,
        session_id: str,
        summary: str,
        drop_turns: int,
        expected_version: int,
        *,
        summary_acl: Acl = OPEN,
    ) -> int:
        """Replace the oldest drop_turns turns by a summary (readable under summary_acl), if the
        session is still at expected_version (else VersionConflict); returns the new version."""

    @abc.abstractmethod
    async def delete(self, tenant: str, session_id: str) -> bool: ...

    @abc.abstractmethod
    async def acquire(
        self, tenant: str, session_id: str, owner: str, on_lost: Callable[[], None] | None = None
    ) -> Lease | None:
        """Take the session's lease; None if another live stream holds it. ``on_lost`` is called
        if the lease is later found taken over (this worker was presumed dead)."""

    @abc.abstractmethod
    async def release(self, tenant: str, session_id: str, owner: str) -> None:
        """Give the lease back, and forget the turn in flight (it ended, or its stream did)."""

    async def begin_turn(self, tenant: str, session_id: str, owner: str, user_text: str) -> None:
        """Note the turn in flight, so that a stream taking over after a crash can report it lost."""
        return

    async def end_turn(self, tenant: str, session_id: str, owner: str) -> None:
        """The turn ended (recorded or not): nothing is in flight."""
        return

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
        return None if record is None else record.copy()

    async def create(self, tenant: str, session_id: str, agent_profile: str, owner: str) -> SessionRecord:
        key = (tenant, session_id)
        async with self._lock:
            record = self._live(key)
            if record is None:
                if len(self._sessions) >= self._max_sessions:
                    self._evict_oldest()
                record = SessionRecord(session_id, agent_profile, owner=owner)
                self._sessions[key] = (record, time.monotonic())
            return record.copy()

    async def append_turns(
        self, tenant: str, session_id: str, turns: list[TurnRecord], owner: str, lease: str = ""
    ) -> int:
        # In one process a lease is never taken over: there is nothing to fence.
        async with self._lock:
            record = self._live((tenant, session_id))
            if record is None:  # expired (or deleted) while its stream was open: start afresh
                record = SessionRecord(session_id, "", owner=owner)
            record.turns.extend(turns)
            record.version += 1
            self._sessions[(tenant, session_id)] = (record, time.monotonic())
            return record.version

    async def compact(
        self,
        tenant: str,
        session_id: str,
        summary: str,
        drop_turns: int,
        expected_version: int,
        *,
        summary_acl: Acl = OPEN,
    ) -> int:
        async with self._lock:
            record = self._live((tenant, session_id))
            if record is None:
                raise KeyError(session_id)
            if record.version != expected_version:
                raise VersionConflict(f"session {session_id!r} is at version {record.version}, not {expected_version}")
            del record.turns[:drop_turns]
            record.summary = summary
            record.summary_acl = summary_acl
            record.version += 1
            return record.version

    async def delete(self, tenant: str, session_id: str) -> bool:
        async with self._lock:
            return self._sessions.pop((tenant, session_id), None) is not None

    async def acquire(
        self, tenant: str, session_id: str, owner: str, on_lost: Callable[[], None] | None = None
    ) -> Lease | None:
        holder = self._leases.setdefault((tenant, session_id), owner)
        return Lease() if holder == owner else None

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
