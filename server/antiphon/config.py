"""Typed, validated settings: defaults < TOML file < ANTIPHON_* environment.

Every option has one type and its unit in its name. Environment variables are
``ANTIPHON_<SECTION>_<FIELD>`` (for example ``ANTIPHON_SERVER_PORT=50052``).
Errors name the offending field as ``section.field``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from antiphon.config_base import ConfigError
from antiphon.config_base import require as _require
from antiphon.config_gateway import EXPLICIT_ACTIONS, GATEWAY_ACTIONS, AuthSettings, LimitsSettings, PricingSettings
from antiphon.config_voice import VoiceSettings

__all__ = [
    "EXPLICIT_ACTIONS",
    "GATEWAY_ACTIONS",
    "AuthSettings",
    "ConfigError",
    "LimitsSettings",
    "PricingSettings",
    "Settings",
    "VoiceSettings",
    "load_settings",
]

ENV_PREFIX = "ANTIPHON_"
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Field metadata: this list[str] may also be given as one comma-separated string (how the environment
# writes a list). Other lists and tables stay TOML-only.
ENV_COMMA_LIST = "comma_list"
_HOST_PORT_RE = re.compile(r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})$")


def _host_port(address: str) -> bool:
    match = _HOST_PORT_RE.match(address)
    return match is not None and 1 <= int(match.group(1)) <= 65535


@dataclass
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 50051
    # Largest gRPC message accepted; larger ones fail with RESOURCE_EXHAUSTED.
    max_message_bytes: int = 1 << 20
    # Open Converse/Send streams across the process; more get RESOURCE_EXHAUSTED.
    max_streams: int = 256
    # On SIGTERM: streams get this long to finish before they are cancelled.
    shutdown_grace_s: float = 10.0
    # Longest user text accepted in one turn.
    max_input_chars: int = 16_000

    def __post_init__(self) -> None:
        _require(bool(self.host), "server.host", "must not be empty")
        _require(0 <= self.port <= 65535, "server.port", "must be in 0..65535 (0 picks a free port)")
        _require(1024 <= self.max_message_bytes <= 64 << 20, "server.max_message_bytes", "must be 1 KiB..64 MiB")
        _require(self.max_streams >= 1, "server.max_streams", "must be >= 1")
        _require(0 <= self.shutdown_grace_s <= 600, "server.shutdown_grace_s", "must be 0..600")
        _require(self.max_input_chars >= 1, "server.max_input_chars", "must be >= 1")


@dataclass
class ModelSettings:
    # Where `antiphon models prepare` writes and the server reads models.
    dir: str = "var/models"
    # ONNX Runtime intra-op threads for the LLM decoder.
    llm_threads: int = 2
    # Longest a decode job holds a worker before other sessions get a turn; 0 = one token per job.
    llm_slice_ms: int = 15
    # onnx: models run in this host's processes; triton: on a Triton server (a GPU host in production).
    backend: Literal["onnx", "triton"] = "onnx"
    triton_url: str = "127.0.0.1:8001"
    triton_timeout_s: float = 5.0
    # With backend = triton: start on the embedded models when Triton cannot be reached at start.
    triton_fallback: bool = False

    def __post_init__(self) -> None:
        _require(bool(self.dir), "models.dir", "must not be empty")
        _require(1 <= self.llm_threads <= 64, "models.llm_threads", "must be 1..64")
        _require(0 <= self.llm_slice_ms <= 1000, "models.llm_slice_ms", "must be 0..1000")
        _require(self.backend in ("onnx", "triton"), "models.backend", "must be onnx or triton")
        _require(0 < self.triton_timeout_s <= 120, "models.triton_timeout_s", "must be in (0, 120]")

    @property
    def path(self) -> Path:
        return Path(self.dir).expanduser()


@dataclass
class GenerationSettings:
    """Defaults and limits applied to GenerationOptions from clients."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    # Hard ceiling on max_tokens a client may ask for.
    max_tokens_limit: int = 2048
    # Tokens of history + prompt kept within the model's context.
    context_tokens: int = 4096

    def __post_init__(self) -> None:
        _require(0 < self.temperature <= 2, "generation.temperature", "must be in (0, 2]")
        _require(0 < self.top_p <= 1, "generation.top_p", "must be in (0, 1]")
        _require(1 <= self.max_tokens_limit <= 8192, "generation.max_tokens_limit", "must be 1..8192")
        _require(
            1 <= self.max_tokens <= self.max_tokens_limit,
            "generation.max_tokens",
            "must be 1..generation.max_tokens_limit",
        )
        _require(
            self.max_tokens_limit < self.context_tokens <= 8192,
            "generation.context_tokens",
            "must exceed max_tokens_limit and be <= 8192 (the model's context)",
        )


