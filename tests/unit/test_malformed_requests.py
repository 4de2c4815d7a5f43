"""Malformed requests get their documented status, and the status reaches the client.

Raw bytes to every RPC (the gateway decodes a body only once its caller is admitted),
JSON nested or sized past the bounds, and client strings far longer than any status
message may be, on real loopback servers.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError
from prometheus_client import CollectorRegistry

from antiphon.app import App
from antiphon.context.documents import DocumentService
from antiphon.context.memory import MemoryStore
from antiphon.errors import MAX_STATUS_MESSAGE_BYTES, AntiphonError, InvalidArgument, cap_message, quote, status_of
from antiphon.gateway.auth import GENERIC
from antiphon.gateway.interceptor import build_gateway
from antiphon.inference.llm import ChatMessage, SamplingOptions
from antiphon.tools.schema import MAX_JSON_DEPTH, check_json_bounds, json_bounds_problem, load_json
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
from tests.conftest import RunningServer, test_settings
from tests.fakes import FakeEmbedder, FakeLLM
from tests.unit.test_gateway_support import Secured, secured, secured_settings, start_secured, stop_secured

__all__ = ["secured"]  # the fixture, imported for pytest

TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools"
NEVER = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
METHODS: list[tuple[str, MethodDescriptor]] = [
    (f"/{service.full_name}/{method.name}", method)
    for module in (admin_pb2, context_pb2, conversation_pb2, tools_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
]
# Truncated varints and lengths, a bad wire type, an unterminated group, invalid UTF-8 in a string.
KNOWN_BAD = [
    b"\n\x80",
    b"\x80",
    b"\x07",
    b"\x0b",
    b"\x08",
    b"\xff" * 11,
    b"\n\x05abc",
    b"\n\x02\xc3\x28",
    b"\x12\x02\xff\xfe",
    b"\x1a\x03\xe2\x82",
]
SEED = 20240611
RANDOM_BODIES = 6
DEEP = "[" * 3000


def _undecodable(method: MethodDescriptor, body: bytes) -> bool:
    try:
        message_factory.GetMessageClass(method.input_type).FromString(body)
    except DecodeError:
        return True
    return False


def _bad_bodies(method: MethodDescriptor) -> list[bytes]:
    """The known bad bodies this request type rejects, and seeded random ones it rejects."""
    bodies = [b for b in KNOWN_BAD if _undecodable(method, b)]
    rng = random.Random(f"{SEED}:{method.full_name}")
    found = 0
    while found < RANDOM_BODIES:
        body = rng.randbytes(rng.randint(1, 48))
        if _undecodable(method, body):
            bodies.append(body)
            found += 1
    return bodies


async def _raw_call(
    channel: grpc.aio.Channel, method: str, desc: MethodDescriptor, bodies: Sequence[bytes], metadata: Any = ()
) -> tuple[grpc.StatusCode, str, list[bytes]]:
    """Send raw request bodies (one, or several on a request stream); the final status and raw responses."""
    responses: list[bytes] = []
    try:
        if desc.client_streaming:
            async for response in channel.stream_stream(method)(iter(bodies), metadata=metadata, timeout=10):
                responses.append(response)
        elif desc.server_streaming:
            async for response in channel.unary_stream(method)(bodies[0], metadata=metadata, timeout=10):
                responses.append(response)
        else:
            responses.append(await channel.unary_unary(method)(bodies[0], metadata=metadata, timeout=10))
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or "", responses
    return grpc.StatusCode.OK, "", responses


def _decode_error_message(desc: MethodDescriptor) -> str:
    if desc.client_streaming:
        return f"a message on the request stream is not a valid {desc.input_type.full_name}"
    return f"the request body is not a valid {desc.input_type.full_name}"


def test_every_rpc_is_fuzzed() -> None:
    assert len(METHODS) == 17
    for _, desc in METHODS:
        assert len(_bad_bodies(desc)) >= RANDOM_BODIES + 3, desc.full_name


async def test_undecodable_bodies_without_credentials_are_unauthenticated(secured: Secured) -> None:
    for method, desc in METHODS:
        for body in _bad_bodies(desc):
            code, details, _ = await _raw_call(secured.channel, method, desc, [body])
            assert (code, details) == (grpc.StatusCode.UNAUTHENTICATED, GENERIC), (method, body)
    assert secured.llm.prompts == []


async def test_undecodable_bodies_with_credentials_are_invalid_argument(secured: Secured) -> None:
    for method, desc in METHODS:
        expected = _decode_error_message(desc)
        for body in _bad_bodies(desc):
            code, details, _ = await _raw_call(secured.channel, method, desc, [body], secured.md("admin"))
            assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, expected), (method, body)
    assert secured.llm.prompts == []


async def test_undecodable_bodies_without_authentication_configured(server: RunningServer) -> None:
    for method, desc in METHODS:
        for body in _bad_bodies(desc)[:4]:
            code, details, _ = await _raw_call(server.channel, method, desc, [body])
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, body, details)
            assert "Unexpected" not in details
            assert "Error" not in details
            assert "class" not in details


async def test_a_bad_message_later_on_the_stream_ends_it_with_invalid_argument(server: RunningServer) -> None:
    method = "/antiphon.v1.Conversation/Converse"
    desc = dict(METHODS)[method]
    config = pb.ClientEvent(session_config=pb.SessionConfig()).SerializeToString()
    for bad in (b"\n\x80", b"\x07", b"\xff" * 11):
        code, details, responses = await _raw_call(server.channel, method, desc, [config, bad])
        assert (code, details) == (grpc.StatusCode.INVALID_ARGUMENT, _decode_error_message(desc))
        assert pb.ServerEvent.FromString(responses[0]).HasField("session_started")


async def test_a_refused_body_releases_its_stream_slot(tmp_path: Path) -> None:
    s = await start_secured(secured_settings(tmp_path, limits={"key_streams": 1}))
    try:
        for method in ("/antiphon.v1.Conversation/Send", "/antiphon.v1.Conversation/Converse"):
            desc = dict(METHODS)[method]
            for body in _bad_bodies(desc)[:3]:
                code, _, _ = await _raw_call(s.channel, method, desc, [body], s.md("member"))
                assert code == grpc.StatusCode.INVALID_ARGUMENT
        # The one stream the key may hold is free again.
        events = conversation_pb2_grpc.ConversationStub(s.channel).Send(
            conversation_pb2.TextRequest(text="hi"), metadata=s.md("member"), timeout=10
        )
        assert [e async for e in events][-1].HasField("turn_end")
    finally:
        await stop_secured(s)


async def test_a_handler_that_ignores_a_bad_message_still_ends_with_invalid_argument() -> None:
    """The gateway's last word: a servicer that swallows the error does not turn it into OK."""
    gateway = build_gateway(test_settings(), CollectorRegistry())
    swallowed: list[str] = []

    async def chat(requests: AsyncIterator[pb.ClientEvent], _context: grpc.aio.ServicerContext) -> Any:
        try:
            async for _ in requests:
                pass
        except InvalidArgument as exc:
            swallowed.append(exc.message)
        yield pb.ServerEvent(seq=1)

    handler = grpc.stream_stream_rpc_method_handler(
        chat, request_deserializer=pb.ClientEvent.FromString, response_serializer=pb.ServerEvent.SerializeToString
    )
    server = grpc.aio.server(interceptors=[gateway.interceptor])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Chat", {"Chat": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    await gateway.start()
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream("/test.Chat/Chat")(iter([b"", b"\n\x80"]), timeout=10)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in call:
                    pass
    finally:
        await server.stop(grace=None)
        await gateway.aclose()
    message = "a message on the request stream is not a valid antiphon.v1.ClientEvent"
    assert (err.value.code(), err.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    assert swallowed == [message]


# -- JSON bounds --------------------------------------------------------------------


def _nested_object_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def _decisions(*answers: str) -> Any:
    """Decision calls (those with a JSON schema) get these in order; the final answer is "Done"."""
    queue = list(answers)

    def respond(_messages: Sequence[ChatMessage], options: SamplingOptions) -> list[str] | None:
        if options.json_schema is not None:
            return [queue.pop(0) if queue else '{"tool": "answer"}']
        return ["Done", "."]

    return respond


@pytest.fixture
async def tools_app(fake_llm: FakeLLM) -> AsyncIterator[App]:
    app = App(
        test_settings(tools={"dir": str(TOOLS_DIR)}),
        llm=fake_llm,
        documents=DocumentService(MemoryStore(), FakeEmbedder()),
    )
    await app.start()
    try:
        yield app
    finally:
        await app.stop(grace_s=1)


async def _status(call: Any) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


def _register(name: str = "deep", input_schema: str = '{"type": "object"}', output_schema: str = "{}") -> Any:
    return tools_pb2.RegisterToolRequest(
        manifest=tools_pb2.ToolManifest(
            name=name, description="A test tool.", input_schema_json=input_schema, output_schema_json=output_schema
        ),
        wasm_module=(TOOLS_DIR / "calculator.wasm").read_bytes(),
    )


async def test_deep_json_in_tool_calls_and_manifests_is_invalid_argument(tools_app: App) -> None:
    deep_schema = json.dumps(_nested_object_schema(400))
    deep_object: Any = "x"
    for _ in range(400):
        deep_object = {"a": deep_object}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tools_app.port}") as channel:
        tools = tools_pb2_grpc.ToolsStub(channel)
        for arguments, where in (
            (DEEP, "arguments"),
            (json.dumps({"expression": deep_object}), "arguments"),
            ("{" * 2000, "arguments"),
        ):
            code, details = await _status(
                tools.InvokeTool(tools_pb2.InvokeToolRequest(name="calculator", arguments_json=arguments))
            )
            assert (code, details) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{where}: nested deeper than {MAX_JSON_DEPTH} levels",
            )
        for request, field in (
            (_register(input_schema=DEEP), "manifest.input_schema_json"),
            (_register(output_schema=DEEP), "manifest.output_schema_json"),
            (_register(input_schema=deep_schema), "manifest.input_schema_json"),
            (_register(output_schema=deep_schema), "manifest.output_schema_json"),
        ):
            code, details = await _status(tools.RegisterTool(request))
            assert (code, details) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{field}: nested deeper than {MAX_JSON_DEPTH} levels",
            )
        # Within the bound: a schema 31 objects deep (62 JSON levels) registers, and validates a deep call.
        schema = json.dumps(_nested_object_schema(31))
        info = await tools.RegisterTool(_register(input_schema=schema, output_schema=schema))
        assert info.name == "deep"
        instance: Any = {}
        for _ in range(31):
            instance = {"a": instance}
        code, details = await _status(
            tools.InvokeTool(tools_pb2.InvokeToolRequest(name="deep", arguments_json=json.dumps(instance)))
        )
        assert code not in NEVER, details
        # A recursive $ref over an instance at the depth bound: an answer, never INTERNAL.
        recursive = '{"type": "object", "properties": {"a": {"$ref": "#"}}}'
        await tools.RegisterTool(_register(name="recursive", input_schema=recursive))
        instance = {}
        for _ in range(MAX_JSON_DEPTH - 1):
            instance = {"a": instance}
        code, details = await _status(
            tools.InvokeTool(tools_pb2.InvokeToolRequest(name="recursive", arguments_json=json.dumps(instance)))
        )
        assert code not in NEVER, details


