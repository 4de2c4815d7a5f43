"""Async client SDK: one-shot turns (Send) and long-lived conversations (Converse)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable
from types import TracebackType

import grpc

from antiphon.v1 import conversation_pb2 as cpb
from antiphon.v1 import conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from antiphon_client.result import TurnResult
from antiphon_client.resume import Opened, Reconnect, ResumingConversation


def auth_metadata(api_key: str | None = None, token: str | None = None) -> tuple[tuple[str, str], ...]:
    """Credentials as call metadata: ``x-api-key`` for an API key, ``authorization: Bearer`` for a JWT.

    Without arguments, ANTIPHON_API_KEY or ANTIPHON_TOKEN from the environment (if set).
    """
    if api_key is None and token is None:
        api_key = os.environ.get("ANTIPHON_API_KEY") or None
        token = os.environ.get("ANTIPHON_TOKEN") or None
    if api_key:
        return (("x-api-key", api_key),)
    if token:
        return (("authorization", f"Bearer {token}"),)
    return ()


class AntiphonClient:
    """``api_key`` / ``token`` (or ANTIPHON_API_KEY / ANTIPHON_TOKEN) are sent with every call."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        metadata: tuple[tuple[str, str], ...] = (),
        api_key: str | None = None,
        token: str | None = None,
    ) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = conversation_pb2_grpc.ConversationStub(self._channel)
        self._metadata = (*metadata, *auth_metadata(api_key, token))

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel, for the other services' stubs (Context, Tools, Admin)."""
        return self._channel

    async def __aenter__(self) -> AntiphonClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        await asyncio.wait_for(self._channel.channel_ready(), timeout_s)

    def send(
        self,
        text: str,
        *,
        session_id: str = "",
        agent_profile: str = "",
        generation: pb.GenerationOptions | None = None,
        timeout_s: float | None = None,
    ) -> AsyncIterator[pb.ServerEvent]:
        """One text turn; yields its events (session_started, agent_text..., turn_end)."""
        request = cpb.TextRequest(session_id=session_id, agent_profile=agent_profile, text=text, generation=generation)
        call = self._stub.Send(request, metadata=self._metadata, timeout=timeout_s)
        return _events(call)

    async def conversation(
        self,
        *,
        session_id: str = "",
        agent_profile: str = "",
        generation: pb.GenerationOptions | None = None,
    ) -> Conversation:
        """Open a Converse stream; returns once the server has started the session."""
        call, started = await self._open(session_id, agent_profile, generation)
        conv = Conversation(call)
        conv.session_id, conv.started = started.session_id, started
        return conv

    async def resuming_conversation(
        self,
        *,
        session_id: str = "",
        agent_profile: str = "",
        generation: pb.GenerationOptions | None = None,
        reconnect: Reconnect | None = None,
    ) -> ResumingConversation:
        """A conversation that reconnects with the same session id when its worker drains or dies
        (antiphon_client.resume); FAILED_PRECONDITION if another live stream holds the session."""

        def open_stream(sid: str) -> Awaitable[Opened]:
            return self._open(sid, agent_profile, generation)

        conv = ResumingConversation(open_stream, reconnect or Reconnect())
        conv.session_id = session_id
        return await conv.start()

    async def _open(self, session_id: str, agent_profile: str, generation: pb.GenerationOptions | None) -> Opened:
        call = self._stub.Converse(metadata=self._metadata)
        config = pb.SessionConfig(session_id=session_id, agent_profile=agent_profile, generation=generation)
        await call.write(pb.ClientEvent(session_config=config))
        first = await call.read()  # a refused session raises its status here
        if first is grpc.aio.EOF or first.WhichOneof("event") != "session_started":
            raise ConnectionError(f"session did not start: {await call.details()}")
        return call, first.session_started


class Conversation:
    """A Converse stream: write text, interrupt, and read events in order."""

    def __init__(self, call: grpc.aio.StreamStreamCall) -> None:
        self._call = call
        self.session_id = ""
        self.started: pb.SessionStarted | None = None

    async def __aenter__(self) -> Conversation:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.end()
        else:
            self._call.cancel()

    async def say(self, text: str) -> None:
        await self._call.write(pb.ClientEvent(text=pb.TextInput(content=text)))

    async def interrupt(self) -> None:
        await self._call.write(pb.ClientEvent(interrupt=pb.Interrupt()))

    async def end(self) -> None:
        """Tell the server no more input comes; pending turns still finish."""
        await self._call.write(pb.ClientEvent(end_of_input=pb.EndOfInput()))
        await self._call.done_writing()

    async def events(self) -> AsyncIterator[pb.ServerEvent]:
        while (event := await self._call.read()) is not grpc.aio.EOF:
            yield event

    async def turn(self, text: str) -> TurnResult:
        """Say something and collect the answer until its turn_end."""
        await self.say(text)
        return await collect_turn(self.events())


async def collect_turn(events: AsyncIterator[pb.ServerEvent]) -> TurnResult:
    result = TurnResult()
    parts: list[str] = []
    async for event in events:
        kind = event.WhichOneof("event")
        if kind == "agent_text":
            parts.append(event.agent_text.delta)
        elif kind == "error":
            result.errors.append(event.error)
        elif kind == "turn_end":
            result.turn_id = event.turn_id
            result.turn_end = event.turn_end
            break
    result.text = "".join(parts)
    return result


async def _events(call: grpc.aio.UnaryStreamCall) -> AsyncIterator[pb.ServerEvent]:
    async for event in call:
        yield event
