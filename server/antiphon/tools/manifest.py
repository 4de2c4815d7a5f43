"""A tool's manifest: what it is called, what it takes and returns, what it may use.

Manifests come from a TOML (or JSON) file beside the module in the tools
directory, or from RegisterTool. Both go through ``parse_manifest``, which
rejects anything unknown or out of range with a message that starts with the
field's path ("manifest.limits.memory_mib: must be 1..256").
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from antiphon.errors import quote
from antiphon.tools.schema import MAX_JSON_DEPTH, ManifestError, check_schema

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,63}")
ROLE_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{0,64}")
KNOWN_CAPABILITIES: frozenset[str] = frozenset({"http_fetch"})
MAX_DESCRIPTION_CHARS = 4096
MAX_SCHEMA_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class LimitRange:
    default: int
    minimum: int
    maximum: int


# Defaults suit a small pure function; maxima bound what one call may cost the host.
LIMIT_RANGES: dict[str, LimitRange] = {
    # About one unit per wasm instruction: 200 M is a few tenths of a second of compute.
    "fuel": LimitRange(default=200_000_000, minimum=1, maximum=20_000_000_000),
    "wall_clock_ms": LimitRange(default=1_000, minimum=1, maximum=60_000),
    "memory_mib": LimitRange(default=32, minimum=1, maximum=256),
    "output_bytes": LimitRange(default=64 * 1024, minimum=1, maximum=1024 * 1024),
}


@dataclass(frozen=True, slots=True)
class ToolLimits:
    fuel: int = LIMIT_RANGES["fuel"].default
    wall_clock_ms: int = LIMIT_RANGES["wall_clock_ms"].default
    memory_mib: int = LIMIT_RANGES["memory_mib"].default
    output_bytes: int = LIMIT_RANGES["output_bytes"].default

    def __post_init__(self) -> None:
        for name, bounds in LIMIT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ManifestError(f"manifest.limits.{name}: must be an integer")
            if not bounds.minimum <= value <= bounds.maximum:
                raise ManifestError(f"manifest.limits.{name}: must be {bounds.minimum}..{bounds.maximum}, got {value}")

    @property
    def memory_bytes(self) -> int:
        return self.memory_mib * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ToolManifest:
    name: str
    description: str
    input_schema: Mapping[str, Any]
    output_schema: Mapping[str, Any]
    limits: ToolLimits = field(default_factory=ToolLimits)
    # Empty: any authenticated principal may call the tool.
    required_role: str = ""
    capabilities: frozenset[str] = frozenset()
    input_validator: Draft202012Validator = field(init=False, repr=False, compare=False)
    output_validator: Draft202012Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise ManifestError(f"manifest.name: must match [a-z][a-z0-9_]{{0,63}}, got {quote(self.name)}")
        if not isinstance(self.description, str) or not self.description.strip():
            raise ManifestError("manifest.description: required (say what the tool does; the agent reads it)")
        if len(self.description) > MAX_DESCRIPTION_CHARS:
            raise ManifestError(f"manifest.description: at most {MAX_DESCRIPTION_CHARS} characters")
        if not isinstance(self.required_role, str) or not ROLE_PATTERN.fullmatch(self.required_role):
            raise ManifestError("manifest.required_role: must match [A-Za-z0-9_.:-]{0,64}")
        for capability in sorted(self.capabilities):
            if capability not in KNOWN_CAPABILITIES:
                known = ", ".join(sorted(KNOWN_CAPABILITIES))
                raise ManifestError(f"manifest.capabilities: unknown capability {quote(capability)} (known: {known})")
        inputs = _checked_schema(self.input_schema, "manifest.input_schema")
        if self.input_schema.get("type") != "object":
            # MCP's tools/list requires an object schema for the arguments.
            raise ManifestError('manifest.input_schema: must describe an object ("type": "object")')
        object.__setattr__(self, "input_validator", inputs)
        object.__setattr__(self, "output_validator", _checked_schema(self.output_schema, "manifest.output_schema"))

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain data; ``parse_manifest(m.to_dict()) == m``."""
        return {
            "name": self.name,
            "description": self.description,
            "input_schema": dict(self.input_schema),
            "output_schema": dict(self.output_schema),
            "limits": {
                "fuel": self.limits.fuel,
                "wall_clock_ms": self.limits.wall_clock_ms,
                "memory_mib": self.limits.memory_mib,
                "output_bytes": self.limits.output_bytes,
            },
            "required_role": self.required_role,
            "capabilities": sorted(self.capabilities),
        }


_FIELDS = frozenset({"name", "description", "input_schema", "output_schema", "limits", "required_role", "capabilities"})


def parse_manifest(data: object) -> ToolManifest:
    """A validated manifest from plain data (a parsed TOML or JSON document)."""
    if not isinstance(data, Mapping):
        raise ManifestError("manifest: must be a table/object")
    unknown = sorted(str(k) for k in data if k not in _FIELDS)
    if unknown:
        raise ManifestError(f"manifest.{unknown[0]}: unknown field (known: {', '.join(sorted(_FIELDS))})")
    for required in ("name", "description", "input_schema", "output_schema"):
        if required not in data:
            raise ManifestError(f"manifest.{required}: required")
    capabilities = data.get("capabilities", [])
    if not isinstance(capabilities, list | tuple) or not all(isinstance(c, str) for c in capabilities):
        raise ManifestError("manifest.capabilities: must be a list of strings")
    if len(set(capabilities)) != len(capabilities):
        raise ManifestError("manifest.capabilities: lists a capability twice")
    return ToolManifest(
        name=data["name"],
        description=data["description"],
        input_schema=data["input_schema"],
        output_schema=data["output_schema"],
        limits=parse_limits(data.get("limits", {})),
        required_role=data.get("required_role", ""),
        capabilities=frozenset(capabilities),
    )


def parse_limits(data: object, *, zero_means_default: bool = False) -> ToolLimits:
    """Limits from plain data; absent fields take their defaults.

    ``zero_means_default`` serves protobuf, where an unset number reads as 0.
    """
    if not isinstance(data, Mapping):
        raise ManifestError("manifest.limits: must be a table/object")
    unknown = sorted(str(k) for k in data if k not in LIMIT_RANGES)
    if unknown:
        raise ManifestError(f"manifest.limits.{unknown[0]}: unknown limit (known: {', '.join(LIMIT_RANGES)})")
    values = {name: data.get(name, bounds.default) for name, bounds in LIMIT_RANGES.items()}
    if zero_means_default:
        values = {name: value or LIMIT_RANGES[name].default for name, value in values.items()}
    return ToolLimits(**values)


def load_manifest_file(path: Path) -> ToolManifest:
    """Reads ``name.toml`` or ``name.json``; errors name the file and the field."""
    try:
        text = path.read_text(encoding="utf-8")
        data: object = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read the manifest: {exc}") from None
    try:
        manifest = parse_manifest(data)
    except ManifestError as exc:
        raise ManifestError(f"{path}: {exc.message}") from None
    if manifest.name != path.stem:
        raise ManifestError(f"{path}: manifest.name: must match the file name ({path.stem!r}), got {manifest.name!r}")
    return manifest


def _checked_schema(schema: object, where: str) -> Draft202012Validator:
    try:
        size = len(json.dumps(schema))
    except (TypeError, ValueError, RecursionError):
        raise ManifestError(f"{where}: must be plain JSON data, nested at most {MAX_JSON_DEPTH} levels") from None
    if size > MAX_SCHEMA_BYTES:
        raise ManifestError(f"{where}: at most {MAX_SCHEMA_BYTES} bytes of JSON")
    return check_schema(schema, where)
