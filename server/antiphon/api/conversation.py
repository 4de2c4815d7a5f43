"""Conversation service: Converse (bidirectional) and Send (one text turn)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Literal

import grpc

from antiphon.aio import cancel_and_wait, unwind
from antiphon.api.boundary import guard_stream
from antiphon.api.stream_session import Services, StreamSession
from antiphon.api.streams import StreamRegistry
from antiphon.api.voice_channel import VoiceChannel
from antiphon.errors import AntiphonError, InvalidArgument, Unavailable, Unimplemented
from antiphon.gateway.principal import Principal
from antiphon.telemetry.metrics import Metrics
from antiphon.v1 import conversation_pb2 as cpb
from antiphon.v1 import conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

_VOICE_FIELDS: tuple[Literal["input_audio", "output_audio", "vad", "barge_in"], ...] = (
    "input_audio",
    "output_audio",
    "vad",
    "barge_in",
)


class ConversationServicer(conversation_pb2_grpc.ConversationServicer):
    def __init__(self, services: Services, streams: StreamRegistry, metrics: Metrics) -> None:
        self._svc = services
        self._streams = streams
        self._metrics = metrics

    # grpc.aio recognises streaming handlers by being async generator functions.
    async def Converse(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[pb.ClientEvent], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerEvent]:
        converse = self._converse(request_iterator, self._svc.principal_of(context))
        async for event in guard_stream(converse, context, "Converse", self._metrics):
            yield event

    async def Send(  # noqa: N802 (gRPC method name)
        self, request: cpb.TextRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ServerEvent]:
        async for event in guard_stream(
            self._send(request, self._svc.principal_of(context)), context, "Send", self._metrics
        ):
            yield event

    async def _converse(
        self, requests: AsyncIterator[pb.ClientEvent], principal: Principal
    ) -> AsyncGenerator[pb.ServerEvent, None]:
        async with self._streams.open():
            first = await anext(aiter(requests), None)
            if first is None:
                return
            if first.WhichOneof("event") != "session_config":
                raise InvalidArgument(
                    f"the first message must be session_config, got {first.WhichOneof('event') or 'an empty event'}"
                )
            config = first.session_config
            session = StreamSession(self._svc, principal)
            voice = any(config.HasField(name) for name in _VOICE_FIELDS) or bool(config.voice)
            if voice:
                session.voice = self._voice_channel(session, config)
            reader: asyncio.Task[None] | None = None
            try:
                profile = config.agent_profile or (self._svc.settings.voice_agent if voice else "")
                yield await session.start(config.session_id, profile, config.generation, config.client_tools)
                reader = asyncio.create_task(self._read(requests, session), name=f"reader:{session.session_id}")
                drain = asyncio.create_task(self._drain_on_shutdown(session), name="drain-watch")
                try:
                    while (event := await session.out.get()) is not None:
                        yield event
                finally:
                    await cancel_and_wait(drain)
                if session.fatal is not None:
                    raise session.fatal
                if self._streams.draining.is_set():
                    raise Unavailable("the server is shutting down; reconnect to continue this session")
            finally:
                await unwind(self._teardown(reader, session), name=f"teardown:{session.session_id}")

    @staticmethod
    async def _teardown(reader: asyncio.Task[None] | None, session: StreamSession) -> None:
        await cancel_and_wait(reader)
        await session.close()

    def _voice_channel(self, session: StreamSession, config: pb.SessionConfig) -> VoiceChannel:
        engines = self._svc.voice
        if engines is None:
            raise Unimplemented(
                "session_config: voice is not available on this server (voice.enabled is off, or its models are "
                "not installed: `pip install .[voice]`)"
            )
        if not config.HasField("input_audio"):
            raise InvalidArgument("session_config.input_audio: a voice session needs its input audio format")
        return VoiceChannel(session, engines, self._svc.settings.voice, config)

    async def _read(self, requests: AsyncIterator[pb.ClientEvent], session: StreamSession) -> None:
        try:
            await self._read_events(requests, session)
        except AntiphonError as exc:  # bad audio: the stream ends with its status
            await session.fail(exc)

    async def _read_events(self, requests: AsyncIterator[pb.ClientEvent], session: StreamSession) -> None:
        async for event in requests:
            kind = event.WhichOneof("event")
            if kind == "audio" and session.voice is not None:
                await session.voice.on_audio(event.audio)
            elif kind == "text":
                await session.submit_text(event.text.content)
            elif kind == "interrupt":
                session.interrupt()
            elif kind == "end_of_input":
                break
            elif kind == "session_config":
                await session.report(InvalidArgument("session_config: may only be the first message of a stream"))
            elif kind == "audio":
                raise InvalidArgument("audio: the session has no input_audio format; set it in session_config")
            elif kind == "tool_result":
                await session.resolve_tool(event.tool_result)
            else:
                await session.report(InvalidArgument("event: empty ClientEvent"))
        # end_of_input, or the client half-closed: finish what was asked, then end.
        if session.voice is not None:
            await session.voice.end_of_input()
        await session.end_input()

    async def _drain_on_shutdown(self, session: StreamSession) -> None:
        await self._streams.draining.wait()
        await session.end_input()

    async def _send(self, request: cpb.TextRequest, principal: Principal) -> AsyncGenerator[pb.ServerEvent, None]:
        async with self._streams.open():
            if not request.text.strip():
                raise InvalidArgument("text: must not be empty")
            session = StreamSession(self._svc, principal)
            try:
                yield await session.start(request.session_id, request.agent_profile, request.generation)
                await session.submit_text(request.text)
                await session.end_input()
                while (event := await session.out.get()) is not None:
                    yield event
            finally:
                await unwind(session.close(), name=f"teardown:{session.session_id}")
