"""Authentication: API keys and JWT bearer tokens become a Principal.

Metadata: ``x-api-key: ak_...`` or ``authorization: Bearer <jwt | ak_...>``.
Every failure raises the same Unauthenticated error with the same message; the
reason (expired, wrong audience, forged, revoked...) goes to the server log only.

JWTs: HS256 with ``auth.jwt_hs256_secret``; RS256/ES256 with the PEM key in
``auth.jwt_public_key_file`` or the JWKS in ``auth.jwt_jwks_file`` (chosen by ``kid``).
A token's ``alg`` must be one of ``auth.jwt_algorithms`` and match the key's type,
so a public key is never used as an HMAC secret. Required claims: exp, sub, iss,
aud and the tenant claim; roles and ACL labels come from their claims (labels
default to "public"). Verified tokens are remembered until they expire (at most
60 s), so a client that reuses its token pays for the signature check once a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from antiphon.config import AuthSettings, ConfigError
from antiphon.errors import AntiphonError
from antiphon.gateway.keys import TENANT_RE, KeyStore
from antiphon.gateway.principal import EMBEDDED_PRINCIPAL, PUBLIC_LABEL, Principal

log = logging.getLogger(__name__)

GENERIC = "missing or invalid credentials"
_TOKEN_CACHE_MAX = 4096
_TOKEN_CACHE_S = 60.0


class Unauthenticated(AntiphonError):
    code = grpc.StatusCode.UNAUTHENTICATED

    def __init__(self) -> None:
        super().__init__(GENERIC)


@dataclass(frozen=True, slots=True)
class Identity:
    principal: Principal
    # Scope of the per-credential limits: "ak:<key id>", "jwt:<sub>" or "embedded".
    credential: str


EMBEDDED_IDENTITY = Identity(EMBEDDED_PRINCIPAL, "embedded")


def credentials_of(metadata: Iterable[tuple[str, Any]] | None) -> tuple[str, str] | None:
    """("key", text) or ("bearer", text) from the call's metadata; None if it carries neither."""
    api_key = bearer = None
    for name, value in metadata or ():
        if name == "x-api-key":
            api_key = value
        elif name == "authorization":
            bearer = value
    if isinstance(api_key, str) and api_key:
        return "key", api_key.strip()
    if isinstance(bearer, str):
        scheme, _, token = bearer.strip().partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            token = token.strip()
            return ("key", token) if token.startswith("ak_") else ("bearer", token)
    return None


class JwtVerifier:
    def __init__(self, auth: AuthSettings) -> None:
        self._auth = auth
        self._algorithms = frozenset(auth.jwt_algorithms)
        self._secret = auth.jwt_hs256_secret.encode() if auth.jwt_hs256_secret else None
        self._pem: Any = None
        self._jwks: dict[str, Any] = {}
        if auth.jwt_public_key_file:
            try:
                self._pem = serialization.load_pem_public_key(Path(auth.jwt_public_key_file).expanduser().read_bytes())
            except (OSError, ValueError, TypeError) as exc:
                raise ConfigError(f"auth.jwt_public_key_file: cannot load a PEM public key ({exc})") from None
        if auth.jwt_jwks_file:
            try:
                jwks = jwt.PyJWKSet.from_json(Path(auth.jwt_jwks_file).expanduser().read_text())
            except (OSError, ValueError, jwt.PyJWTError) as exc:
                raise ConfigError(f"auth.jwt_jwks_file: cannot load the JWKS ({exc})") from None
            self._jwks = {k.key_id: k.key for k in jwks.keys if k.key_id}
        self._cache: dict[str, tuple[float, Identity]] = {}

    def verify(self, token: str) -> Identity:
        now = time.time()
        hit = self._cache.get(token)
        if hit is not None and hit[0] > now:
            return hit[1]
        identity, exp = self._verify(token)
        if len(self._cache) >= _TOKEN_CACHE_MAX:
            self._cache = {t: v for t, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= _TOKEN_CACHE_MAX:
                self._cache.clear()
        self._cache[token] = (min(exp, now + _TOKEN_CACHE_S), identity)
        return identity

    def _key_for(self, header: Mapping[str, Any]) -> Any:
        alg = header.get("alg")
        if alg not in self._algorithms:
            raise jwt.InvalidAlgorithmError(f"alg {alg!r} is not accepted")
        if alg == "HS256":
            if self._secret is None:
                raise jwt.InvalidKeyError("no HS256 secret is configured")
            return self._secret
        kid = header.get("kid")
        key = self._jwks.get(kid) if isinstance(kid, str) else None
        if key is None:
            key = self._pem
        wanted = rsa.RSAPublicKey if alg == "RS256" else ec.EllipticCurvePublicKey
        if not isinstance(key, wanted):
            raise jwt.InvalidKeyError(f"no {alg} public key is configured")
        if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name != "secp256r1":
            raise jwt.InvalidKeyError("ES256 needs a P-256 key")
        return key

    def _verify(self, token: str) -> tuple[Identity, float]:
        a = self._auth
        header = jwt.get_unverified_header(token)
        key = self._key_for(header)
        claims = jwt.decode(
            token,
            key,
            algorithms=[str(header["alg"])],
            audience=a.jwt_audience,
            issuer=a.jwt_issuer,
            leeway=a.jwt_leeway_s,
            options={"require": ["exp", "sub", "iss", "aud"], "verify_signature": True},
        )
        tenant = claims.get(a.jwt_tenant_claim)
        if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
            raise jwt.MissingRequiredClaimError(a.jwt_tenant_claim)
        subject = str(claims["sub"])
        roles = _string_set(claims.get(a.jwt_roles_claim, ()), a.jwt_roles_claim)
        labels = _string_set(claims.get(a.jwt_labels_claim, ()), a.jwt_labels_claim) or frozenset({PUBLIC_LABEL})
        principal = Principal(tenant=tenant, subject=subject, roles=roles, labels=labels)
        return Identity(principal, f"jwt:{subject}"), float(claims["exp"])


def _string_set(value: Any, claim: str) -> frozenset[str]:
    """A list of strings, or one space-separated string (as OAuth scopes are written)."""
    if isinstance(value, str):
        return frozenset(value.split())
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise jwt.InvalidTokenError(f"claim {claim!r} must be a list of strings")


class Authenticator:
    def __init__(self, auth: AuthSettings, keys: KeyStore) -> None:
        self.required = auth.mode == "required"
        self._keys = keys
        self._jwt = JwtVerifier(auth) if auth.jwt_enabled else None

    async def authenticate(self, metadata: Iterable[tuple[str, Any]] | None) -> Identity:
        """The caller's identity; raises Unauthenticated (or Unavailable when the key store is down)."""
        if not self.required:
            return EMBEDDED_IDENTITY
        found = credentials_of(metadata)
        if found is None:
            log.debug("unauthenticated: no credentials")
            raise Unauthenticated
        kind, text = found
        if kind == "key":
            record = await self._keys.verify(text)
            if record is None:
                log.info("unauthenticated: unknown, forged or revoked API key")
                raise Unauthenticated
            principal = Principal(record.tenant, record.subject, record.roles, record.labels)
            return Identity(principal, f"ak:{record.key_id}")
        if self._jwt is None:
            log.info("unauthenticated: a bearer token, but no JWT key is configured")
            raise Unauthenticated
        try:
            return self._jwt.verify(text)
        except (jwt.PyJWTError, KeyError, ValueError, TypeError) as exc:
            log.info("unauthenticated: %s", exc)
            raise Unauthenticated from None