async def test_deep_client_tool_schema_is_invalid_argument(tools_app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tools_app.port}") as channel:
        for schema in (DEEP, json.dumps(_nested_object_schema(400))):
            call = conversation_pb2_grpc.ConversationStub(channel).Converse(timeout=10)
            lookup = pb.ClientTool(name="lookup", description="Looks something up.", input_schema_json=schema)
            await call.write(pb.ClientEvent(session_config=pb.SessionConfig(client_tools=[lookup])))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call.read()
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == (
                f"session_config.client_tools[0].input_schema_json: nested deeper than {MAX_JSON_DEPTH} levels"
            )


async def test_deep_client_tool_output_is_a_failed_tool_call(tools_app: App, fake_llm: FakeLLM) -> None:
    fake_llm.responder = _decisions('{"tool": "lookup", "arguments": {}}')
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tools_app.port}") as channel:
        call = conversation_pb2_grpc.ConversationStub(channel).Converse(timeout=10)
        lookup = pb.ClientTool(name="lookup", description="Looks something up.")
        await call.write(pb.ClientEvent(session_config=pb.SessionConfig(client_tools=[lookup])))
        assert (await call.read()).HasField("session_started")
        await call.write(pb.ClientEvent(text=pb.TextInput(content="look it up")))
        seen: list[pb.ServerEvent] = []
        while not seen or not seen[-1].HasField("turn_end"):
            event = await call.read()
            seen.append(event)
            if event.HasField("tool_call"):
                result = pb.ToolResult(call_id=event.tool_call.call_id, output_json=DEEP)
                await call.write(pb.ClientEvent(tool_result=result))
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    results = [e.tool_result for e in seen if e.HasField("tool_result")]
    assert len(results) == 1
    assert not results[0].ok
    assert results[0].error == f"the client's tool_result.output_json: nested deeper than {MAX_JSON_DEPTH} levels"


