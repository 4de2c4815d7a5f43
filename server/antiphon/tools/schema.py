"""JSON Schema glue: check schemas in manifests, validate arguments and outputs.

Schemas are JSON Schema draft 2020-12. References resolve only inside the
schema itself (and to the draft meta-schemas): left to its defaults,
jsonschema would fetch an unknown ``$ref`` URL over HTTP, which a tenant's
schema must never make the server do.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError, best_match
from referencing import Registry
from referencing.exceptions import Unresolvable

from antiphon.errors import AntiphonError, InvalidArgument, quote
from antiphon.tools.errors import ToolError, ToolErrorKind

# One validation error is enough to act on; the message stays short.
_MAX_MESSAGE_CHARS = 300
# Client JSON is bounded before it is parsed: json and jsonschema recurse once or more per
# level, and Python's recursion limit would otherwise turn "[" * 3000 into INTERNAL.
MAX_JSON_DEPTH = 64
MAX_JSON_BYTES = 1024 * 1024
# A string, escapes included; an unterminated one runs to the end (so no match ever fails: linear).
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1


class ManifestError(InvalidArgument):
    """A manifest field is invalid. The message starts with the field's path."""


def check_schema(schema: object, where: str) -> Draft202012Validator:
    """A validator for ``schema``, or ManifestError naming ``where``."""
    if not isinstance(schema, Mapping):
        raise ManifestError(f"{where}: must be a JSON object (a JSON Schema), got {_type_name(schema)}")
    try:
        Draft202012Validator.check_schema(schema)
    except RecursionError:  # plain data built in process, past the JSON depth bound
        raise ManifestError(f"{where}: nested too deeply") from None
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
        message = f"{where}: the schema's $ref {quote(exc.ref)} cannot be resolved (refs must be local)"
        raise ToolError(kind, message) from None
    except RecursionError:  # a recursive $ref over a deep instance
        raise ToolError(kind, f"{where}: nested too deeply to validate") from None
    if error is None:
        return
    path = _path(error.absolute_path)
    location = f"{where}.{path}" if path and not path.startswith("[") else f"{where}{path}"
    raise ToolError(kind, f"{location}: {_short(error.message)}")


def parse_json(
    text: str | bytes,
    *,
    kind: ToolErrorKind,
    where: str,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
) -> Any:
    """Strict JSON (no NaN or Infinity) within bounds, or ToolError(kind) saying where it broke."""
    try:
        return _bounded_decode(text, where, max_bytes, max_depth)
    except _JsonRejected as exc:
        raise ToolError(kind, str(exc)) from None


def load_json(
    text: str | bytes,
    *,
    where: str,
    max_bytes: int = MAX_JSON_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    error: Callable[[str], AntiphonError] = InvalidArgument,
) -> Any:
    """``parse_json`` for request fields: ``error`` (InvalidArgument) naming ``where``."""
    try:
        return _bounded_decode(text, where, max_bytes, max_depth)
    except _JsonRejected as exc:
        raise error(str(exc)) from None


def check_json_bounds(
    text: str | bytes, *, where: str, max_bytes: int = MAX_JSON_BYTES, max_depth: int = MAX_JSON_DEPTH
) -> None:
    """InvalidArgument naming ``where`` when ``text`` is too large or nested too deep to parse."""
    problem = _out_of_bounds(text, max_bytes, max_depth)
    if problem is not None:
        raise InvalidArgument(f"{where}: {problem}")


def json_bounds_problem(data: bytes, max_bytes: int, max_depth: int) -> str | None:
    """Why ``data`` must not be parsed (too large, nested too deep), or None.

    Linear and in C: strings (escapes included) are cut out, and the depth is the
    running count of the brackets left, up to the first unmatched close (where a
    parser stops). Invalid JSON may pass; the parser rejects it afterwards.
    """
    if len(data) > max_bytes:
        return f"at most {max_bytes} bytes of JSON"
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= max_depth:
        return None
    depth = np.cumsum(_DEPTH_STEP[np.frombuffer(brackets, np.uint8)], dtype=np.int32)
    unmatched = np.flatnonzero(depth < 0)
    if unmatched.size:
        depth = depth[: unmatched[0]]
    if depth.size and int(depth.max()) > max_depth:
        return f"nested deeper than {max_depth} levels"
    return None


class _JsonRejected(Exception):
    pass


def _out_of_bounds(text: str | bytes, max_bytes: int, max_depth: int) -> str | None:
    if isinstance(text, str):
        # A str has at least as many UTF-8 bytes as characters: an oversized one is not encoded.
        text = text[: max_bytes + 1].encode("utf-8", "surrogatepass")
    return json_bounds_problem(text, max_bytes, max_depth)


def _bounded_decode(text: str | bytes, where: str, max_bytes: int, max_depth: int) -> Any:
    problem = _out_of_bounds(text, max_bytes, max_depth)
    if problem is not None:
        raise _JsonRejected(f"{where}: {problem}")
    try:
        # UTF-8 only: json.loads would guess UTF-16 or UTF-32 from the bytes.
        return _DECODER.decode(text.decode("utf-8") if isinstance(text, bytes) else text)
    except UnicodeDecodeError:
        raise _JsonRejected(f"{where}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise _JsonRejected(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except _NonFiniteError as exc:
        raise _JsonRejected(f"{where}: not valid JSON: {exc} is not a JSON number") from None
    except RecursionError:  # unreachable within max_depth; kept so a deep value is never INTERNAL
        raise _JsonRejected(f"{where}: nested too deeply") from None


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
