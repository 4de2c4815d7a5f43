"""The Python SDK's resuming conversation against a scripted in-process gRPC server: which breaks
it reconnects on, with the same session id; what it surfaces; the backoff's bounds."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from antiphon.v1 import conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from antiphon_client import AntiphonClient, Reconnect, TurnLost
from antiphon_client.resume import is_reconnectable

FAST = Reconnect(initial_backoff_s=0.001, max_backoff_s=0.01, resume_window_s=2.0)


class Scripted(conversation_pb2_grpc.ConversationServicer):
    """Each Converse stream takes the next step: "ok" answers every text; "break:CODE" answers the
    first text's start and then ends with CODE; "refuse:CODE" fails the session's start."""

    def __init__(self, steps: list[str], lost_turn: str = "") -> None:
        self.steps = steps
        self.session_ids: list[str] = []
        self.lost_turn = lost_turn

    async def Converse(
        self, request_iterator: AsyncIterator[pb.ClientEvent], context: Any
    ) -> AsyncIterator[pb.ServerEvent]:
        step = self.steps.pop(0) if self.steps else "ok"
        config = (await anext(aiter(request_iterator))).session_config
        self.session_ids.append(config.session_id)
        if step.startswith("refuse:"):
            await context.abort(grpc.StatusCode[step[7:]], "the session is held")
        sid = config.session_id or "assigned"
        lost = self.lost_turn if len(self.session_ids) > 1 else ""
        yield pb.ServerEvent(session_started=pb.SessionStarted(session_id=sid, lost_turn=lost))
        async for event in request_iterator:
            if event.WhichOneof("event") == "end_of_input":
                return
            yield pb.ServerEvent(turn_id="t", agent_text=pb.AgentText(delta="part"))
            if step.startswith("break:"):
                await context.abort(grpc.StatusCode[step[6:]], "Received RST_STREAM with error code 2")
            yield pb.ServerEvent(turn_id="t", turn_end=pb.TurnEnd(reason=pb.TurnEnd.REASON_COMPLETED))

    async def Send(self, request: Any, context: Any) -> AsyncIterator[pb.ServerEvent]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")
        yield pb.ServerEvent()


async def _serve(servicer: Scripted) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server()
    conversation_pb2_grpc.add_ConversationServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


@pytest.mark.parametrize("code", ["UNAVAILABLE", "INTERNAL"])
async def test_a_broken_stream_resumes_on_the_same_session_and_reports_the_lost_turn(code: str) -> None:
    servicer = Scripted([f"break:{code}"], lost_turn="tell me a story")
    server, address = await _serve(servicer)
    try:
        async with AntiphonClient(address) as client:
            conv = await client.resuming_conversation(reconnect=FAST)
            assert conv.session_id == "assigned"
            with pytest.raises(TurnLost) as lost:
                await conv.turn("tell me a story")
            assert lost.value.reported
            assert conv.reconnects == 1
            assert conv.started is not None
            assert conv.started.lost_turn == "tell me a story"
            assert servicer.session_ids == ["", "assigned"]  # the server's id, kept
            result = await conv.turn("again")
            assert result.text == "part"
            await conv.end()
    finally:
        await server.stop(0)


async def test_other_errors_are_not_retried() -> None:
    servicer = Scripted(["break:INVALID_ARGUMENT"])
    server, address = await _serve(servicer)
    try:
        async with AntiphonClient(address) as client:
            conv = await client.resuming_conversation(session_id="s", reconnect=FAST)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await conv.turn("hello")
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert conv.reconnects == 0
    finally:
        await server.stop(0)


async def test_a_session_held_elsewhere_fails_at_once_but_is_waited_for_after_a_break() -> None:
    servicer = Scripted(["refuse:FAILED_PRECONDITION"])
    server, address = await _serve(servicer)
    try:
        async with AntiphonClient(address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.resuming_conversation(session_id="s", reconnect=FAST)
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            # After a break the dead worker's lease holds until its heartbeat lapses: retried.
            servicer.steps = ["break:UNAVAILABLE", "refuse:FAILED_PRECONDITION", "refuse:FAILED_PRECONDITION"]
            conv = await client.resuming_conversation(session_id="s", reconnect=FAST)
            with pytest.raises(TurnLost):
                await conv.turn("hello")
            assert conv.reconnects == 1
            assert servicer.session_ids[-4:] == ["s", "s", "s", "s"]
            await conv.end()
    finally:
        await server.stop(0)


async def test_resuming_gives_up_after_max_attempts() -> None:
    servicer = Scripted(["break:UNAVAILABLE", *["refuse:UNAVAILABLE"] * 3])
    server, address = await _serve(servicer)
    try:
        async with AntiphonClient(address) as client:
            conv = await client.resuming_conversation(
                session_id="s", reconnect=Reconnect(max_attempts=3, initial_backoff_s=0.001)
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await conv.turn("hello")
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


def test_backoff_is_capped_and_jittered() -> None:
    policy = Reconnect(initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0, jitter=0.5)
    assert policy.delay_s(0, rand=lambda: 0.0) == pytest.approx(0.1)
    assert policy.delay_s(0, rand=lambda: 1.0) == pytest.approx(0.05)
    assert policy.delay_s(3, rand=lambda: 0.0) == pytest.approx(0.8)
    assert policy.delay_s(10, rand=lambda: 0.0) == pytest.approx(1.0)
    assert policy.delay_s(10, rand=lambda: 1.0) == pytest.approx(0.5)


def test_which_statuses_are_reconnectable() -> None:
    def error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)

    assert is_reconnectable(error(grpc.StatusCode.UNAVAILABLE, "the server is shutting down"))
    assert is_reconnectable(error(grpc.StatusCode.INTERNAL, "Received RST_STREAM with error code 2"))
    assert is_reconnectable(error(grpc.StatusCode.UNKNOWN, "Stream removed"))
    assert not is_reconnectable(error(grpc.StatusCode.INTERNAL, "internal error in the turn"))
    assert not is_reconnectable(error(grpc.StatusCode.FAILED_PRECONDITION, "held"))
    assert not is_reconnectable(error(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline"))
