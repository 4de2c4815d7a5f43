"""A conversation that survives its worker: reconnects with the same session id when the stream
ends UNAVAILABLE (a draining worker, no worker reachable) or is reset (a worker that died), with
capped exponential backoff and jitter.

A turn that was in flight when the stream broke is never re-sent: the server's session_started
names it (``lost_turn``) when its worker died mid-turn, and `turn` raises `TurnLost`; the texts said
but not answered are in ``unanswered`` for the caller to say again if it wants to.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import grpc

from antiphon.v1 import events_pb2 as pb
from antiphon_client.result import TurnResult

log = logging.getLogger(__name__)

# What a worker that died looks like from the client: through Envoy, or on a direct channel.
_RESET_WORDS = ("rst_stream", "reset", "stream removed", "socket closed", "connection termination")


@dataclass(frozen=True)
class Reconnect:
    """How a `ResumingConversation` reconnects. The delay before attempt n (from 0) is
    ``min(max_backoff_s, initial_backoff_s * multiplier**n)``, less up to ``jitter`` of itself,
    so clients cut off together do not come back together."""

    max_attempts: int = 8
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    multiplier: float = 2.0
    jitter: float = 0.5
    # FAILED_PRECONDITION (the session is held) is retried this long after a break: a dead worker's
    # lease lasts until its heartbeat lapses (2 s). Opening a session held elsewhere fails at once.
    resume_window_s: float = 5.0

    def delay_s(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier**attempt)
        return base * (1.0 - self.jitter * rand())


class TurnLost(Exception):
    """The stream broke before this turn's answer ended. ``reported``: the resumed session named it
    as the turn its dead worker was answering (not recorded, not re-run); otherwise it had not
    started, or it ended on the old worker without its answer reaching here (GetSession tells)."""

    def __init__(self, text: str, reported: bool) -> None:
        state = "was lost with its worker and not re-run" if reported else "got no answer before the stream broke"
        super().__init__(f"the turn {text[:60]!r} {state}; say it again to have it answered")
        self.text, self.reported = text, reported


def is_reconnectable(exc: grpc.aio.AioRpcError) -> bool:
    """UNAVAILABLE, or a reset stream (INTERNAL / UNKNOWN naming a reset)."""
    code = exc.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return True
    details = (exc.details() or "").lower()
    return code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN) and any(w in details for w in _RESET_WORDS)


Opened = tuple[grpc.aio.StreamStreamCall, pb.SessionStarted]


class ResumingConversation:
    """`Conversation`'s interface (say, interrupt, end, events, turn) over streams that are
    replaced as they break. ``reconnects`` counts the replacements; ``started`` is the latest
    session_started (its ``lost_turn`` set after a worker died mid-turn)."""

    def __init__(
        self,
        open_stream: Callable[[str], Awaitable[Opened]],  # a Converse stream on this session id, started
        policy: Reconnect,
    ) -> None:
        self._open = open_stream
        self._policy = policy
        self._call: grpc.aio.StreamStreamCall | None = None
        self._lock = asyncio.Lock()
        self.session_id = ""
        self.started: pb.SessionStarted | None = None
        self.reconnects = 0
        self.resume_s: list[float] = []  # per resume: from the break seen here to the new session_started
        self.unanswered: list[str] = []  # said, no turn_end yet
        self._fresh: pb.SessionStarted | None = None  # a resumed stream's session_started, not yet read

    async def start(self) -> ResumingConversation:
        self._call, self.started = await self._open(self.session_id)
        self.session_id = self.started.session_id
        return self

    async def _resume(self, broken: grpc.aio.StreamStreamCall | None, cause: grpc.aio.AioRpcError) -> None:
        """Replace the broken stream (once, however many callers saw it break)."""
        async with self._lock:
            if self._call is not broken:
                return
            loop = asyncio.get_running_loop()
            began = loop.time()
            deadline = began + self._policy.resume_window_s
            last: grpc.aio.AioRpcError = cause
            for attempt in range(self._policy.max_attempts):
                await asyncio.sleep(self._policy.delay_s(attempt))
                try:
                    call, started = await self._open(self.session_id)
                except grpc.aio.AioRpcError as exc:
                    last = exc
                    held = exc.code() == grpc.StatusCode.FAILED_PRECONDITION and loop.time() < deadline
                    if held or is_reconnectable(exc):
                        continue
                    raise
                self._call, self.started, self._fresh = call, started, started
                self.reconnects += 1
                self.resume_s.append(loop.time() - began)
                log.info("conversation %s resumed after %s", self.session_id, cause.code().name)
                return
            raise last

    async def _write(self, event: pb.ClientEvent) -> None:
        while True:
            call = self._call
            assert call is not None, "start() first"
            try:
                await call.write(event)
                return
            except grpc.aio.AioRpcError as exc:
                if not is_reconnectable(exc):
                    raise
                await self._resume(call, exc)
            except asyncio.InvalidStateError:  # the call already ended: its reader sees why
                await self._broken(call)

    async def _broken(self, call: grpc.aio.StreamStreamCall) -> None:
        code = await call.code()
        if code == grpc.StatusCode.OK:
            raise ConnectionError("the conversation has ended")
        exc = grpc.aio.AioRpcError(
            code, await call.initial_metadata(), await call.trailing_metadata(), await call.details()
        )
        if not is_reconnectable(exc):
            raise exc
        await self._resume(call, exc)

    async def say(self, text: str) -> None:
        self.unanswered.append(text)
        await self._write(pb.ClientEvent(text=pb.TextInput(content=text)))

    async def interrupt(self) -> None:
        await self._write(pb.ClientEvent(interrupt=pb.Interrupt()))

    async def end(self) -> None:
        await self._write(pb.ClientEvent(end_of_input=pb.EndOfInput()))
        if self._call is not None:
            await self._call.done_writing()

    def cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()

    async def events(self) -> AsyncIterator[pb.ServerEvent]:
        """The events of every stream in order; after a resume, the new session_started first."""
        while True:
            if self._fresh is not None:
                fresh, self._fresh = self._fresh, None
                yield pb.ServerEvent(session_started=fresh)
            call = self._call
            assert call is not None, "start() first"
            try:
                event = await call.read()
            except grpc.aio.AioRpcError as exc:
                if not is_reconnectable(exc):
                    raise
                await self._resume(call, exc)
                continue
            if event is grpc.aio.EOF:
                return
            if event.WhichOneof("event") == "turn_end" and self.unanswered:
                self.unanswered.pop(0)
            yield event

    async def turn(self, text: str) -> TurnResult:
        """Say something and collect its answer; `TurnLost` if the stream broke before its turn_end."""
        await self.say(text)
        sent_on = self.reconnects  # a resume before or while sending carried the text to the new stream
        result = TurnResult()
        parts: list[str] = []
        async for event in self.events():
            kind = event.WhichOneof("event")
            if kind == "session_started" and self.reconnects == sent_on:
                continue
            if kind == "session_started":  # resumed after the text was sent: its answer will not come
                lost = event.session_started.lost_turn  # the server keeps its first 2000 characters
                self.unanswered.clear()
                raise TurnLost(text, reported=bool(lost) and text.startswith(lost))
            if kind == "agent_text":
                parts.append(event.agent_text.delta)
            elif kind == "error":
                result.errors.append(event.error)
            elif kind == "turn_end":
                result.turn_id, result.turn_end = event.turn_id, event.turn_end
                break
        result.text = "".join(parts)
        return result

    async def __aenter__(self) -> ResumingConversation:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.end()
        else:
            self.cancel()