@dataclass
class ContextSettings:
    # Where session history lives: in this process, or in Redis (shared by workers, survives restarts).
    sessions: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Key prefix in Redis; several deployments may share one Redis.
    redis_prefix: str = "antiphon"
    # Sessions idle this long are forgotten.
    session_ttl_s: int = 24 * 3600
    # Without Redis: where the memory indexes are saved at shutdown and loaded at start; "" keeps them in RAM only.
    memory_dir: str = "var/memory"
    # Redis Sentinel ("host:port" each; comma-separated in the environment). When set, the sentinels
    # name the master's address and redis_url gives only the database, username and password.
    redis_sentinels: list[str] = field(default_factory=list, metadata={ENV_COMMA_LIST: True})
    redis_master: str = "mymaster"  # the name the sentinels monitor the master under
    redis_sentinel_password: str = ""  # the sentinels' own requirepass, if any
    # A write is acknowledged only once this many replicas hold it (WAIT after each write); 0: as soon
    # as the primary has it, so a primary that crashes may take its last writes along (async replication).
    redis_min_replicas_ack: int = 0
    redis_replica_ack_timeout_ms: int = 500  # past this the write fails UNAVAILABLE (it may still persist)

    def __post_init__(self) -> None:
        _require(self.sessions in ("memory", "redis"), "context.sessions", "must be memory or redis")
        _require(
            self.redis_url.startswith(("redis://", "rediss://", "unix://")),
            "context.redis_url",
            "must start with redis://, rediss:// or unix://",
        )
        for i, address in enumerate(self.redis_sentinels):
            _require(_host_port(address), f"context.redis_sentinels[{i}]", f"must be host:port, got {address!r}")
        _require(
            not self.redis_sentinels or self.redis_url.startswith("redis://"),
            "context.redis_url",
            "must start with redis:// when context.redis_sentinels is set (no TLS or unix socket through sentinels)",
        )
        _require(
            bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.redis_master)),
            "context.redis_master",
            "1..64 of [A-Za-z0-9_.-]",
        )
        _require(0 <= self.redis_min_replicas_ack <= 16, "context.redis_min_replicas_ack", "must be 0..16")
        _require(
            10 <= self.redis_replica_ack_timeout_ms <= 1500,
            "context.redis_replica_ack_timeout_ms",
            "must be 10..1500 (below the 2 s Redis command timeout)",
        )
        _require(
            bool(re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", self.redis_prefix)),
            "context.redis_prefix",
            "1..32 of [A-Za-z0-9_.-]",
        )
        _require(60 <= self.session_ttl_s <= 90 * 24 * 3600, "context.session_ttl_s", "must be 60 s..90 days")


@dataclass
class ToolsSettings:
    # Built-in tools (name.wasm + name.toml), visible to every tenant; "" for none.
    dir: str = "tools"
    # Tools tenants register over gRPC, kept across restarts.
    storage_dir: str = "var/tools"
    # Compiled modules (wasmtime serialize), so a restart does not recompile.
    cache_dir: str = "var/tools-cache"
    # URL prefixes the http_fetch capability may reach, comma-separated; empty allows nothing.
    http_allow: str = ""
    http_timeout_s: float = 5.0
    # Tool calls that may run at once.
    workers: int = 4

    def __post_init__(self) -> None:
        _require(0 < self.http_timeout_s <= 60, "tools.http_timeout_s", "must be in (0, 60]")
        _require(1 <= self.workers <= 64, "tools.workers", "must be 1..64")

    @property
    def http_allow_list(self) -> tuple[str, ...]:
        return tuple(u.strip() for u in self.http_allow.split(",") if u.strip())


@dataclass
class TelemetrySettings:
    # Trace exporter: none, console (stderr) or otlp (gRPC to otlp_endpoint).
    traces: Literal["none", "console", "otlp"] = "none"
    otlp_endpoint: str = "http://127.0.0.1:4317"
    # Prometheus /metrics port; 0 disables the endpoint.
    metrics_port: int = 9464
    metrics_host: str = "127.0.0.1"

    def __post_init__(self) -> None:
        _require(self.traces in ("none", "console", "otlp"), "telemetry.traces", "must be none, console or otlp")
        _require(0 <= self.metrics_port <= 65535, "telemetry.metrics_port", "must be in 0..65535")


@dataclass
class LogSettings:
    level: Literal["debug", "info", "warning", "error"] = "info"
    # json: one JSON object per line; text: human-readable.
    format: Literal["json", "text"] = "json"

    def __post_init__(self) -> None:
        _require(self.level in ("debug", "info", "warning", "error"), "log.level", "must be debug|info|warning|error")
        _require(self.format in ("json", "text"), "log.format", "must be json or text")


@dataclass
class AgentProfileSettings:
    system_prompt: str = "You are a helpful, concise assistant."
    # Per-profile overrides of the generation defaults; 0 keeps the default.
    temperature: float = 0.0
    max_tokens: int = 0
    # Server tools this agent may call, comma-separated (names from the tool registry).
    tools: str = ""
    # Other profiles this agent may delegate to, comma-separated; each becomes a tool `agent_<name>`.
    subagents: str = ""
    # react: decide, call tools, repeat, answer; plan: plan the steps first, run them, then answer.
    mode: Literal["react", "plan"] = "react"
    # Most tool-calling steps in one turn.
    max_steps: int = 4

    @property
    def tool_names(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.tools.split(",") if t.strip())

    @property
    def subagent_names(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.subagents.split(",") if t.strip())


DEFAULT_PROFILE = "assistant"


def _default_agents() -> dict[str, AgentProfileSettings]:
    return {
        DEFAULT_PROFILE: AgentProfileSettings(),
        "concise": AgentProfileSettings(
            system_prompt="You answer in one short sentence.", temperature=0.3, max_tokens=64
        ),
        "tools": AgentProfileSettings(
            system_prompt="You are a helpful assistant. Use a tool when it gives a more exact answer.",
            tools="calculator,unit_convert,inventory",
        ),
        # A B2B newsletter: the lead delegates research and drafting, then checks the style guide.
        # The default of voice sessions: answers are heard, not read.
        "voice": AgentProfileSettings(
            system_prompt=(
                "You are a friendly voice assistant on a call. Answer in one or two short spoken sentences, "
                "without lists, markdown or emojis."
            ),
            max_tokens=80,
        ),
        "newsletter": AgentProfileSettings(
            system_prompt=(
                "You lead a B2B newsletter. Ask the researcher for facts, ask the writer for a draft, "
                "then make sure the draft follows the style guide from your knowledge."
            ),
            subagents="researcher,writer",
            max_steps=3,
            max_tokens=200,
        ),
        "researcher": AgentProfileSettings(
            system_prompt="You research facts for a newsletter. Fetch sources with http_get; report facts briefly.",
            tools="http_get",
            max_tokens=120,
        ),
        "writer": AgentProfileSettings(
            system_prompt="You write short, clear newsletter paragraphs from the facts you are given.",
            max_tokens=160,
        ),
    }


@dataclass
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    models: ModelSettings = field(default_factory=ModelSettings)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    context: ContextSettings = field(default_factory=ContextSettings)
    tools: ToolsSettings = field(default_factory=ToolsSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    log: LogSettings = field(default_factory=LogSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)  # gateway
    limits: LimitsSettings = field(default_factory=LimitsSettings)  # gateway
    pricing: PricingSettings = field(default_factory=PricingSettings)  # gateway
    voice: VoiceSettings = field(default_factory=VoiceSettings)
    agents: dict[str, AgentProfileSettings] = field(default_factory=_default_agents)
    default_agent: str = DEFAULT_PROFILE

    @property
    def voice_agent(self) -> str:
        """The profile of a voice session that names none."""
        if self.voice.default_agent:
            return self.voice.default_agent
        return "voice" if "voice" in self.agents else self.default_agent

    def __post_init__(self) -> None:
        _require(bool(self.agents), "agents", "at least one agent profile is required")
        _require(self.default_agent in self.agents, "default_agent", f"no profile named {self.default_agent!r}")
        _require(
            not self.voice.default_agent or self.voice.default_agent in self.agents,
            "voice.default_agent",
            f"no profile named {self.voice.default_agent!r}",
        )
        for name, profile in self.agents.items():
            _require(
                bool(re.fullmatch(r"[a-z0-9_-]{1,64}", name)), f"agents.{name}", "name must match [a-z0-9_-]{1,64}"
            )
            _require(0 <= profile.temperature <= 2, f"agents.{name}.temperature", "must be in [0, 2]")
            _require(
                0 <= profile.max_tokens <= self.generation.max_tokens_limit,
                f"agents.{name}.max_tokens",
                "must be 0..generation.max_tokens_limit",
            )
            _require(profile.mode in ("react", "plan"), f"agents.{name}.mode", "must be react or plan")
            _require(1 <= profile.max_steps <= 16, f"agents.{name}.max_steps", "must be 1..16")
            for sub_name in profile.subagent_names:
                _require(
                    sub_name in self.agents and sub_name != name,
                    f"agents.{name}.subagents",
                    f"{sub_name!r} is not another profile",
                )


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "models": ModelSettings,
    "generation": GenerationSettings,
    "context": ContextSettings,
    "tools": ToolsSettings,
    "telemetry": TelemetrySettings,
    "log": LogSettings,
    "auth": AuthSettings,  # gateway
    "limits": LimitsSettings,  # gateway
    "pricing": PricingSettings,  # gateway
    "voice": VoiceSettings,
}


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Convert a TOML or environment value to the field's declared type."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        allowed = typing.get_args(annotation)
        _require(value in allowed, name, f"must be one of {', '.join(map(str, allowed))}")
        return value
    if annotation is bool:
        if isinstance(value, str):
            _require(value.lower() in ("1", "0", "true", "false"), name, "must be true or false")
            return value.lower() in ("1", "true")
        _require(isinstance(value, bool), name, "must be a boolean")
        return value
    if annotation in (int, float):
        try:
            result = annotation(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: must be a number, got {value!r}") from None
        _require(not isinstance(value, bool), name, "must be a number")
        if annotation is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name}: must be an integer, got {value!r}")
        return result
    if annotation is str:
        _require(isinstance(value, str), name, "must be a string")
        return value
    if origin in (list, dict):  # gateway: lists and tables, from TOML only
        return _coerce_container(value, annotation, name)
    return value


def _coerce_container(value: Any, annotation: Any, name: str) -> Any:
    """list[str] and dict[str, list[str]]: TOML arrays and tables; the environment cannot express them."""
    _require(not isinstance(value, str), name, "set it in the TOML file (lists and tables are not read from env)")
    if typing.get_origin(annotation) is list:
        _require(isinstance(value, list), name, "must be an array of strings")
        for i, item in enumerate(value):
            _require(isinstance(item, str), f"{name}[{i}]", "must be a string")
        return list(value)
    _require(isinstance(value, dict), name, "must be a table")
    _, inner = typing.get_args(annotation)
    return {str(k): _coerce_container(v, inner, f"{name}.{k}") for k, v in value.items()}


def _build_section(cls: type[Any], raw: Mapping[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{section}.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
    comma_lists = {f.name for f in dataclasses.fields(cls) if f.metadata.get(ENV_COMMA_LIST)}
    raw = {k: _comma_list(v) if k in comma_lists and isinstance(v, str) else v for k, v in raw.items()}
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _comma_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from defaults, an optional TOML file and the environment."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    path = path or env.get(ENV_PREFIX + "CONFIG") or None
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config: file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - set(_SECTIONS) - {"agents", "default_agent"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown section")

    sections: dict[str, dict[str, Any]] = {name: dict(data.get(name, {})) for name in _SECTIONS}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == ENV_PREFIX + "CONFIG":
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        section, _, fld = rest.partition("_")
        if section in sections and fld:
            sections[section][fld] = value
        elif rest == "default_agent":
            data["default_agent"] = value

    built = {name: _build_section(cls, sections[name], name) for name, cls in _SECTIONS.items()}
    agents = _default_agents()
    for name, raw in dict(data.get("agents", {})).items():
        if not isinstance(raw, dict):
            raise ConfigError(f"agents.{name}: must be a table")
        agents[name] = _build_section(AgentProfileSettings, raw, f"agents.{name}")
    default_agent = data.get("default_agent", DEFAULT_PROFILE)
    if not isinstance(default_agent, str):
        raise ConfigError("default_agent: must be a string")
    return Settings(agents=agents, default_agent=default_agent, **built)
