"""Settings of the gateway sections: [auth], [limits] and [pricing] (read by antiphon.gateway).

Lists and tables (list[str], dict[str, list[str]]) are read from the TOML file only, never from
the environment.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal

from antiphon.config_base import require as _require

# Lists and tables (list[str], dict[str, list[str]]) are read from the TOML file only, never from the environment.

GATEWAY_ACTIONS = (
    "tools.register",
    "documents.put",
    "usage.read",
    "usage.read_all",
    "keys.manage",
    "keys.manage_all",
    "quota.set",
    # Sessions belong to the principal that created them; these let a role past that.
    "sessions.delete_any",  # delete another principal's session (right to be forgotten)
    "sessions.read_any",  # read or continue another principal's session: never implied by "*"
)
# Actions a role holds only when named: reading others' conversations is not part of "admin".
EXPLICIT_ACTIONS = frozenset({"sessions.read_any"})
_TENANT_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_ROLE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_METHOD_PATTERN_RE = re.compile(r"^(\*|/[A-Za-z0-9_.]+/(\*|[A-Za-z0-9_]+))$")


def _default_public_methods() -> list[str]:
    return [
        "/grpc.health.v1.Health/*",
        "/grpc.reflection.v1alpha.ServerReflection/*",
        "/grpc.reflection.v1.ServerReflection/*",
    ]


def _default_role_methods() -> dict[str, list[str]]:
    return {
        "admin": ["*"],
        "member": [
            "/antiphon.v1.Conversation/*",
            "/antiphon.v1.Context/*",
            "/antiphon.v1.Tools/ListTools",
            "/antiphon.v1.Tools/InvokeTool",
            "/antiphon.v1.Admin/ListModels",
            "/antiphon.v1.Admin/GetUsage",
        ],
        "reader": [
            "/antiphon.v1.Context/Search",
            "/antiphon.v1.Context/GetSession",
            "/antiphon.v1.Tools/ListTools",
            "/antiphon.v1.Admin/ListModels",
            "/antiphon.v1.Admin/GetUsage",
        ],
    }


def _default_role_actions() -> dict[str, list[str]]:
    return {"admin": ["*"], "member": ["documents.put", "usage.read"], "reader": ["usage.read"]}


@dataclass
class AuthSettings:
    # none: every call runs as the embedded principal (no keys needed); required: every call authenticates.
    mode: Literal["none", "required"] = "none"
    # API keys and quota overrides when context.sessions = "memory" (with "redis" they live in Redis).
    keys_file: str = "var/keys.json"
    # Redis key store: how long a worker may reuse a key it looked up (pub/sub evicts it sooner); 0 = no cache.
    key_cache_ms: int = 1000
    # JWT bearer tokens: accepted when a key is configured; iss and aud are then required and checked.
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_algorithms: list[str] = field(default_factory=lambda: ["HS256", "RS256", "ES256"])
    # HS256 shared secret (at least 32 bytes); PEM public key (RSA: RS256, EC P-256: ES256); JWKS file (by kid).
    jwt_hs256_secret: str = ""
    jwt_public_key_file: str = ""
    jwt_jwks_file: str = ""
    jwt_leeway_s: float = 30.0
    jwt_tenant_claim: str = "tenant"
    jwt_roles_claim: str = "roles"
    jwt_labels_claim: str = "acl_labels"
    # Methods any caller may use without credentials ("/pkg.Service/*" wildcards).
    public_methods: list[str] = field(default_factory=_default_public_methods)
    # RBAC: role -> full method names it may call ("*", "/pkg.Service/*" or "/pkg.Service/Method")...
    role_methods: dict[str, list[str]] = field(default_factory=_default_role_methods)
    # ...and role -> actions it may take inside them (GATEWAY_ACTIONS, or "*": all but EXPLICIT_ACTIONS).
    role_actions: dict[str, list[str]] = field(default_factory=_default_role_actions)

    def __post_init__(self) -> None:
        _require(self.mode in ("none", "required"), "auth.mode", "must be none or required")
        _require(bool(self.keys_file), "auth.keys_file", "must not be empty")
        _require(0 <= self.key_cache_ms <= 1000, "auth.key_cache_ms", "must be 0..1000 (revocation must be prompt)")
        for i, alg in enumerate(self.jwt_algorithms):
            _require(alg in ("HS256", "RS256", "ES256"), f"auth.jwt_algorithms[{i}]", "must be HS256, RS256 or ES256")
        _require(
            not self.jwt_hs256_secret or len(self.jwt_hs256_secret.encode()) >= 32,
            "auth.jwt_hs256_secret",
            "must be at least 32 bytes",
        )
        if self.jwt_enabled:
            _require(bool(self.jwt_issuer), "auth.jwt_issuer", "is required when a JWT key is configured")
            _require(bool(self.jwt_audience), "auth.jwt_audience", "is required when a JWT key is configured")
        _require(0 <= self.jwt_leeway_s <= 300, "auth.jwt_leeway_s", "must be 0..300")
        for name in ("jwt_tenant_claim", "jwt_roles_claim", "jwt_labels_claim"):
            _require(bool(getattr(self, name)), f"auth.{name}", "must not be empty")
        for i, pattern in enumerate(self.public_methods):
            _require(bool(_METHOD_PATTERN_RE.fullmatch(pattern)), f"auth.public_methods[{i}]", "use /pkg.Service/*")
        for role, patterns in self.role_methods.items():
            _require(bool(_ROLE_RE.fullmatch(role)), f"auth.role_methods.{role}", "role names use [A-Za-z0-9._-]")
            for i, pattern in enumerate(patterns):
                _require(
                    bool(_METHOD_PATTERN_RE.fullmatch(pattern)),
                    f"auth.role_methods.{role}[{i}]",
                    "use *, /pkg.Service/* or /pkg.Service/Method",
                )
        for role, actions in self.role_actions.items():
            _require(bool(_ROLE_RE.fullmatch(role)), f"auth.role_actions.{role}", "role names use [A-Za-z0-9._-]")
            for i, action in enumerate(actions):
                _require(
                    action == "*" or action in GATEWAY_ACTIONS,
                    f"auth.role_actions.{role}[{i}]",
                    f"must be * or one of {', '.join(GATEWAY_ACTIONS)}",
                )

    @property
    def jwt_enabled(self) -> bool:
        return bool(self.jwt_hs256_secret or self.jwt_public_key_file or self.jwt_jwks_file)


@dataclass
class LimitsSettings:
    """Per tenant and per credential (API key or JWT subject); 0 means unlimited. Admin.SetQuota overrides
    the tenant values. Buckets live in this process, or in Redis when context.sessions = "redis"."""

    tenant_requests_per_s: float = 0.0
    key_requests_per_s: float = 0.0
    # A request bucket holds this many seconds of its rate (bursts up to rate x burst_s).
    burst_s: float = 1.0
    tenant_streams: int = 0
    key_streams: int = 0
    tenant_llm_tokens_per_min: int = 0
    key_llm_tokens_per_min: int = 0
    tenant_audio_s_per_min: float = 0.0
    key_audio_s_per_min: float = 0.0
    # Spend per tenant per calendar month (UTC), in pricing.currency; when spent, new turns are refused.
    monthly_budget: float = 0.0
    # Longest Converse/Send stream; past it the stream ends with DEADLINE_EXCEEDED. 0 = no limit.
    max_stream_s: float = 3600.0

    def __post_init__(self) -> None:
        for name in (
            "tenant_requests_per_s",
            "key_requests_per_s",
            "tenant_streams",
            "key_streams",
            "tenant_llm_tokens_per_min",
            "key_llm_tokens_per_min",
            "tenant_audio_s_per_min",
            "key_audio_s_per_min",
            "monthly_budget",
        ):
            _require(getattr(self, name) >= 0, f"limits.{name}", "must be >= 0 (0 = unlimited)")
        _require(0 < self.burst_s <= 60, "limits.burst_s", "must be in (0, 60]")
        _require(0 <= self.max_stream_s <= 7 * 24 * 3600, "limits.max_stream_s", "must be 0..604800 (0 = no limit)")


@dataclass
class PricingSettings:
    """Prices that turn metered usage into cost (Admin.GetUsage, budgets)."""

    currency: str = "USD"
    input_tokens_per_million: float = 0.10
    output_tokens_per_million: float = 0.40
    stt_per_minute: float = 0.006
    tts_per_minute: float = 0.015
    tool_call: float = 0.0001
    tool_fuel_per_billion: float = 0.01
    embeddings_per_thousand: float = 0.002
    stored_per_gib: float = 0.10

    def __post_init__(self) -> None:
        _require(bool(re.fullmatch(r"[A-Z]{3}", self.currency)), "pricing.currency", "must be an ISO 4217 code")
        for f in dataclasses.fields(self):
            if f.name != "currency":
                _require(getattr(self, f.name) >= 0, f"pricing.{f.name}", "must be >= 0")
