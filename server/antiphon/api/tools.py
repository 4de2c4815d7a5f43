"""Tools service: RegisterTool, ListTools, InvokeTool, RemoveTool over a ToolRegistry.

Errors map once, through ``guard_unary`` and each error's ``code``:

- invalid_arguments (and a bad manifest or module)   INVALID_ARGUMENT
- out_of_fuel, memory_limit, output_too_large        RESOURCE_EXHAUSTED
- timeout                                            DEADLINE_EXCEEDED
- timeout, the sandbox busy (the tool did not run)   RESOURCE_EXHAUSTED, retryable
- not_found                                          NOT_FOUND
- capability_denied, a missing role                  PERMISSION_DENIED
- trap, invalid_output, tool_failed                  OK, in InvokeToolResponse.error ("kind: message"):
  the tool ran and failed on its own terms, which the agent should read.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from antiphon.api.boundary import guard_unary
from antiphon.gateway.principal import Principal
from antiphon.telemetry.metrics import Metrics
from antiphon.tools.deadlines import timing_of
from antiphon.tools.errors import ToolError
from antiphon.tools.manifest import ToolManifest, parse_limits
from antiphon.tools.registry import ToolInfo, ToolRegistry
from antiphon.tools.schema import ManifestError, load_json
from antiphon.v1 import tools_pb2 as tpb
from antiphon.v1 import tools_pb2_grpc

T = TypeVar("T")
PrincipalOf = Callable[[grpc.aio.ServicerContext], Principal]


class ToolsServicer(tools_pb2_grpc.ToolsServicer):
    def __init__(self, registry: ToolRegistry, principal_of: PrincipalOf, metrics: Metrics | None = None) -> None:
        self._registry = registry
        self._principal_of = principal_of
        self._metrics = metrics or Metrics.create()

    async def RegisterTool(  # noqa: N802 (gRPC method name)
        self, request: tpb.RegisterToolRequest, context: grpc.aio.ServicerContext
    ) -> tpb.ToolInfo:
        async def register() -> tpb.ToolInfo:
            manifest = manifest_from_proto(request.manifest)
            info = await self._registry.register(self._principal_of(context), manifest, bytes(request.wasm_module))
            return _tool_info(info)

        return await self._guard(register, context, "Tools.RegisterTool")

    async def ListTools(  # noqa: N802 (gRPC method name)
        self, request: tpb.ListToolsRequest, context: grpc.aio.ServicerContext
    ) -> tpb.ListToolsResponse:
        async def list_tools() -> tpb.ListToolsResponse:
            tools = self._registry.list(self._principal_of(context))
            return tpb.ListToolsResponse(tools=[_tool_info(t) for t in tools])

        return await self._guard(list_tools, context, "Tools.ListTools")

    async def InvokeTool(  # noqa: N802 (gRPC method name)
        self, request: tpb.InvokeToolRequest, context: grpc.aio.ServicerContext
    ) -> tpb.InvokeToolResponse:
        async def invoke() -> tpb.InvokeToolResponse:
            try:
                result = await self._registry.invoke(self._principal_of(context), request.name, request.arguments_json)
            except ToolError as exc:
                if not exc.in_band:
                    raise
                timing = timing_of(exc)
                return tpb.InvokeToolResponse(
                    error=str(exc),
                    fuel_used=exc.fuel_used,
                    duration_ms=exc.duration_ms,
                    queue_ms=timing.queue_ms,
                    run_ms=timing.run_ms,
                )
            return tpb.InvokeToolResponse(
                output_json=result.output_json,
                fuel_used=result.fuel_used,
                duration_ms=result.duration_ms,
                queue_ms=result.queue_ms,
                run_ms=result.run_ms,
            )

        return await self._guard(invoke, context, "Tools.InvokeTool")

    async def RemoveTool(  # noqa: N802 (gRPC method name)
        self, request: tpb.RemoveToolRequest, context: grpc.aio.ServicerContext
    ) -> tpb.RemoveToolResponse:
        async def remove() -> tpb.RemoveToolResponse:
            await self._registry.remove(self._principal_of(context), request.name)
            return tpb.RemoveToolResponse()

        return await self._guard(remove, context, "Tools.RemoveTool")

    async def _guard(self, call: Callable[[], Awaitable[T]], context: grpc.aio.ServicerContext, method: str) -> T:
        return await guard_unary(call, context, method, self._metrics)


def manifest_from_proto(message: tpb.ToolManifest) -> ToolManifest:
    """A validated manifest from RegisterTool's message; errors name the proto fields.

    Limits left at 0 (unset) take their defaults.
    """
    input_schema = _schema(message.input_schema_json, "manifest.input_schema_json")
    output_schema = _schema(message.output_schema_json, "manifest.output_schema_json")
    capabilities = list(message.capabilities)
    if len(set(capabilities)) != len(capabilities):
        raise ManifestError("manifest.capabilities: lists a capability twice")
    limits = message.limits
    try:
        return ToolManifest(
            name=message.name,
            description=message.description,
            input_schema=input_schema,
            output_schema=output_schema,
            limits=parse_limits(
                {
                    "fuel": limits.fuel,
                    "wall_clock_ms": limits.wall_clock_ms,
                    "memory_mib": limits.memory_mib,
                    "output_bytes": limits.output_bytes,
                },
                zero_means_default=True,
            ),
            required_role=message.required_role,
            capabilities=frozenset(capabilities),
        )
    except ManifestError as exc:
        # The JSON-text fields carry a _json suffix in the proto.
        for field in ("input_schema", "output_schema"):
            if exc.message.startswith(f"manifest.{field}:"):
                raise ManifestError(exc.message.replace(f"manifest.{field}:", f"manifest.{field}_json:", 1)) from None
        raise


def _schema(text: str, where: str) -> Any:
    if not text.strip():
        raise ManifestError(f"{where}: required (a JSON Schema; {{}} accepts any JSON)")
    # Bounded before parsing: a deeply nested schema would exhaust the parser's recursion.
    return load_json(text, where=where, error=ManifestError)


def _tool_info(info: ToolInfo) -> tpb.ToolInfo:
    return tpb.ToolInfo(
        name=info.name, description=info.description, input_schema_json=json.dumps(dict(info.input_schema))
    )