# -- client strings in messages ---------------------------------------------------------

HUGE = "x" * 20_000
SHORT_MESSAGE_BYTES = 300


def _short(details: str) -> bool:
    return len(details.encode()) <= SHORT_MESSAGE_BYTES


async def test_huge_names_and_periods_get_their_status_with_a_short_message(tools_app: App) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tools_app.port}") as channel:
        tools = tools_pb2_grpc.ToolsStub(channel)
        admin = admin_pb2_grpc.AdminStub(channel)
        cases: list[tuple[Any, grpc.StatusCode, str]] = [
            (
                tools.InvokeTool(tools_pb2.InvokeToolRequest(name=HUGE, arguments_json="{}")),
                grpc.StatusCode.NOT_FOUND,
                "no tool named 'xxx",
            ),
            (tools.RemoveTool(tools_pb2.RemoveToolRequest(name=HUGE)), grpc.StatusCode.NOT_FOUND, "no tool named 'xxx"),
            (
                tools.RegisterTool(_register(name=HUGE)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "manifest.name: must match",
            ),
            (
                admin.GetUsage(admin_pb2.GetUsageRequest(period=HUGE)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "period: 'xxx",
            ),
            (
                admin.CreateKey(admin_pb2.CreateKeyRequest(roles=[HUGE])),
                grpc.StatusCode.INVALID_ARGUMENT,
                "roles: unknown role 'xxx",
            ),
        ]
        for call, expected, start in cases:
            code, details = await _status(call)
            assert code == expected, details[:200]
            assert details.startswith(start), details[:200]
            assert _short(details), details[:200]
            assert "…'" in details, details[:200]
        # Strings the services check by pattern are refused without being repeated.
        code, details = await _status(admin.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=HUGE)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert _short(details)
        context = context_pb2_grpc.ContextStub(channel)
        code, details = await _status(context.GetSession(context_pb2.GetSessionRequest(session_id=HUGE)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert _short(details)


@pytest.mark.parametrize("size", [20_000, 500_000])
async def test_a_huge_agent_profile_is_not_found(server: RunningServer, size: int) -> None:
    profile = "p" * size
    call = conversation_pb2_grpc.ConversationStub(server.channel).Converse(timeout=10)
    await call.write(pb.ClientEvent(session_config=pb.SessionConfig(agent_profile=profile)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    details = err.value.details() or ""
    assert details.startswith("agent_profile: no profile named 'ppp"), details[:200]
    assert _short(details), details[:200]
    send = conversation_pb2_grpc.ConversationStub(server.channel).Send(
        conversation_pb2.TextRequest(text="hi", agent_profile=profile), timeout=10
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in send:
            pass
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert _short(err.value.details() or "")


async def test_a_huge_call_id_is_reported_short_and_the_stream_goes_on(server: RunningServer) -> None:
    call = conversation_pb2_grpc.ConversationStub(server.channel).Converse(timeout=10)
    await call.write(pb.ClientEvent(session_config=pb.SessionConfig()))
    assert (await call.read()).HasField("session_started")
    await call.write(pb.ClientEvent(tool_result=pb.ToolResult(call_id=HUGE, output_json="{}")))
    event = await call.read()
    assert event.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert event.error.message.startswith("tool_result.call_id: no tool call 'xxx")
    assert _short(event.error.message)
    await call.done_writing()
    assert await call.code() == grpc.StatusCode.OK


async def test_any_long_message_is_capped_so_its_status_arrives(tools_app: App) -> None:
    """A message that repeats a long client string unquoted still fits the client's metadata limit."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{tools_app.port}") as channel:
        context = context_pb2_grpc.ContextStub(channel)
        document = context_pb2.Document(id="d1", text="some text", acl_labels=["é" * 20_000])
        code, details = await _status(context.PutDocuments(context_pb2.PutDocumentsRequest(documents=[document])))
    assert code in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED}, details[:200]
    assert len(details.encode()) <= MAX_STATUS_MESSAGE_BYTES


# -- the helpers ---------------------------------------------------------------------


def test_quote_cuts_long_client_strings() -> None:
    assert quote("calculator") == "'calculator'"
    assert quote("x" * 81) == "'" + "x" * 80 + "…'"
    assert quote("a\nb") == "'a\\nb'"
    assert len(quote("é" * 10_000)) == 83


def test_status_messages_are_capped_in_utf8_bytes() -> None:
    assert cap_message("short") == "short"
    for text in ("a" * 5000, "é" * 5000, "€" * 5000, "a" + "😀" * 5000):
        capped = cap_message(text)
        assert len(capped.encode()) <= MAX_STATUS_MESSAGE_BYTES
        assert capped.endswith("…")
        assert text.startswith(capped[:-1])
    code, message = status_of(AntiphonError("y" * 100_000))
    assert code == grpc.StatusCode.INTERNAL
    assert len(message.encode()) <= MAX_STATUS_MESSAGE_BYTES
    assert status_of(ValueError("secret path")) == (
        grpc.StatusCode.INTERNAL,
        "internal error; the server log has details",
    )


def test_json_bounds() -> None:
    def problem(text: str, max_bytes: int = 1 << 20) -> str | None:
        return json_bounds_problem(text.encode(), max_bytes, MAX_JSON_DEPTH)

    assert problem("[" * 64 + "]" * 64) is None
    assert problem("[" * 65 + "]" * 65) == "nested deeper than 64 levels"
    assert problem('{"a":' * 65 + "1" + "}" * 65) == "nested deeper than 64 levels"
    assert problem("[" * 3000) == "nested deeper than 64 levels"
    # Brackets inside strings, escaped quotes included, are text.
    assert problem(json.dumps(["[" * 5000, '\\"[[[' * 100, "{" * 100])) is None
    assert problem('"\\"' + "[" * 100 + '"') is None
    # Brackets after an unterminated string are inside it; the parser rejects the text.
    assert problem('"' + "[" * 100) is None
    assert problem('"\\' + "[" * 100) is None
    # A parser stops at the first unmatched close: what follows cannot nest it deeper.
    assert problem("]" + "[" * 3000) is None
    assert problem("[1]]" + "[" * 3000) is None
    assert problem("[" * 63 + "]" * 10 + "[" * 12) == "nested deeper than 64 levels"
    assert problem("[" * 63 + "]" * 10 + "[" * 11) is None
    assert problem("1" * 101, max_bytes=100) == "at most 100 bytes of JSON"
    assert problem("é" * 51, max_bytes=100) == "at most 100 bytes of JSON"


def test_load_json_checks_bounds_then_parses_strictly() -> None:
    assert load_json('{"a": [1, 2]}', where="f") == {"a": [1, 2]}
    assert load_json(b'{"a": "\\u00e9"}', where="f") == {"a": "é"}
    for text, message in (
        (DEEP, "f: nested deeper than 64 levels"),
        ("[" * 2000 + "]" * 2000, "f: nested deeper than 64 levels"),
        ("{", "f: not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
        ("]" + "[" * 3000, "f: not valid JSON: Expecting value at line 1 column 1"),
        ("NaN", "f: not valid JSON: NaN is not a JSON number"),
        ("1" * (2 << 20), "f: at most 1048576 bytes of JSON"),
    ):
        with pytest.raises(InvalidArgument) as err:
            load_json(text, where="f")
        assert err.value.message == message
    with pytest.raises(InvalidArgument, match=r"^f: not UTF-8 text$"):
        load_json(b'"\xff"', where="f")
    check_json_bounds("[" * 64 + "]" * 64, where="f")
    with pytest.raises(InvalidArgument, match=r"^f: nested deeper than 64 levels$"):
        check_json_bounds(DEEP, where="f")
