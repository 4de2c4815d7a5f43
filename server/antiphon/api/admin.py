"""Admin service: ListModels now; usage and quotas come with the gateway."""

from __future__ import annotations

from typing import Any

import grpc

from antiphon.inference.llm import LLM
from antiphon.v1 import admin_pb2 as apb
from antiphon.v1 import admin_pb2_grpc


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, llm: LLM) -> None:
        self._llm = llm

    async def ListModels(  # noqa: N802 (gRPC method name)
        self, request: apb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListModelsResponse:
        d = self._llm.description
        return apb.ListModelsResponse(
            models=[
                apb.ModelInfo(
                    capability="llm", name=d.name, backend=d.backend, path=d.path, quantization=d.quantization
                )
            ]
        )

    async def GetUsage(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Admin.GetUsage is not available on this server version")

    async def SetQuota(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Admin.SetQuota is not available on this server version")
