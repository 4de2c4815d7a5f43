"""The gateway on a real loopback server with auth.mode = "required": every RPC, found by reflection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import grpc
import jwt
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from antiphon.gateway.auth import GENERIC
from antiphon.v1 import admin_pb2, admin_pb2_grpc, context_pb2, conversation_pb2, conversation_pb2_grpc, tools_pb2
from antiphon_client import AntiphonClient
from tests.unit.test_gateway_support import AUDIENCE, ISSUER, RSA_KEY, Secured, pem_public, secured, token

__all__ = ["secured"]  # the fixture, imported for pytest

PUBLIC_SERVICES = ("grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection")


def _declared_methods() -> set[str]:
    """Every method the proto files declare for the Antiphon services."""
    return {
        f"/{s.full_name}/{m.name}"
        for module in (admin_pb2, context_pb2, conversation_pb2, tools_pb2)
        for s in module.DESCRIPTOR.services_by_name.values()
        for m in s.methods
    }


def _methods_by_reflection(address: str) -> list[tuple[str, bool, bool]]:
    """(full method name, client streaming, server streaming) of every service the server reflects.

    Runs on a thread: the reflection client is synchronous and the server shares this test's loop.
    """
    with grpc.insecure_channel(address) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        methods = []
        for service in db.get_services():
            proto = db.FindFileContainingSymbol(service)
            file = descriptor_pb2.FileDescriptorProto()
            proto.CopyToProto(file) if hasattr(proto, "CopyToProto") else file.MergeFrom(proto)
            for s in file.service:
                full = f"{file.package}.{s.name}" if file.package else s.name
                if full != service:
                    continue
                methods += [(f"/{full}/{m.name}", m.client_streaming, m.server_streaming) for m in s.method]
        return methods


async def _call(
    channel: grpc.aio.Channel, method: str, client_streaming: bool, server_streaming: bool, metadata: object = ()
) -> tuple[grpc.StatusCode, str]:
    """Call any method with an empty message (raw bytes); the status it ends with (code, details)."""
    try:
        if client_streaming and server_streaming:
            call = channel.stream_stream(method)(iter([b""]), metadata=metadata, timeout=5)
            async for _ in call:
                pass
        elif server_streaming:
            async for _ in channel.unary_stream(method)(b"", metadata=metadata, timeout=5):
                pass
        elif client_streaming:
            await channel.stream_unary(method)(iter([b""]), metadata=metadata, timeout=5)
        else:
            await channel.unary_unary(method)(b"", metadata=metadata, timeout=5)
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details() or ""
    return grpc.StatusCode.OK, ""


async def test_every_rpc_but_health_and_reflection_needs_credentials(secured: Secured) -> None:
    methods = await asyncio.to_thread(_methods_by_reflection, secured.address)
    services = {m.split("/")[1] for m, _, _ in methods}
    assert {"antiphon.v1.Conversation", "antiphon.v1.Context", "antiphon.v1.Tools", "antiphon.v1.Admin"} <= services
    assert "/antiphon.v1.Admin/CreateKey" in {m for m, _, _ in methods}
    guarded = [m for m in methods if not m[0].startswith(tuple(f"/{s}/" for s in PUBLIC_SERVICES))]
    assert {m for m, _, _ in guarded} == _declared_methods()
    for method, cs, ss in guarded:
        assert await _call(secured.channel, method, cs, ss) == (grpc.StatusCode.UNAUTHENTICATED, GENERIC), method
        bad = (("x-api-key", "ak_0123456789abcdef_" + "A" * 43),)
        assert await _call(secured.channel, method, cs, ss, bad) == (grpc.StatusCode.UNAUTHENTICATED, GENERIC)
    # Health is public (reflection was, to list the methods at all).
    reply = await health_pb2_grpc.HealthStub(secured.channel).Check(health_pb2.HealthCheckRequest())
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # Nothing ran: no model call, no session.
    assert secured.llm.prompts == []


async def test_valid_credentials_pass(secured: Secured) -> None:
    stub = admin_pb2_grpc.AdminStub(secured.channel)
    for md in (
        secured.md("reader"),
        (("authorization", f"Bearer {secured.keys['member']}"),),
        (("authorization", f"Bearer {token('HS256')}"),),
        (("authorization", f"bearer {token('RS256', kid='rsa-1')}"),),
        (("authorization", f"Bearer {token('ES256', kid='ec-1')}"),),
    ):
        reply = await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=md)
        assert reply.models[0].name == "fake"
    async with AntiphonClient(secured.address, api_key=secured.keys["member"]) as client:
        events = [e async for e in client.send("hi")]
        assert events[-1].HasField("turn_end")
    async with AntiphonClient(secured.address, token=token("HS256")) as client:
        conv = await client.conversation()
        assert (await conv.turn("hello")).text == "Hello, world."
        await conv.end()


def _confused() -> str:
    import hashlib
    import hmac
    import json
    from base64 import urlsafe_b64encode

    def b64(data: bytes) -> bytes:
        return urlsafe_b64encode(data).rstrip(b"=")

    claims = {"sub": "x", "tenant": "acme", "iss": ISSUER, "aud": AUDIENCE, "exp": 9999999999, "roles": ["admin"]}
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(claims).encode())
    signature = hmac.new(pem_public(RSA_KEY), signing, hashlib.sha256).digest()
    return (signing + b"." + b64(signature)).decode()


BAD_TOKENS: dict[str, Callable[[], str]] = {
    "expired": lambda: token(exp_in_s=-3600),
    "wrong audience": lambda: token(aud="someone-else"),
    "wrong issuer": lambda: token(iss="https://evil.test"),
    "forged (other key)": lambda: token(key="another-secret-that-is-long-enough-0123456789"),
    "no exp": lambda: token(drop=("exp",)),
    "no tenant": lambda: token(tenant=None),
    "garbage": lambda: "not.a.jwt",
    "alg none": lambda: jwt.encode(
        {"sub": "x", "tenant": "acme", "iss": ISSUER, "aud": AUDIENCE, "exp": 9999999999},
        None,  # type: ignore[arg-type]  # an unsigned token, on purpose
        algorithm="none",
    ),
    # A public key used as an HMAC secret (algorithm confusion).
    "HS256 with the RSA public key": _confused,
    "unknown kid, wrong key type": lambda: token("ES256", kid="rsa-1"),
    "roles not strings": lambda: token(roles=[1, 2]),
    "tenant with bad characters": lambda: token(tenant="acme/../other"),
}


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
async def test_bad_tokens_are_unauthenticated_with_one_message(secured: Secured, case: str) -> None:
    stub = admin_pb2_grpc.AdminStub(secured.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListModels(
            admin_pb2.ListModelsRequest(), metadata=(("authorization", f"Bearer {BAD_TOKENS[case]()}"),)
        )
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == GENERIC


async def test_revoked_key_fails_on_the_next_call(secured: Secured) -> None:
    stub = admin_pb2_grpc.AdminStub(secured.channel)
    created = await stub.CreateKey(admin_pb2.CreateKeyRequest(roles=["reader"]), metadata=secured.md("admin"))
    md = (("x-api-key", created.key),)
    await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=md)
    await stub.RevokeKey(admin_pb2.RevokeKeyRequest(key_id=created.info.key_id), metadata=secured.md("admin"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=md)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == GENERIC


async def test_keys_written_by_another_process_apply_on_the_next_call(secured: Secured, tmp_path: Path) -> None:
    """The CLI writes the keys file while the server runs: creation and revocation show at once."""
    from antiphon.gateway.keys import FileKeyStore, new_key

    other = FileKeyStore(tmp_path / "keys.json")
    text, record = new_key("acme", ["reader"])
    await other.add(record)
    stub = admin_pb2_grpc.AdminStub(secured.channel)
    await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=(("x-api-key", text),))
    await other.revoke(record.key_id)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListModels(admin_pb2.ListModelsRequest(), metadata=(("x-api-key", text),))
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_unauthenticated_stream_runs_nothing(secured: Secured) -> None:
    stub = conversation_pb2_grpc.ConversationStub(secured.channel)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for _ in stub.Send(conversation_pb2.TextRequest(text="hi", session_id="s-unauth")):
            pass
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert secured.llm.prompts == []
    assert await secured.app.sessions.get("acme", "s-unauth") is None
