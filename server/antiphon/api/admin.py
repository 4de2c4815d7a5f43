"""Admin service: usage and cost, quotas, API keys, models.

The gateway has already authenticated the caller and checked the method's action
(usage.read, quota.set, keys.manage) before these run; here the finer rules apply:
another tenant than the caller's needs the "_all" action, and a key never carries
roles or labels its creator lacks (unless the creator holds keys.manage_all).
Errors map once, through ``guard_unary``; messages name the request field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from antiphon.api.boundary import guard_unary
from antiphon.errors import InvalidArgument, NotFound, PermissionDenied, quote
from antiphon.gateway.interceptor import Gateway
from antiphon.gateway.keys import ApiKey, Quota, check_tenant, new_key
from antiphon.gateway.principal import Principal
from antiphon.gateway.rbac import require
from antiphon.gateway.usage import check_period
from antiphon.inference.llm import LLM
from antiphon.telemetry.metrics import Metrics
from antiphon.v1 import admin_pb2 as apb
from antiphon.v1 import admin_pb2_grpc

T = TypeVar("T")
PrincipalOf = Callable[[grpc.aio.ServicerContext], Principal]
KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, llm: LLM, gateway: Gateway, principal_of: PrincipalOf, metrics: Metrics) -> None:
        self._llm = llm
        self._gw = gateway
        self._principal_of = principal_of
        self._metrics = metrics

    def _guard(self, context: grpc.aio.ServicerContext, name: str, call: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return guard_unary(call, context, f"Admin.{name}", self._metrics)

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

    async def GetUsage(  # noqa: N802 (gRPC method name)
        self, request: apb.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> apb.UsageReport:
        principal = self._principal_of(context)

        async def call() -> apb.UsageReport:
            tenant = _tenant(request.tenant, principal, "usage.read", "usage.read_all")
            r = await self._gw.metering.report(tenant, _period(request.period))
            u = r.usage
            return apb.UsageReport(
                tenant=r.tenant,
                period=r.period,
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                audio_in_seconds=u.stt_seconds,
                audio_out_seconds=u.tts_seconds,
                tool_calls=u.tool_calls,
                stored_bytes=u.stored_bytes,
                cost=r.cost,
                currency=r.currency,
                tool_fuel=u.tool_fuel,
                embeddings=u.embeddings,
                monthly_budget=r.budget,
                budget_exhausted=r.exhausted,
            )

        return await self._guard(context, "GetUsage", call)

    async def SetQuota(  # noqa: N802 (gRPC method name)
        self, request: apb.SetQuotaRequest, context: grpc.aio.ServicerContext
    ) -> apb.SetQuotaResponse:
        principal = self._principal_of(context)

        async def call() -> apb.SetQuotaResponse:
            require(principal, "quota.set")
            if not request.tenant:
                raise InvalidArgument("tenant: required")
            check_tenant(request.tenant, "tenant")
            budget = request.monthly_budget if request.HasField("monthly_budget") else None
            if budget is not None and not (math.isfinite(budget) and budget >= 0):
                raise InvalidArgument("monthly_budget: must be a finite amount >= 0 (0 = no budget)")
            quota = Quota(
                monthly_budget=budget,
                requests_per_s=float(request.requests_per_second) if request.HasField("requests_per_second") else None,
                streams=request.max_concurrent_streams if request.HasField("max_concurrent_streams") else None,
                llm_tokens_per_min=request.llm_tokens_per_minute if request.HasField("llm_tokens_per_minute") else None,
                audio_s_per_min=(
                    float(request.audio_seconds_per_minute) if request.HasField("audio_seconds_per_minute") else None
                ),
            )
            overrides = await self._gw.keys.set_quota(request.tenant, quota, reset=request.reset)
            return apb.SetQuotaResponse(quota=self._effective(request.tenant, overrides))

        return await self._guard(context, "SetQuota", call)

    def _effective(self, tenant: str, o: Quota) -> apb.Quota:
        s = self._gw.settings.limits
        return apb.Quota(
            tenant=tenant,
            monthly_budget=s.monthly_budget if o.monthly_budget is None else o.monthly_budget,
            requests_per_second=s.tenant_requests_per_s if o.requests_per_s is None else o.requests_per_s,
            max_concurrent_streams=s.tenant_streams if o.streams is None else o.streams,
            llm_tokens_per_minute=s.tenant_llm_tokens_per_min if o.llm_tokens_per_min is None else o.llm_tokens_per_min,
            audio_seconds_per_minute=s.tenant_audio_s_per_min if o.audio_s_per_min is None else o.audio_s_per_min,
        )

    async def CreateKey(  # noqa: N802 (gRPC method name)
        self, request: apb.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> apb.CreateKeyResponse:
        principal = self._principal_of(context)

        async def call() -> apb.CreateKeyResponse:
            tenant = _tenant(request.tenant, principal, "keys.manage", "keys.manage_all")
            roles = frozenset(request.roles)
            known = self._gw.policy.roles
            for role in sorted(roles):
                if role not in known:
                    raise InvalidArgument(f"roles: unknown role {quote(role)} (known: {', '.join(sorted(known))})")
            labels = frozenset(request.acl_labels)
            if not self._gw.policy.allows(principal, "keys.manage_all"):
                if not roles <= principal.roles:
                    raise PermissionDenied("roles: a key cannot carry a role its creator does not hold")
                if not labels <= principal.labels:
                    raise PermissionDenied("acl_labels: a key cannot carry a label its creator does not hold")
            if len(request.subject) > 128:
                raise InvalidArgument("subject: at most 128 characters")
            text, record = new_key(tenant, roles, labels, request.subject, request.description)
            await self._gw.keys.add(record)
            return apb.CreateKeyResponse(info=key_info(record), key=text)

        return await self._guard(context, "CreateKey", call)

    async def ListKeys(  # noqa: N802 (gRPC method name)
        self, request: apb.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> apb.ListKeysResponse:
        principal = self._principal_of(context)

        async def call() -> apb.ListKeysResponse:
            tenant: str | None
            if request.all_tenants:
                require(principal, "keys.manage_all")
                tenant = None
            else:
                tenant = _tenant(request.tenant, principal, "keys.manage", "keys.manage_all")
            keys = await self._gw.keys.list(tenant)
            return apb.ListKeysResponse(keys=[key_info(k) for k in keys if request.include_revoked or not k.revoked])

        return await self._guard(context, "ListKeys", call)

    async def RevokeKey(  # noqa: N802 (gRPC method name)
        self, request: apb.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> apb.RevokeKeyResponse:
        principal = self._principal_of(context)

        async def call() -> apb.RevokeKeyResponse:
            require(principal, "keys.manage")
            if not KEY_ID_RE.fullmatch(request.key_id):
                raise InvalidArgument("key_id: 16 hexadecimal characters (the part after ak_)")
            record = await self._gw.keys.get(request.key_id)
            foreign = record is not None and record.tenant != principal.tenant
            if record is None or (foreign and not self._gw.policy.allows(principal, "keys.manage_all")):
                raise NotFound(f"key_id: no key {quote(request.key_id)}")
            revoked = await self._gw.keys.revoke(request.key_id)
            if revoked is None:
                raise NotFound(f"key_id: no key {quote(request.key_id)}")
            return apb.RevokeKeyResponse(info=key_info(revoked))

        return await self._guard(context, "RevokeKey", call)


def _period(period: str) -> str:
    """check_period, with a message that repeats at most the start of what the client sent."""
    try:
        return check_period(period)
    except InvalidArgument:
        raise InvalidArgument(f"period: {quote(period)} is not a month as YYYY-MM") from None


def _tenant(requested: str, principal: Principal, own_action: str, any_action: str) -> str:
    """The tenant a request names (empty: the caller's); another tenant needs ``any_action``."""
    tenant = requested or principal.tenant
    check_tenant(tenant, "tenant")
    if tenant == principal.tenant:
        require(principal, own_action)
    else:
        require(principal, any_action)
    return tenant


def key_info(k: ApiKey) -> apb.ApiKeyInfo:
    return apb.ApiKeyInfo(
        key_id=k.key_id,
        tenant=k.tenant,
        subject=k.subject,
        roles=sorted(k.roles),
        acl_labels=sorted(k.labels),
        description=k.description,
        created_us=k.created_us,
        revoked_us=k.revoked_us,
    )
