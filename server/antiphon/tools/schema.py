"""JSON Schema glue: check schemas in manifests, validate arguments and outputs.

Schemas are JSON Schema draft 2020-12. References resolve only inside the
schema itself (and to the draft meta-schemas): left to its defaults,
jsonschema would fetch an unknown ``$ref`` URL over HTTP, which a tenant's
schema must never make the server do.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from referencing import Registry
from referencing.exceptions import Unresolvable

from antiphon.errors import InvalidArgument
from antiphon.tools.errors import ToolError, ToolErrorKind

# One validation error is enough to act on; the message stays short.
_MAX_MESSAGE_CHARS = 300


class ManifestError(InvalidArgument):
    """A manifest field is invalid. The message starts with the field's path."""


def check_schema(schema: object, where: str) -> Draft202012Validator:
    """A validator for ``schema``, or ManifestError naming ``where``."""
    if not isinstance(schema, Mapping):
        raise ManifestError(f"{where}: must be a JSON object (a JSON Schema), got {_type_name(schema)}")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        path = _path(exc.absolute_path)
        at = f" at {path}" if path else ""
        raise ManifestError(f"{where}: not a valid JSON Schema (draft 2020-12){at}: {_short(exc.message)}") from None
    # An explicit registry turns off retrieval (jsonschema adds the meta-schemas to it).
    return Draft202012Validator(schema, registry=Registry())


def validate(validator: Draft202012Validator, instance: Any, *, kind: ToolErrorKind, where: str) -> None:
    """Raise ToolError(kind) naming the first failing location under ``where``."""
    try:
        # The most relevant of several failures, by jsonschema's own heuristic.
        error = best_match(validator.iter_errors(instance))
    except Unresolvable as exc:
        message = f"{where}: the schema's $ref {exc.ref!r} cannot be resolved (refs must be local)"
        raise ToolError(kind, message) from None
    if error is None:
        return
    path = _path(error.absolute_path)
    location = f"{where}.{path}" if path and not path.startswith("[") else f"{where}{path}"
    raise ToolError(kind, f"{location}: {_short(error.message)}")


def parse_json(text: str | bytes, *, kind: ToolErrorKind, where: str) -> Any:
    """Strict JSON (no NaN or Infinity), or ToolError(kind) saying where it broke."""
    try:
        # UTF-8 only: json.loads would guess UTF-16 or UTF-32 from the bytes.
        return _DECODER.decode(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError:
        raise ToolError(kind, f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ToolError(kind, f"{where}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _NonFiniteError as exc:
        raise ToolError(kind, f"{where}: not valid JSON: {exc} is not a JSON number") from None


def dump_json(value: Any) -> str:
    """Compact JSON text for a value that came from parse_json."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class _NonFiniteError(ValueError):
    pass


def _reject_constant(name: str) -> float:
    raise _NonFiniteError(name)


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _short(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE_CHARS else message[: _MAX_MESSAGE_CHARS - 1] + "…"


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__
