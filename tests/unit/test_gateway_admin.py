"""Admin key RPCs (CreateKey, ListKeys, RevokeKey) and the `antiphon keys` / `antiphon usage` commands."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest

from antiphon.cli import main
from antiphon.v1 import admin_pb2, admin_pb2_grpc
from tests.unit.test_gateway_support import Secured, secured

__all__ = ["secured"]


async def test_create_list_revoke(secured: Secured) -> None:
    stub = admin_pb2_grpc.AdminStub(secured.channel)
    admin = secured.md("admin")
    created = await stub.CreateKey(
        admin_pb2.CreateKeyRequest(roles=["member"], acl_labels=["public"], description="bot"), metadata=admin
    )
    assert created.key.startswith(f"ak_{created.info.key_id}_")
    assert (created.info.tenant, created.info.subject) == ("acme", f"key:{created.info.key_id}")
    listed = await stub.ListKeys(admin_pb2.ListKeysRequest(), metadata=admin)
    assert created.info.key_id in {k.key_id for k in listed.keys}
    assert created.key.split("_", 2)[2] not in str(listed)  # the secret is never returned again
    # Another tenant's key, created by the operator.
    other = await stub.CreateKey(admin_pb2.CreateKeyRequest(tenant="globex", roles=["reader"]), metadata=admin)
    everyone = await stub.ListKeys(admin_pb2.ListKeysRequest(all_tenants=True), metadata=admin)
    assert {"acme", "globex"} <= {k.tenant for k in everyone.keys}
    revoked = await stub.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=created.info.key_id), metadata=admin)
    assert revoked.info.revoked_us > 0
    again = await stub.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=created.info.key_id), metadata=admin)
    assert again.info.revoked_us == revoked.info.revoked_us
    active = await stub.ListKeys(admin_pb2.ListKeysRequest(), metadata=admin)
    assert created.info.key_id not in {k.key_id for k in active.keys}
    with_revoked = await stub.ListKeys(admin_pb2.ListKeysRequest(include_revoked=True), metadata=admin)
    assert created.info.key_id in {k.key_id for k in with_revoked.keys}
    # The new globex key works, as globex.
    report = await stub.GetUsage(admin_pb2.GetUsageRequest(), metadata=(("x-api-key", other.key),))
    assert report.tenant == "globex"


async def test_key_rules_name_the_field(secured: Secured) -> None:
    stub = admin_pb2_grpc.AdminStub(secured.channel)
    cases: list[tuple[admin_pb2.CreateKeyRequest, grpc.StatusCode, str]] = [
        (admin_pb2.CreateKeyRequest(roles=[]), grpc.StatusCode.INVALID_ARGUMENT, "roles:"),
        (admin_pb2.CreateKeyRequest(roles=["wizard"]), grpc.StatusCode.INVALID_ARGUMENT, "roles: unknown role"),
        (
            admin_pb2.CreateKeyRequest(roles=["member"], acl_labels=["no spaces"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "acl_labels:",
        ),
        (admin_pb2.CreateKeyRequest(tenant="../x", roles=["member"]), grpc.StatusCode.INVALID_ARGUMENT, "tenant:"),
    ]
    for request, code, prefix in cases:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateKey(request, metadata=secured.md("admin"))
        assert (err.value.code(), (err.value.details() or "")[: len(prefix)]) == (code, prefix)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.RevokeKey(admin_pb2.RevokeKeyRequest(key_id="xyz"), metadata=secured.md("admin"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith("key_id:")


async def test_tenant_admin_cannot_escalate(tmp_path: Path) -> None:
    """With a policy that gives a tenant role keys.manage: no admin keys, no other tenants, no foreign revokes."""
    from antiphon.gateway.keys import new_key
    from tests.unit.test_gateway_support import secured_settings, start_secured, stop_secured

    settings = secured_settings(tmp_path)
    settings.auth.role_methods = {
        "admin": ["*"],
        "member": ["/antiphon.v1.Conversation/*"],
        "reader": ["/antiphon.v1.Admin/ListModels"],
        "keyadmin": ["/antiphon.v1.Admin/*"],
    }
    settings.auth.role_actions = {"admin": ["*"], "keyadmin": ["keys.manage", "usage.read"]}
    s = await start_secured(settings)
    try:
        stub = admin_pb2_grpc.AdminStub(s.channel)
        text, record = new_key("acme", ["keyadmin", "member"], ["public"])
        await s.app.gateway.keys.add(record)
        md = (("x-api-key", text),)
        ok = await stub.CreateKey(admin_pb2.CreateKeyRequest(roles=["member"]), metadata=md)
        assert ok.info.roles == ["member"]
        for request, prefix in (
            (admin_pb2.CreateKeyRequest(roles=["admin"]), "roles:"),
            (admin_pb2.CreateKeyRequest(roles=["member"], acl_labels=["hr"]), "acl_labels:"),
            (admin_pb2.CreateKeyRequest(tenant="globex", roles=["member"]), "permission denied"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.CreateKey(request, metadata=md)
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert (err.value.details() or "").startswith(prefix)
        foreign = await stub.CreateKey(
            admin_pb2.CreateKeyRequest(tenant="globex", roles=["member"]), metadata=s.md("admin")
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=foreign.info.key_id), metadata=md)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND  # another tenant's key does not exist for it
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.SetQuota(admin_pb2.SetQuotaRequest(tenant="acme", monthly_budget=1), metadata=md)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        await stop_secured(s)


def test_cli_keys_create_list_revoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ANTIPHON_AUTH_KEYS_FILE", str(tmp_path / "keys.json"))
    assert main(["keys", "create", "--tenant", "acme", "--role", "member", "--label", "hr"]) == 0
    out = capsys.readouterr()
    key = next(line for line in out.out.splitlines() if line.startswith("ak_"))
    key_id = key.split("_")[1]
    assert "not shown again" in out.err
    assert main(["keys", "list"]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing
    assert key.split("_", 2)[2] not in listing
    assert main(["keys", "revoke", key_id]) == 0
    assert "revoked" in capsys.readouterr().out
    assert main(["keys", "list"]) == 0
    assert key_id not in capsys.readouterr().out
    assert main(["keys", "list", "--all"]) == 0
    assert key_id in capsys.readouterr().out
    assert main(["keys", "revoke", "0" * 16]) == 1
    assert main(["keys", "create", "--tenant", "acme", "--role", "wizard"]) == 2
    stored = json.loads((tmp_path / "keys.json").read_text())
    assert key not in json.dumps(stored)


async def test_cli_usage_asks_the_server(secured: Secured, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["usage", "--address", secured.address, "--api-key", secured.keys["reader"], "--json"]
    assert await asyncio.to_thread(main, args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["tenant"], report["currency"], report["input_tokens"]) == ("acme", "USD", 0)
    assert await asyncio.to_thread(main, ["usage", "--address", secured.address, "--api-key", "ak_bad"]) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
