"""Context and Tools services: declared in the API, not served by this version.

Every RPC answers UNIMPLEMENTED with a message saying so, rather than the bare
"Method not found!" a client would otherwise get.
"""

from __future__ import annotations

from typing import Any, NoReturn

import grpc

from antiphon.v1 import context_pb2_grpc, tools_pb2_grpc


async def _unimplemented(context: grpc.aio.ServicerContext, what: str) -> NoReturn:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{what} is not available on this server version (planned: see the README's API table)",
    )
    raise AssertionError("unreachable: abort raises")


class ContextServicer(context_pb2_grpc.ContextServicer):
    async def PutDocuments(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "Context.PutDocuments")

    async def Search(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "Context.Search")

    async def DeleteDocuments(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "Context.DeleteDocuments")

    async def GetSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "Context.GetSession")

    async def DeleteSession(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "Context.DeleteSession")


class ToolsServicer(tools_pb2_grpc.ToolsServicer):
    async def RegisterTool(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "Tools.RegisterTool")

    async def ListTools(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "Tools.ListTools")

    async def InvokeTool(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "Tools.InvokeTool")

    async def RemoveTool(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await _unimplemented(context, "Tools.RemoveTool")
