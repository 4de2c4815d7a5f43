"""The Tools service over a real grpc.aio server on loopback, with real wasm tools.

Each ToolError kind must reach the client as the status (or the in-band
InvokeToolResponse.error) that tools.proto documents.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from antiphon.api.tools import ToolsServicer
from antiphon.gateway.principal import Principal
from antiphon.tools import Sandbox, ToolRegistry
from antiphon.v1 import tools_pb2 as tpb
from antiphon.v1 import tools_pb2_grpc
from tests.integration.test_wasm_sandbox import HOSTILE, TOOLS, require_tools


def principal_of(context: grpc.aio.ServicerContext) -> Principal:
    """Test stand-in for the gateway: the tenant and roles come from metadata."""
    metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
    roles = frozenset(r for r in metadata.get("x-roles", "admin").split(",") if r)
    return Principal(tenant=metadata.get("x-tenant", "default"), subject="test", roles=roles, labels=frozenset())


def as_(tenant: str, roles: str = "admin") -> tuple[tuple[str, str], ...]:
    return (("x-tenant", tenant), ("x-roles", roles))


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wasm-cache")


@pytest.fixture
async def stub(tmp_path: Path, compile_cache: Path) -> AsyncIterator[tools_pb2_grpc.ToolsStub]:
    tools_dir = require_tools()
    sandbox = Sandbox(cache_dir=compile_cache, max_workers=2)
    registry = ToolRegistry(sandbox, storage_dir=tmp_path / "storage", tools_dir=tools_dir)
    await registry.start()
    server = grpc.aio.server()
    tools_pb2_grpc.add_ToolsServicer_to_server(ToolsServicer(registry, principal_of), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield tools_pb2_grpc.ToolsStub(channel)
    finally:
        await channel.close()
        await server.stop(grace=None)
        sandbox.close()


def hostile_request(name: str, **limits: int) -> tpb.RegisterToolRequest:
    return tpb.RegisterToolRequest(
        manifest=tpb.ToolManifest(
            name=name,
            description=f"hostile {name}",
            input_schema_json='{"type": "object"}',
            output_schema_json='{"type": "object", "properties": {"result": {"type": "number"}}}',
            limits=tpb.ToolLimits(**limits),
        ),
        wasm_module=(HOSTILE / f"{name}.wasm").read_bytes(),
    )


async def invoke(
    stub: tools_pb2_grpc.ToolsStub, name: str, args: object, tenant: str = "default"
) -> tpb.InvokeToolResponse:
    request = tpb.InvokeToolRequest(name=name, arguments_json=json.dumps(args))
    response: tpb.InvokeToolResponse = await stub.InvokeTool(request, metadata=as_(tenant))
    return response


async def status_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


async def test_list_register_invoke_remove(stub: tools_pb2_grpc.ToolsStub) -> None:
    listed = await stub.ListTools(tpb.ListToolsRequest(), metadata=as_("acme"))
    assert [t.name for t in listed.tools] == ["calculator", "http_get", "inventory", "unit_convert"]
    assert json.loads(listed.tools[0].input_schema_json)["required"] == ["expression"]

    response = await invoke(stub, "calculator", {"expression": "(1 + 2) * 4"}, "acme")
    assert response.WhichOneof("result") == "output_json"
    assert json.loads(response.output_json) == {"result": 12}
    assert response.fuel_used > 0
    assert response.duration_ms > 0

    info = await stub.RegisterTool(hostile_request("echo"), metadata=as_("acme"))
    assert info.name == "echo"
    assert json.loads(info.input_schema_json) == {"type": "object"}
    assert json.loads((await invoke(stub, "echo", {"a": [1]}, "acme")).output_json) == {"input": {"a": [1]}}
    assert "echo" not in [t.name for t in (await stub.ListTools(tpb.ListToolsRequest(), metadata=as_("other"))).tools]
    assert await status_of(invoke(stub, "echo", {}, "other")) == grpc.StatusCode.NOT_FOUND

    await stub.RemoveTool(tpb.RemoveToolRequest(name="echo"), metadata=as_("acme"))
    assert await status_of(invoke(stub, "echo", {}, "acme")) == grpc.StatusCode.NOT_FOUND
    assert await status_of(stub.RemoveTool(tpb.RemoveToolRequest(name="echo"), metadata=as_("acme"))) == (
        grpc.StatusCode.NOT_FOUND
    )


@pytest.mark.parametrize(
    ("name", "limits", "code"),
    [
        ("loop", {"fuel": 10_000_000, "wall_clock_ms": 10_000}, grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("membomb", {"memory_mib": 16}, grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("big_output", {"output_bytes": 100}, grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("loop", {"fuel": 20_000_000_000, "wall_clock_ms": 20}, grpc.StatusCode.DEADLINE_EXCEEDED),
    ],
)
async def test_limits_map_to_statuses(
    stub: tools_pb2_grpc.ToolsStub, name: str, limits: dict[str, int], code: grpc.StatusCode
) -> None:
    await stub.RegisterTool(hostile_request(name, **limits))
    assert await status_of(invoke(stub, name, {})) == code
    assert json.loads((await invoke(stub, "calculator", {"expression": "1+1"})).output_json) == {"result": 2}


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("recursion", "trap: stack overflow"),
        ("bad_json", "invalid_output: output: not valid JSON"),
        ("wrong_shape", "invalid_output: output.result: 'forty-two' is not of type 'number'"),
    ],
)
async def test_tool_failures_are_reported_in_band(stub: tools_pb2_grpc.ToolsStub, name: str, error: str) -> None:
    await stub.RegisterTool(hostile_request(name))
    response = await invoke(stub, name, {})
    assert response.WhichOneof("result") == "error"
    assert response.error.startswith(error)
    assert response.duration_ms > 0


async def test_a_failing_tool_reports_its_message_in_band(stub: tools_pb2_grpc.ToolsStub) -> None:
    response = await invoke(stub, "calculator", {"expression": "1/0"})
    assert response.error == "tool_failed: division by zero"
    assert response.fuel_used > 0


async def test_invalid_arguments(stub: tools_pb2_grpc.ToolsStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await invoke(stub, "calculator", {"expression": 1})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("arguments.expression: 1 is not of type 'string'")
    bad = tpb.InvokeToolRequest(name="calculator", arguments_json="{")
    assert await status_of(stub.InvokeTool(bad)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_registration_errors(stub: tools_pb2_grpc.ToolsStub) -> None:
    request = hostile_request("echo")
    request.manifest.limits.memory_mib = 999
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterTool(request)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "manifest.limits.memory_mib: must be 1..256, got 999"

    request = hostile_request("echo")
    request.manifest.input_schema_json = '{"type": "object", "properties": {"a": {"type": 5}}}'
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterTool(request)
    assert caught.value.details().startswith("manifest.input_schema_json: not a valid JSON Schema")

    request = hostile_request("echo")
    request.wasm_module = b"not wasm"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterTool(request)
    assert (caught.value.code(), caught.value.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "wasm_module: not a WebAssembly binary (no \\0asm header)",
    )

    assert await status_of(stub.RegisterTool(hostile_request("net_import"))) == grpc.StatusCode.PERMISSION_DENIED
    no_capability = tpb.RegisterToolRequest(
        manifest=tpb.ToolManifest(
            name="fetcher", description="d", input_schema_json='{"type": "object"}', output_schema_json="{}"
        ),
        wasm_module=(TOOLS / "http_get.wasm").read_bytes(),
    )
    assert await status_of(stub.RegisterTool(no_capability)) == grpc.StatusCode.PERMISSION_DENIED
    guest = stub.RegisterTool(hostile_request("echo"), metadata=as_("default", roles="viewer"))
    assert await status_of(guest) == grpc.StatusCode.PERMISSION_DENIED


async def test_roles_map_to_permission_denied(stub: tools_pb2_grpc.ToolsStub) -> None:
    request = hostile_request("echo")
    request.manifest.required_role = "ops"
    await stub.RegisterTool(request)
    viewer = tpb.InvokeToolRequest(name="echo", arguments_json="{}")
    assert await status_of(stub.InvokeTool(viewer, metadata=as_("default", roles="viewer"))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    response = await stub.InvokeTool(viewer, metadata=as_("default", roles="ops"))
    assert json.loads(response.output_json) == {"input": {}}
