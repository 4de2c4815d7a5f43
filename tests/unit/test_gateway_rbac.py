"""RBAC: the policy's matching, its config, and the roles x RPCs matrix on a live server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from antiphon.config import ConfigError, load_settings
from antiphon.errors import PermissionDenied
from antiphon.gateway.principal import Principal
from antiphon.gateway.rbac import DEFAULT_POLICY, DENIED, Policy, require
from antiphon.v1 import admin_pb2, admin_pb2_grpc, context_pb2, conversation_pb2, tools_pb2
from tests.unit.test_gateway_support import Secured, secured, token

__all__ = ["secured"]

ALL_METHODS = sorted(
    (f"/{s.full_name}/{m.name}", m.client_streaming, m.server_streaming)
    for module in (admin_pb2, context_pb2, conversation_pb2, tools_pb2)
    for s in module.DESCRIPTOR.services_by_name.values()
    for m in s.methods
)


def test_patterns_and_actions() -> None:
    policy = Policy(
        {"ops": ["/antiphon.v1.Admin/*"], "bot": ["/antiphon.v1.Conversation/Send"], "root": ["*"]},
        {"ops": ["usage.read", "quota.set"], "root": ["*"]},
        ["/grpc.health.v1.Health/*"],
    )
    ops, bot, root = frozenset({"ops"}), frozenset({"bot"}), frozenset({"root"})
    assert policy.allows_method(ops, "/antiphon.v1.Admin/ListModels")
    assert policy.allows_method(ops, "/antiphon.v1.Admin/SetQuota")  # quota.set granted
    assert not policy.allows_method(ops, "/antiphon.v1.Admin/CreateKey")  # keys.manage is not
    assert not policy.allows_method(ops, "/antiphon.v1.AdminX/ListModels")
    assert policy.allows_method(bot, "/antiphon.v1.Conversation/Send")
    assert not policy.allows_method(bot, "/antiphon.v1.Conversation/Converse")
    assert policy.allows_method(root, "/anything/At_all")
    assert not policy.allows_method(frozenset({"nobody"}), "/antiphon.v1.Admin/ListModels")
    assert not policy.allows_method(frozenset(), "/antiphon.v1.Admin/ListModels")
    assert policy.is_public("/grpc.health.v1.Health/Check")
    assert not policy.is_public("/antiphon.v1.Admin/ListModels")
    assert policy.roles == {"ops", "bot", "root"}


def test_require_uses_the_default_policy_outside_a_call() -> None:
    member = Principal("acme", "m", frozenset({"member"}), frozenset({"public"}))
    require(member, "documents.put")
    with pytest.raises(PermissionDenied, match=DENIED):
        require(member, "quota.set")
    with pytest.raises(ValueError, match="unknown action"):
        DEFAULT_POLICY.require(member, "fly")


def test_policy_from_toml_and_not_from_env(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(
        '[auth]\npublic_methods = ["/grpc.health.v1.Health/*"]\n'
        '[auth.role_methods]\nops = ["/antiphon.v1.Admin/*"]\n'
        '[auth.role_actions]\nops = ["usage.read_all", "usage.read"]\n'
    )
    s = load_settings(path, {})
    assert s.auth.role_methods == {"ops": ["/antiphon.v1.Admin/*"]}
    assert s.auth.role_actions == {"ops": ["usage.read_all", "usage.read"]}
    with pytest.raises(ConfigError, match=r"auth\.public_methods: set it in the TOML file"):
        load_settings(path, {"ANTIPHON_AUTH_PUBLIC_METHODS": "/x/*"})
    bad = tmp_path / "bad.toml"
    bad.write_text('[auth.role_actions]\nops = ["fly"]\n')
    with pytest.raises(ConfigError, match=r"auth\.role_actions\.ops\[0\]"):
        load_settings(bad, {})
    bad.write_text('[auth.role_methods]\nops = ["Admin.*"]\n')
    with pytest.raises(ConfigError, match=r"auth\.role_methods\.ops\[0\]"):
        load_settings(bad, {})
    bad.write_text("[auth.role_methods]\nops = [1]\n")
    with pytest.raises(ConfigError, match=r"auth\.role_methods\.ops\[0\]: must be a string"):
        load_settings(bad, {})


async def _status(secured: Secured, method: str, cs: bool, ss: bool, role: str) -> tuple[grpc.StatusCode, str]:
    md = secured.md(role)
    ch = secured.channel
    try:
        if cs and ss:
            async for _ in ch.stream_stream(method)(iter([b""]), metadata=md, timeout=5):
                pass
        elif ss:
            async for _ in ch.unary_stream(method)(b"", metadata=md, timeout=5):
                pass
        else:
            await ch.unary_unary(method)(b"", metadata=md, timeout=5)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def test_rbac_matrix_roles_by_rpcs(secured: Secured) -> None:
    """Every role x every RPC: refused by the gateway exactly where the default policy says so."""
    policy = secured.app.gateway.policy
    table = []
    for role in ("admin", "member", "reader"):
        for method, cs, ss in ALL_METHODS:
            code, details = await _status(secured, method, cs, ss, role)
            gateway_denied = code == grpc.StatusCode.PERMISSION_DENIED and details == DENIED
            allowed = policy.allows_method(frozenset({role}), method)
            assert code != grpc.StatusCode.UNAUTHENTICATED, (role, method)
            assert gateway_denied is not allowed, (role, method, code, details)
            table.append((role, method, allowed))
    granted = {(r, m.rsplit("/", 1)[1]) for r, m, ok in table if ok}
    assert ("reader", "Search") in granted
    assert ("reader", "Converse") not in granted
    assert ("reader", "PutDocuments") not in granted
    assert ("member", "PutDocuments") in granted
    assert ("member", "RegisterTool") not in granted
    assert ("member", "CreateKey") not in granted
    assert ("member", "SetQuota") not in granted
    assert sum(1 for r, _, ok in table if r == "admin" and ok) == len(ALL_METHODS)
    assert secured.llm.prompts == []  # nothing reached the model: every Converse/Send failed validation


async def test_request_tenant_other_than_the_callers_is_denied(secured: Secured) -> None:
    stub = admin_pb2_grpc.AdminStub(secured.channel)
    member_jwt = (("authorization", f"Bearer {token(tenant='acme', roles=['member'])}"),)
    await stub.GetUsage(admin_pb2.GetUsageRequest(tenant="acme"), metadata=member_jwt)
    for request in (
        stub.GetUsage(admin_pb2.GetUsageRequest(tenant="globex"), metadata=member_jwt),
        stub.GetUsage(admin_pb2.GetUsageRequest(tenant="globex"), metadata=secured.md("reader")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await request
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert err.value.details() == DENIED
    # An operator (usage.read_all) may read any tenant.
    report = await stub.GetUsage(admin_pb2.GetUsageRequest(tenant="globex"), metadata=secured.md("admin"))
    assert report.tenant == "globex"
    # A JWT of tenant globex cannot act on acme's keys either.
    globex_admin = (("authorization", f"Bearer {token(tenant='globex', roles=['member'])}"),)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListKeys(admin_pb2.ListKeysRequest(tenant="acme"), metadata=globex_admin)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_roles_unknown_to_the_policy_get_nothing(secured: Secured) -> None:
    stub = admin_pb2_grpc.AdminStub(secured.channel)
    nobody = (("authorization", f"Bearer {token(roles=['intern'])}"),)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=nobody)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert err.value.details() == DENIED
