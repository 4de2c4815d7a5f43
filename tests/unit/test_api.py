"""The gRPC API over a real loopback server, with a scripted model (FakeLLM)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from antiphon.app import App
from antiphon.errors import Unavailable
from antiphon.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    context_pb2,
    context_pb2_grpc,
    conversation_pb2,
    conversation_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
)
from antiphon.v1 import events_pb2 as pb
from antiphon_client import AntiphonClient
from antiphon_client.client import collect_turn
from tests.conftest import RunningServer, test_settings
from tests.eventually import eventually
from tests.fakes import FakeLLM


def _stub(server: RunningServer) -> conversation_pb2_grpc.ConversationStub:
    return conversation_pb2_grpc.ConversationStub(server.channel)


def _config(**kw: object) -> pb.ClientEvent:
    return pb.ClientEvent(session_config=pb.SessionConfig(**kw))  # type: ignore[arg-type]


async def test_send_streams_text_and_ends_with_turn_end(server: RunningServer) -> None:
    events = [e async for e in _stub(server).Send(conversation_pb2.TextRequest(text="hi"))]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["session_started", "agent_text", "agent_text", "agent_text", "agent_text", "turn_end"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert all(e.server_time_us > 0 for e in events)
    assert "".join(e.agent_text.delta for e in events if e.HasField("agent_text")) == "Hello, world."
    end = events[-1].turn_end
    assert end.reason == pb.TurnEnd.REASON_COMPLETED
    assert end.usage.output_tokens == 4
    assert end.usage.input_tokens > 0
    assert end.latency.total_ms >= end.latency.first_token_ms > 0
    assert len({e.turn_id for e in events[1:]}) == 1


async def test_converse_keeps_history_across_turns(server: RunningServer, fake_llm: FakeLLM) -> None:
    async with AntiphonClient(server.address) as client:
        conv = await client.conversation(session_id="s-1")
        first = await conv.turn("my name is Ada")
        second = await conv.turn("what is my name?")
        await conv.end()
        assert [e async for e in conv.events()] == []
    assert first.text == second.text == "Hello, world."
    prompt = fake_llm.prompts[-1]
    assert [(m.role, m.content) for m in prompt[1:]] == [
        ("user", "my name is Ada"),
        ("assistant", "Hello, world."),
        ("user", "what is my name?"),
    ]
    # A later stream on the same session sees the same history.
    async with AntiphonClient(server.address) as client:
        conv = await client.conversation(session_id="s-1")
        assert conv.started is not None
        assert conv.started.history_turns == 4
        await conv.end()


async def test_first_message_must_be_session_config(server: RunningServer) -> None:
    call = _stub(server).Converse()
    await call.write(pb.ClientEvent(text=pb.TextInput(content="hi")))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "session_config" in (err.value.details() or "")


@pytest.mark.parametrize(
    ("generation", "field"),
    [
        (pb.GenerationOptions(temperature=3.0), "generation.temperature"),
        (pb.GenerationOptions(top_p=1.5), "generation.top_p"),
        (pb.GenerationOptions(max_tokens=100_000), "generation.max_tokens"),
        (pb.GenerationOptions(stop=["a", "b", "c", "d", "e"]), "generation.stop"),
        (pb.GenerationOptions(stop=[""]), "generation.stop[0]"),
    ],
)
async def test_invalid_generation_options_name_the_field(
    server: RunningServer, generation: pb.GenerationOptions, field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anext(aiter(_stub(server).Send(conversation_pb2.TextRequest(text="x", generation=generation))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (err.value.details() or "")


async def test_unknown_profile_and_bad_session_id(server: RunningServer) -> None:
    stub = _stub(server)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anext(aiter(stub.Send(conversation_pb2.TextRequest(text="x", agent_profile="pirate"))))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "pirate" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anext(aiter(stub.Send(conversation_pb2.TextRequest(text="x", session_id="bad id!"))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await anext(aiter(stub.Send(conversation_pb2.TextRequest(text="  "))))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_voice_settings_are_unimplemented(server: RunningServer) -> None:
    call = _stub(server).Converse()
    await call.write(_config(input_audio=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_MULAW, sample_rate_hz=8000)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_second_stream_on_same_session_is_refused(server: RunningServer) -> None:
    stub = _stub(server)
    first = stub.Converse()
    await first.write(_config(session_id="busy"))
    assert (await first.read()).HasField("session_started")
    second = stub.Converse()
    await second.write(_config(session_id="busy"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await second.read()
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The first stream is unaffected.
    await first.write(pb.ClientEvent(text=pb.TextInput(content="still there?")))
    assert (await collect_turn(_reader(first))).text == "Hello, world."
    await first.done_writing()
    assert await first.code() == grpc.StatusCode.OK


async def _reader(call: grpc.aio.StreamStreamCall) -> AsyncIterator[pb.ServerEvent]:
    while (event := await call.read()) is not grpc.aio.EOF:
        yield event


async def test_oversized_message_is_resource_exhausted(fake_llm: FakeLLM) -> None:
    app = App(test_settings(server={"max_message_bytes": 4096}), llm=fake_llm)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = conversation_pb2_grpc.ConversationStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await anext(aiter(stub.Send(conversation_pb2.TextRequest(text="x" * 10_000))))
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # The server keeps serving.
            events = [e async for e in stub.Send(conversation_pb2.TextRequest(text="ok"))]
            assert events[-1].HasField("turn_end")
    finally:
        await app.stop(grace_s=1)


async def test_text_over_the_input_limit_is_an_error_event(server: RunningServer) -> None:
    async with AntiphonClient(server.address) as client:
        conv = await client.conversation()
        await conv.say("x" * 20_000)
        event = await anext(aiter(conv.events()))
        assert event.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "text.content" in event.error.message
        assert (await conv.turn("fine")).text == "Hello, world."
        await conv.end()


async def test_stream_limit(fake_llm: FakeLLM) -> None:
    app = App(test_settings(server={"max_streams": 1}), llm=fake_llm)
    await app.start()
    try:
        async with AntiphonClient(f"127.0.0.1:{app.port}") as client:
            conv = await client.conversation()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.conversation()
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            await conv.end()
    finally:
        await app.stop(grace_s=1)


async def test_interrupt_cancels_the_turn_and_keeps_what_was_sent(server: RunningServer, fake_llm: FakeLLM) -> None:
    fake_llm.gate = asyncio.Event()
    async with AntiphonClient(server.address) as client:
        conv = await client.conversation(session_id="int")
        await conv.say("tell me a story")
        events = conv.events()
        first = await anext(events)
        assert first.agent_text.delta == "Hello"
        await conv.interrupt()
        interrupted = await anext(events)
        assert interrupted.interrupted.heard_text == "Hello"
        assert interrupted.interrupted.played_ms == 0  # a text session plays nothing
        end = await anext(events)
        assert end.turn_end.reason == pb.TurnEnd.REASON_INTERRUPTED
        fake_llm.gate.set()
        fake_llm.gate = None
        result = await conv.turn("again")
        assert result.text == "Hello, world."
        await conv.end()
    assert fake_llm.prompts[-1][-2].content == "Hello"  # history holds only what was sent


async def test_client_cancel_stops_generation(server: RunningServer, fake_llm: FakeLLM) -> None:
    fake_llm.gate = asyncio.Event()
    call = _stub(server).Send(conversation_pb2.TextRequest(text="long answer please"))
    assert (await call.read()).HasField("session_started")
    assert (await call.read()).HasField("agent_text")
    call.cancel()
    await eventually(  # the handler unwinds after the model stream closes
        lambda: fake_llm.closed_streams > 0 and server.app.streams.open_streams == 0,
        message="the turn was not stopped on the server",
    )
    assert fake_llm.closed_streams == 1
    assert fake_llm.produced == 1  # nothing generated after the cancel
    assert server.app.streams.open_streams == 0


async def test_model_failure_is_contained(server: RunningServer, fake_llm: FakeLLM) -> None:
    fake_llm.fail_with = Unavailable("the language model failed: boom")
    async with AntiphonClient(server.address) as client:
        conv = await client.conversation()
        result = await conv.turn("hi")
        assert [e.code for e in result.errors] == [grpc.StatusCode.UNAVAILABLE.value[0]]
        assert result.turn_end is not None
        assert result.turn_end.reason == pb.TurnEnd.REASON_ERROR
        fake_llm.fail_with = None
        assert (await conv.turn("hi again")).text == "Hello, world."
        await conv.end()


async def test_unexpected_bug_is_internal_without_details(server: RunningServer, fake_llm: FakeLLM) -> None:
    fake_llm.fail_with = ZeroDivisionError("secret detail")
    events = [e async for e in _stub(server).Send(conversation_pb2.TextRequest(text="hi"))]
    error = next(e.error for e in events if e.HasField("error"))
    assert error.code == grpc.StatusCode.INTERNAL.value[0]
    assert "secret" not in error.message


async def test_stop_strings_cut_the_answer(server: RunningServer) -> None:
    request = conversation_pb2.TextRequest(text="hi", generation=pb.GenerationOptions(stop=[", w"]))
    events = [e async for e in _stub(server).Send(request)]
    assert "".join(e.agent_text.delta for e in events if e.HasField("agent_text")) == "Hello"
    assert events[-1].turn_end.reason == pb.TurnEnd.REASON_COMPLETED


async def test_max_tokens(server: RunningServer) -> None:
    request = conversation_pb2.TextRequest(text="hi", generation=pb.GenerationOptions(max_tokens=2))
    events = [e async for e in _stub(server).Send(request)]
    assert events[-1].turn_end.reason == pb.TurnEnd.REASON_MAX_TOKENS
    assert events[-1].turn_end.usage.output_tokens == 2


async def test_graceful_shutdown_finishes_the_open_turn(fake_llm: FakeLLM) -> None:
    fake_llm.gate = asyncio.Event()
    app = App(test_settings(), llm=fake_llm)
    await app.start()
    async with AntiphonClient(f"127.0.0.1:{app.port}") as client:
        conv = await client.conversation()
        await conv.say("hi")
        events = conv.events()
        assert (await anext(events)).HasField("agent_text")
        stopping = asyncio.create_task(app.stop(grace_s=10))
        await asyncio.wait_for(app.streams.draining.wait(), 5)
        # New streams are refused while draining.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await client.conversation()
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        fake_llm.gate.set()
        rest = []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for event in events:
                rest.append(event)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # reconnect to continue
        assert rest[-1].turn_end.reason == pb.TurnEnd.REASON_COMPLETED
        await stopping


async def test_health_reflection_and_other_services(server: RunningServer) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(server.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="antiphon.v1.Conversation"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    ctx = context_pb2_grpc.ContextStub(server.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # this server has no embedder prepared
        await ctx.Search(context_pb2.SearchRequest(query="x"))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "embedder" in (err.value.details() or "")
    tools = await tools_pb2_grpc.ToolsStub(server.channel).ListTools(tools_pb2.ListToolsRequest())
    assert list(tools.tools) == []  # this server has no built-in tools
    models = await admin_pb2_grpc.AdminStub(server.channel).ListModels(admin_pb2.ListModelsRequest())
    assert [m.capability for m in models.models] == ["llm"]


async def test_reflection_lists_every_service(server: RunningServer) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    sync_channel = grpc.insecure_channel(server.address)
    try:
        database = ProtoReflectionDescriptorDatabase(sync_channel)
        services = await asyncio.to_thread(lambda: set(database.get_services()))
    finally:
        sync_channel.close()
    assert {
        "antiphon.v1.Conversation",
        "antiphon.v1.Context",
        "antiphon.v1.Tools",
        "antiphon.v1.Admin",
        "grpc.health.v1.Health",
    } <= services


async def test_deadline_stops_the_turn_on_the_server(server: RunningServer, fake_llm: FakeLLM) -> None:
    """The caller's deadline bounds the turn: generation stops there, not only the client's wait."""
    fake_llm.gate = asyncio.Event()  # the model would wait forever after its first token
    call = _stub(server).Send(conversation_pb2.TextRequest(text="slow"), timeout=0.5)
    events: list[pb.ServerEvent] = []
    failed: grpc.aio.AioRpcError | None = None
    try:
        async for event in call:
            events.append(event)
    except grpc.aio.AioRpcError as err:
        failed = err
    if failed is not None:
        assert failed.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        # The server's copy of the deadline can expire first: the turn then ends with its error.
        errors = [e.error.code for e in events if e.HasField("error")]
        assert errors == [grpc.StatusCode.DEADLINE_EXCEEDED.value[0]]
    await eventually(  # the handler unwinds after the model stream closes
        lambda: fake_llm.closed_streams > 0 and server.app.streams.open_streams == 0,
        message="the turn was not stopped on the server",
    )
    assert fake_llm.closed_streams == 1
    assert server.app.streams.open_streams == 0
