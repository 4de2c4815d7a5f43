"""Authentication without a server: JWT algorithms and keys, claims, API keys, metadata, config."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from antiphon.config import AuthSettings, ConfigError, load_settings
from antiphon.gateway.auth import (
    EMBEDDED_IDENTITY,
    GENERIC,
    Authenticator,
    JwtVerifier,
    Unauthenticated,
    credentials_of,
)
from antiphon.gateway.keys import FileKeyStore, new_key
from tests.unit.test_gateway_support import AUDIENCE, EC_KEY, HS_SECRET, ISSUER, RSA_KEY, pem_public, token, write_jwks


def _auth(tmp_path: Path, **kw: object) -> AuthSettings:
    base: dict[str, object] = {
        "mode": "required",
        "keys_file": str(tmp_path / "keys.json"),
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        "jwt_hs256_secret": HS_SECRET,
    }
    base.update(kw)
    return AuthSettings(**base)  # type: ignore[arg-type]


def test_each_algorithm_with_its_key(tmp_path: Path) -> None:
    (tmp_path / "rsa.pem").write_bytes(pem_public(RSA_KEY))
    (tmp_path / "ec.pem").write_bytes(pem_public(EC_KEY))
    rsa_pem = JwtVerifier(_auth(tmp_path, jwt_public_key_file=str(tmp_path / "rsa.pem")))
    ec_pem = JwtVerifier(_auth(tmp_path, jwt_public_key_file=str(tmp_path / "ec.pem")))
    jwks = JwtVerifier(_auth(tmp_path, jwt_jwks_file=str(write_jwks(tmp_path / "jwks.json"))))
    ident = rsa_pem.verify(token("RS256", roles="member reader", labels=["public", "hr"], sub="ada"))
    assert ident.principal.tenant == "acme"
    assert ident.principal.subject == "ada"
    assert ident.principal.roles == {"member", "reader"}
    assert ident.principal.labels == {"public", "hr"}
    assert ident.credential == "jwt:ada"
    assert ec_pem.verify(token("ES256")).principal.labels == {"public"}  # labels default to public
    assert jwks.verify(token("RS256", kid="rsa-1")).principal.tenant == "acme"
    assert jwks.verify(token("ES256", kid="ec-1")).principal.tenant == "acme"
    assert rsa_pem.verify(token("HS256")).principal.tenant == "acme"
    for verifier, bad in (
        (rsa_pem, token("ES256")),  # an EC token, only an RSA key
        (ec_pem, token("RS256")),
        (jwks, token("ES256", kid="rsa-1")),  # kid names a key of the wrong type
    ):
        with pytest.raises(jwt.PyJWTError, match="key"):
            verifier.verify(bad)


def test_algorithms_can_be_restricted(tmp_path: Path) -> None:
    only_rs = JwtVerifier(
        _auth(tmp_path, jwt_algorithms=["RS256"], jwt_jwks_file=str(write_jwks(tmp_path / "jwks.json")))
    )
    only_rs.verify(token("RS256", kid="rsa-1"))
    with pytest.raises(jwt.PyJWTError, match="not accepted"):
        only_rs.verify(token("HS256"))


async def test_authenticator_failures_look_alike(tmp_path: Path) -> None:
    keys = FileKeyStore(tmp_path / "keys.json")
    text, record = new_key("acme", ["member"])
    await keys.add(record)
    auth = Authenticator(_auth(tmp_path), keys)
    ident = await auth.authenticate((("x-api-key", text),))
    assert (ident.principal.tenant, ident.credential) == ("acme", f"ak:{record.key_id}")
    assert (await auth.authenticate((("authorization", f"Bearer {token()}"),))).principal.roles == {"member"}
    await keys.revoke(record.key_id)
    for metadata in (
        (),
        (("x-api-key", text),),  # revoked
        (("x-api-key", ""),),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer"),),
        (("authorization", f"Bearer {token(exp_in_s=-120)}"),),  # beyond the 30 s leeway
        (("authorization", f"Bearer {token(aud='other')}"),),
    ):
        with pytest.raises(Unauthenticated) as err:
            await auth.authenticate(metadata)
        assert err.value.message == GENERIC
    # Without a JWT key configured, bearer tokens fail the same way.
    no_jwt = Authenticator(AuthSettings(mode="required", keys_file=str(tmp_path / "keys.json")), keys)
    with pytest.raises(Unauthenticated):
        await no_jwt.authenticate((("authorization", f"Bearer {token()}"),))
    # auth.mode = "none": every call is the embedded principal, credentials or not.
    embedded = Authenticator(AuthSettings(keys_file=str(tmp_path / "keys.json")), keys)
    assert await embedded.authenticate(()) is EMBEDDED_IDENTITY


def test_verified_tokens_are_remembered_until_they_expire(tmp_path: Path) -> None:
    verifier = JwtVerifier(_auth(tmp_path))
    t = token()
    first = verifier.verify(t)
    assert verifier.verify(t) is first
    expired = token(exp_in_s=-120)
    verifier._cache[expired] = (0.0, first)  # a stale entry is never served
    with pytest.raises(jwt.PyJWTError, match="expired"):
        verifier.verify(expired)


def test_credentials_from_metadata() -> None:
    assert credentials_of(()) is None
    assert credentials_of((("x-api-key", "ak_x"),)) == ("key", "ak_x")
    assert credentials_of((("authorization", "Bearer ak_x"),)) == ("key", "ak_x")
    assert credentials_of((("authorization", "bearer  e.y.z "),)) == ("bearer", "e.y.z")
    assert credentials_of((("authorization", "Token e.y.z"),)) is None


def test_auth_config_names_the_field(tmp_path: Path) -> None:
    for env, field in (
        ({"ANTIPHON_AUTH_MODE": "sometimes"}, "auth.mode"),
        ({"ANTIPHON_AUTH_JWT_HS256_SECRET": "short"}, "auth.jwt_hs256_secret"),
        ({"ANTIPHON_AUTH_JWT_HS256_SECRET": HS_SECRET}, "auth.jwt_issuer"),
        ({"ANTIPHON_AUTH_KEY_CACHE_MS": "5000"}, "auth.key_cache_ms"),
        ({"ANTIPHON_AUTH_JWT_ALGORITHMS": "HS256"}, "auth.jwt_algorithms"),
    ):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            load_settings(None, env)
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ConfigError, match=r"auth\.jwt_public_key_file"):
        JwtVerifier(_auth(tmp_path, jwt_public_key_file=str(tmp_path / "bad.pem")))
