"""Tool manifests, limits, schemas and the http_fetch policy: pure validation, no wasm."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from antiphon.api.tools import manifest_from_proto
from antiphon.tools import HttpPolicy, ManifestError, ToolError, ToolLimits, load_manifest_file, parse_manifest
from antiphon.tools.errors import IN_BAND_KINDS, TOOL_ERROR_KINDS
from antiphon.tools.manifest import LIMIT_RANGES, parse_limits
from antiphon.tools.schema import check_schema, parse_json, validate
from antiphon.v1 import tools_pb2 as tpb

REPO = Path(__file__).resolve().parents[2]

VALID: dict[str, Any] = {
    "name": "weather_now",
    "description": "Current weather for a city.",
    "input_schema": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}},
    "output_schema": {"type": "object"},
    "limits": {"fuel": 1_000_000, "wall_clock_ms": 100, "memory_mib": 16, "output_bytes": 4096},
    "required_role": "agent",
    "capabilities": ["http_fetch"],
}


def with_(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(VALID)
    *parents, last = path.split(".")
    target = data
    for key in parents:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return data


_DELETE = object()


def test_a_valid_manifest_round_trips() -> None:
    manifest = parse_manifest(VALID)
    assert manifest.name == "weather_now"
    assert manifest.limits == ToolLimits(fuel=1_000_000, wall_clock_ms=100, memory_mib=16, output_bytes=4096)
    assert manifest.capabilities == frozenset({"http_fetch"})
    assert parse_manifest(manifest.to_dict()) == manifest


def test_limits_default_when_absent() -> None:
    manifest = parse_manifest(with_("limits", _DELETE))
    assert manifest.limits == ToolLimits()
    assert manifest.limits.memory_mib == LIMIT_RANGES["memory_mib"].default
    assert parse_manifest(with_("required_role", _DELETE)).required_role == ""


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("name", "Weather", "manifest.name: must match [a-z][a-z0-9_]{0,63}"),
        ("name", "w" * 65, "manifest.name: must match"),
        ("name", "9lives", "manifest.name: must match"),
        ("name", _DELETE, "manifest.name: required"),
        ("description", "  ", "manifest.description: required"),
        ("input_schema", _DELETE, "manifest.input_schema: required"),
        ("input_schema", {"type": "array"}, 'manifest.input_schema: must describe an object ("type": "object")'),
        ("input_schema", [1, 2], "manifest.input_schema: must be a JSON object"),
        ("input_schema", {"type": "object", "properties": {"x": {"type": "strin"}}}, "manifest.input_schema: not a"),
        ("output_schema", {"minimum": "zero"}, "manifest.output_schema: not a valid JSON Schema (draft 2020-12)"),
        ("limits.memory_mib", 0, "manifest.limits.memory_mib: must be 1..256, got 0"),
        ("limits.memory_mib", 257, "manifest.limits.memory_mib: must be 1..256, got 257"),
        ("limits.wall_clock_ms", 60_001, "manifest.limits.wall_clock_ms: must be 1..60000"),
        ("limits.fuel", 10**12, "manifest.limits.fuel: must be 1..20000000000"),
        ("limits.output_bytes", 2 * 1024 * 1024, "manifest.limits.output_bytes: must be 1..1048576"),
        ("limits.fuel", "lots", "manifest.limits.fuel: must be an integer"),
        ("limits.memory_mib", True, "manifest.limits.memory_mib: must be an integer"),
        ("limits.cpu", 1, "manifest.limits.cpu: unknown limit"),
        ("capabilities", ["filesystem"], "manifest.capabilities: unknown capability 'filesystem' (known: http_fetch)"),
        ("capabilities", ["http_fetch", "http_fetch"], "manifest.capabilities: lists a capability twice"),
        ("capabilities", "http_fetch", "manifest.capabilities: must be a list of strings"),
        ("required_role", "ops team", "manifest.required_role: must match"),
        ("limit", {}, "manifest.limit: unknown field"),
    ],
)
def test_errors_name_the_field(path: str, value: Any, expected: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(with_(path, value))
    assert caught.value.message.startswith(expected), caught.value.message
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_oversized_schema_is_refused() -> None:
    huge = {"type": "object", "description": "x" * 70_000}
    with pytest.raises(ManifestError, match=r"manifest\.input_schema: at most 65536 bytes"):
        parse_manifest(with_("input_schema", huge))


def test_remote_refs_are_not_fetched() -> None:
    # jsonschema's default would fetch the URL (with a DeprecationWarning, an error under pytest here).
    schema = {"type": "object", "$ref": "http://127.0.0.1:9/schema.json"}
    manifest = parse_manifest(with_("input_schema", schema))
    with pytest.raises(ToolError) as caught:
        validate(manifest.input_validator, {}, kind="invalid_arguments", where="arguments")
    assert caught.value.message == (
        "arguments: the schema's $ref 'http://127.0.0.1:9/schema.json' cannot be resolved (refs must be local)"
    )
    local = {"type": "object", "$defs": {"n": {"type": "number"}}, "properties": {"x": {"$ref": "#/$defs/n"}}}
    validator = parse_manifest(with_("input_schema", local)).input_validator
    validate(validator, {"x": 1}, kind="invalid_arguments", where="arguments")
    with pytest.raises(ToolError, match=r"arguments\.x: 'one' is not of type 'number'"):
        validate(validator, {"x": "one"}, kind="invalid_arguments", where="arguments")


def test_proto_manifest_zero_limits_take_defaults_and_errors_name_proto_fields() -> None:
    message = tpb.ToolManifest(
        name="echo", description="Echo.", input_schema_json='{"type": "object"}', output_schema_json="{}"
    )
    manifest = manifest_from_proto(message)
    assert manifest.limits == ToolLimits()

    message.input_schema_json = '{"type": "object",'
    with pytest.raises(ManifestError, match=r"^manifest\.input_schema_json: not valid JSON"):
        manifest_from_proto(message)
    message.input_schema_json = '{"type": "string"}'
    with pytest.raises(ManifestError, match=r"^manifest\.input_schema_json: must describe an object"):
        manifest_from_proto(message)
    message.input_schema_json = '{"type": "object"}'
    message.output_schema_json = ""
    with pytest.raises(ManifestError, match=r"^manifest\.output_schema_json: required"):
        manifest_from_proto(message)
    message.output_schema_json = "{}"
    message.limits.memory_mib = 1000
    with pytest.raises(ManifestError, match=r"^manifest\.limits\.memory_mib: must be 1\.\.256, got 1000"):
        manifest_from_proto(message)


def test_parse_limits_zero_means_default_only_when_asked() -> None:
    assert parse_limits({"fuel": 0}, zero_means_default=True).fuel == LIMIT_RANGES["fuel"].default
    with pytest.raises(ManifestError, match=r"manifest\.limits\.fuel: must be 1\.\."):
        parse_limits({"fuel": 0})


def test_sample_manifests_in_the_tools_directory_are_valid() -> None:
    names = []
    for path in sorted((REPO / "tools").glob("*.toml")) + sorted((REPO / "tools" / "hostile").glob("*.toml")):
        names.append(load_manifest_file(path).name)
    assert {"calculator", "inventory", "unit_convert", "http_get"} <= set(names)


def test_manifest_file_errors_name_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "adder.toml"
    path.write_text('name = "adder"\ndescription = "Adds."\ninput_schema = { type = "object" }\n')
    with pytest.raises(ManifestError, match=r"adder\.toml: manifest\.output_schema: required"):
        load_manifest_file(path)
    path.write_text('name = "other"\ndescription = "x"\ninput_schema = {type="object"}\noutput_schema = {}\n')
    with pytest.raises(ManifestError, match=r"manifest\.name: must match the file name \('adder'\)"):
        load_manifest_file(path)
    json_path = tmp_path / "adder.json"
    json_path.write_text(json.dumps(with_("name", "adder")))
    assert load_manifest_file(json_path).name == "adder"
    path.write_text("name = ")
    with pytest.raises(ManifestError, match=r"adder\.toml: cannot read the manifest"):
        load_manifest_file(path)


def test_argument_validation_errors_name_the_location() -> None:
    validator = check_schema(
        {
            "type": "object",
            "properties": {"items": {"type": "array", "items": {"type": "object", "required": ["qty"]}}},
        },
        "manifest.input_schema",
    )
    with pytest.raises(ToolError) as caught:
        validate(validator, {"items": [{"qty": 1}, {}]}, kind="invalid_arguments", where="arguments")
    assert caught.value.kind == "invalid_arguments"
    assert caught.value.message.startswith("arguments.items[1]: 'qty' is a required property")


def test_json_parsing_is_strict() -> None:
    with pytest.raises(ToolError, match=r"output: not valid JSON: NaN is not a JSON number"):
        parse_json("[NaN]", kind="invalid_output", where="output")
    with pytest.raises(ToolError, match=r"arguments: not UTF-8 text"):
        parse_json(b"\xff\xfe", kind="invalid_arguments", where="arguments")
    assert parse_json('{"a": [1, 2.5, "x"]}', kind="invalid_output", where="output") == {"a": [1, 2.5, "x"]}


def test_every_tool_error_kind_has_a_status() -> None:
    expected = {
        "invalid_arguments": grpc.StatusCode.INVALID_ARGUMENT,
        "out_of_fuel": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "memory_limit": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "output_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
        "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
        "not_found": grpc.StatusCode.NOT_FOUND,
        "capability_denied": grpc.StatusCode.PERMISSION_DENIED,
    }
    for kind in TOOL_ERROR_KINDS:
        error = ToolError(kind, "m")
        if kind in IN_BAND_KINDS:
            assert error.in_band
        else:
            assert error.code == expected[kind]
            assert not error.in_band
    with pytest.raises(ValueError, match="unknown tool error kind"):
        ToolError("oops", "m")  # type: ignore[arg-type]


class TestHttpPolicy:
    POLICY = HttpPolicy(
        allow=("https://api.example.com", "http://127.0.0.1:8080/v1/", "https://docs.example.com/guide")
    )

    @pytest.mark.parametrize(
        "url",
        [
            "https://api.example.com/",
            "https://api.example.com/anything?q=1",
            "https://API.example.com:443/x",
            "http://127.0.0.1:8080/v1/status",
            "https://docs.example.com/guide",
            "https://docs.example.com/guide/intro",
            "https://docs.example.com/guide?page=2",
        ],
    )
    def test_allowed(self, url: str) -> None:
        assert self.POLICY.allows(url)

    @pytest.mark.parametrize(
        "url",
        [
            "http://api.example.com/",  # other scheme: other origin
            "https://api.example.com:8443/",  # other port
            "https://api.example.com.evil.net/",  # a prefix of the host is not the host
            "https://evil.net/?https://api.example.com",
            "https://user@api.example.com/",  # user-info
            "http://127.0.0.1:8080/v10",  # prefix without the slash boundary
            "http://127.0.0.1:8080/v1/../admin",  # dot segments
            "http://127.0.0.1:8080/v1/%2e%2e/admin",
            "http://127.0.0.1:8080/",
            "https://docs.example.com/guidebook",
            "file:///etc/passwd",
            "ftp://api.example.com/",
            "https://api.example.com/a b",
            "https://api.example.com\\@evil.net/",
            "not a url",
        ],
    )
    def test_denied(self, url: str) -> None:
        assert not self.POLICY.allows(url)

    def test_default_allows_nothing(self) -> None:
        assert not HttpPolicy().allows("https://api.example.com/")

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"allow": ("ftp://x.org",)}, r"HttpPolicy\.allow\[0\]: only http and https"),
            ({"allow": ("https://x.org/?q=1",)}, r"HttpPolicy\.allow\[0\]: an origin or a URL prefix"),
            ({"allow": "https://x.org"}, r"HttpPolicy\.allow: must be a sequence"),
            ({"timeout_s": 0}, r"HttpPolicy\.timeout_s"),
            ({"max_response_bytes": 0}, r"HttpPolicy\.max_response_bytes"),
        ],
    )
    def test_invalid_policies_name_the_field(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message):
            HttpPolicy(**kwargs)
