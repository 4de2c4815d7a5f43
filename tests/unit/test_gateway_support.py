"""Shared helpers of the gateway tests: a server with auth.mode = "required", keys, tokens, trailers."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # no stubs shipped

from antiphon.app import App
from antiphon.config import Settings
from antiphon.context.documents import DocumentService
from antiphon.context.memory import MemoryStore
from antiphon.gateway.keys import new_key
from tests.conftest import test_settings
from tests.fakes import FakeEmbedder, FakeLLM

ISSUER = "https://issuer.test"
AUDIENCE = "antiphon-test"
HS_SECRET = "s3cret-for-tests-only-0123456789abcdef"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem_public(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def write_jwks(path: Path) -> Path:
    """A JWKS with the RSA key (kid "rsa-1") and the EC key (kid "ec-1")."""
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
    ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
    path.write_text(json.dumps({"keys": [rsa_jwk, ec_jwk]}))
    return path


def token(
    alg: str = "HS256",
    *,
    tenant: str | None = "acme",
    sub: str = "user-1",
    roles: Any = ("member",),
    labels: Any = None,
    exp_in_s: float = 300,
    iss: str = ISSUER,
    aud: str = AUDIENCE,
    key: Any = None,
    kid: str | None = None,
    drop: tuple[str, ...] = (),
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "iss": iss, "aud": aud, "iat": now, "exp": now + int(exp_in_s)}
    if tenant is not None:
        claims["tenant"] = tenant
    if roles is not None:
        claims["roles"] = list(roles) if not isinstance(roles, str) else roles
    if labels is not None:
        claims["acl_labels"] = list(labels)
    for name in drop:
        claims.pop(name, None)
    if key is None:
        key = {"HS256": HS_SECRET, "RS256": RSA_KEY, "ES256": EC_KEY}[alg]
    headers = {"kid": kid} if kid else None
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def secured_settings(tmp_path: Path, **sections: dict[str, object]) -> Settings:
    auth: dict[str, object] = {
        "mode": "required",
        "keys_file": str(tmp_path / "keys.json"),
        "jwt_hs256_secret": HS_SECRET,
        "jwt_jwks_file": str(write_jwks(tmp_path / "jwks.json")),
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
    }
    auth.update(sections.pop("auth", {}))
    return test_settings(auth=auth, **sections)


@dataclass
class Secured:
    app: App
    channel: grpc.aio.Channel
    llm: FakeLLM
    keys: dict[str, str]  # role -> API key of tenant "acme"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"

    def md(self, role: str) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.keys[role]),)


async def start_secured(settings: Settings, llm: FakeLLM | None = None) -> Secured:
    llm = llm or FakeLLM()
    app = App(settings, llm=llm, documents=DocumentService(MemoryStore(), FakeEmbedder()))
    await app.start()
    keys = {}
    for role in ("admin", "member", "reader"):
        text, record = new_key("acme", [role], ["public"], subject=f"{role}@acme")
        await app.gateway.keys.add(record)
        keys[role] = text
    return Secured(app, grpc.aio.insecure_channel(f"127.0.0.1:{app.port}"), llm, keys)


async def stop_secured(s: Secured) -> None:
    await s.channel.close()
    await s.app.stop(grace_s=1)


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[Secured]:
    s = await start_secured(secured_settings(tmp_path))
    try:
        yield s
    finally:
        await stop_secured(s)


def retry_delays_ms(err: grpc.aio.AioRpcError) -> tuple[int, int]:
    """(RetryInfo delay from grpc-status-details-bin, retry-after-ms), both in ms."""
    trailers = dict(err.trailing_metadata() or ())
    status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
    assert status.code == err.code().value[0]
    assert status.message == err.details()
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    delay_ms = info.retry_delay.seconds * 1000 + info.retry_delay.nanos // 1_000_000
    return delay_ms, int(trailers["retry-after-ms"])
