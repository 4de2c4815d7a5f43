"""The real sandbox: real wasmtime, real modules built from tools/*.c.

Every hostile tool must be stopped with the right error while the process stays
healthy (a normal call right after succeeds); nothing survives a call; tenants
never see each other's tools; the compile cache survives a restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.server
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import wasmtime

from antiphon.errors import AntiphonError, InvalidArgument
from antiphon.gateway.principal import Principal
from antiphon.tools import (
    HttpPolicy,
    ManifestError,
    PermissionDenied,
    Sandbox,
    ToolError,
    ToolLimits,
    ToolManifest,
    ToolRegistry,
    ToolsDirError,
    load_manifest_file,
)
from antiphon.tools.deadlines import CallCancelled, CallControl, timing_of
from tests.eventually import eventually

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / "tools"
HOSTILE = TOOLS / "hostile"


def require_tools() -> Path:
    """Build tools/*.wasm (make -C tools) if needed; skip, or fail under ANTIPHON_REQUIRE_TOOLCHAIN=1."""
    sources = sorted(TOOLS.glob("*.c")) + sorted(HOSTILE.glob("*.c"))
    missing = [s for s in sources if not s.with_suffix(".wasm").exists()]
    if shutil.which("clang") is None:
        if not missing:
            return TOOLS
        _no_toolchain("clang is not installed: apt-get install clang lld wasi-libc libclang-rt-dev-wasm32")
    done = subprocess.run(["make", "-s", "-C", str(TOOLS), "-j2"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        _no_toolchain(f"make -C tools failed (is wasi-libc installed?):\n{done.stdout}{done.stderr}")
    return TOOLS


def _no_toolchain(message: str) -> None:
    if os.environ.get("ANTIPHON_REQUIRE_TOOLCHAIN") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def tools_dir() -> Path:
    return require_tools()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Shared by the whole session: each module compiles once, later sandboxes deserialize.
    return tmp_path_factory.mktemp("wasm-cache")


@pytest.fixture
def sandbox(cache_dir: Path) -> Iterator[Sandbox]:
    box = Sandbox(cache_dir=cache_dir, max_workers=2)
    yield box
    box.close()


@pytest.fixture
async def registry(sandbox: Sandbox, tools_dir: Path, tmp_path: Path) -> ToolRegistry:
    reg = ToolRegistry(sandbox, storage_dir=tmp_path / "storage", tools_dir=tools_dir)
    await reg.start()
    return reg


ALICE = Principal(tenant="alice", subject="a", roles=frozenset({"admin"}), labels=frozenset())
BOB = Principal(tenant="bob", subject="b", roles=frozenset({"admin"}), labels=frozenset())
GUEST = Principal(tenant="alice", subject="g", roles=frozenset(), labels=frozenset())


def hostile(name: str, **limits: int) -> tuple[ToolManifest, bytes]:
    manifest = load_manifest_file(HOSTILE / f"{name}.toml")
    if limits:
        manifest = dataclasses.replace(manifest, limits=dataclasses.replace(manifest.limits, **limits))
    return manifest, (HOSTILE / f"{name}.wasm").read_bytes()


async def register(
    registry: ToolRegistry, name: str, principal: Principal = ALICE, limits: dict[str, int] | None = None
) -> None:
    manifest, wasm = hostile(name, **(limits or {}))
    await registry.register(principal, manifest, wasm)


async def call(registry: ToolRegistry, name: str, args: Any, principal: Principal = ALICE) -> Any:
    result = await registry.invoke(principal, name, json.dumps(args))
    return result.output


async def until_running(sandbox: Sandbox) -> None:
    await eventually(lambda: sandbox.active_calls > 0, interval_s=0.002, message="the call never started")


def count_deadline_checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the checks running calls make between slices of guest code (only a guest executing makes them)."""
    checks = [0]
    check = CallControl.next_slice

    def counted(control: CallControl) -> int | None:
        checks[0] += 1
        return check(control)

    monkeypatch.setattr(CallControl, "next_slice", counted)
    return checks


async def assert_healthy(registry: ToolRegistry) -> None:
    assert await call(registry, "calculator", {"expression": "6*7"}) == {"result": 42}


# ---- sample tools -----------------------------------------------------------------


async def test_sample_tools(registry: ToolRegistry) -> None:
    assert await call(registry, "calculator", {"expression": "2 * (3 + 4.5) - -1 / 4"}) == {"result": 15.25}
    items = [{"sku": "A1", "name": 'bolt "M4"', "qty": 40}, {"sku": "B2", "name": "nut", "qty": 0}]
    assert await call(registry, "inventory", {"items": items, "sku": "A1"}) == {
        "found": True,
        "sku": "A1",
        "name": 'bolt "M4"',
        "qty": 40,
    }
    assert await call(registry, "inventory", {"items": items, "sku": "C3"}) == {"found": False, "sku": "C3"}
    converted = await call(registry, "unit_convert", {"value": 5, "from": "km", "to": "mi"})
    assert converted["value"] == pytest.approx(3.10685596)
    assert await call(registry, "unit_convert", {"value": 100, "from": "C", "to": "F"}) == {
        "value": 212,
        "unit": "F",
        "quantity": "temperature",
    }
    assert [t.name for t in registry.list(ALICE)] == ["calculator", "http_get", "inventory", "unit_convert"]
    assert registry.list(ALICE)[0].to_mcp()["inputSchema"]["required"] == ["expression"]


async def test_a_tool_reports_its_own_failure(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError) as caught:
        await call(registry, "calculator", {"expression": "1 / (2 - 2)"})
    assert (caught.value.kind, caught.value.message) == ("tool_failed", "division by zero")
    assert caught.value.in_band
    with pytest.raises(ToolError, match="cannot convert between different quantities"):
        await call(registry, "unit_convert", {"value": 1, "from": "kg", "to": "m"})


async def test_arguments_are_validated_before_any_tool_runs(
    registry: ToolRegistry, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the tool ran")

    monkeypatch.setattr(sandbox, "run", must_not_run)
    with pytest.raises(ToolError) as caught:
        await call(registry, "calculator", {"expression": 42})
    assert caught.value.kind == "invalid_arguments"
    assert caught.value.message.startswith("arguments.expression: 42 is not of type 'string'")
    with pytest.raises(ToolError, match=r"arguments: 'expression' is a required property"):
        await call(registry, "calculator", {})
    with pytest.raises(ToolError, match=r"arguments: not valid JSON"):
        await registry.invoke(ALICE, "calculator", '{"expression": ')
    with pytest.raises(ToolError, match=r"arguments: not valid JSON: Infinity is not a JSON number"):
        await registry.invoke(ALICE, "calculator", '{"expression": Infinity}')


# ---- hostile tools ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "limits", "kind", "message"),
    [
        ("loop", {"fuel": 50_000_000, "wall_clock_ms": 10_000}, "out_of_fuel", "used all of its 50000000 fuel"),
        ("loop", {"fuel": 20_000_000_000, "wall_clock_ms": 50}, "timeout", "ran past its 50 ms wall-clock limit"),
        ("sleeper", {"fuel": 20_000_000_000, "wall_clock_ms": 100}, "timeout", "ran past its 100 ms wall-clock"),
        ("membomb", {"memory_mib": 16}, "memory_limit", "needed more than its 16 MiB of memory"),
        ("recursion", {}, "trap", "stack overflow"),
        ("big_output", {"output_bytes": 1000}, "output_too_large", "more than 1000 bytes to stdout"),
        ("bad_json", {}, "invalid_output", "output: not valid JSON"),
        ("wrong_shape", {}, "invalid_output", "output.result: 'forty-two' is not of type 'number'"),
    ],
)
async def test_hostile_tools_are_stopped_and_the_host_stays_healthy(
    registry: ToolRegistry, name: str, limits: dict[str, int], kind: str, message: str
) -> None:
    await register(registry, name, limits=limits)
    started = time.monotonic()
    with pytest.raises(ToolError) as caught:
        await call(registry, name, {})
    assert caught.value.kind == kind, caught.value
    assert message in caught.value.message
    assert time.monotonic() - started < 5
    await assert_healthy(registry)


async def test_timeout_is_precise(registry: ToolRegistry) -> None:
    await register(registry, "loop", limits={"fuel": 20_000_000_000, "wall_clock_ms": 100})
    with pytest.raises(ToolError) as caught:
        await call(registry, "loop", {})
    assert caught.value.kind == "timeout"
    # The limit counts from the call, waiting for a worker included; the stop lands just past it.
    timing = timing_of(caught.value)
    assert 100 <= timing.queue_ms + timing.run_ms < 150


@pytest.mark.parametrize("name", ["file_escape", "net_escape"])
async def test_no_files_and_no_network(registry: ToolRegistry, name: str) -> None:
    await register(registry, name)
    outcome = await call(registry, name, {})
    assert outcome["opened"] == 0
    await assert_healthy(registry)


async def test_a_module_importing_what_the_host_lacks_is_refused_at_registration(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError) as caught:
        await register(registry, "net_import")
    assert caught.value.kind == "capability_denied"
    assert "wasi_snapshot_preview1::sock_open" in caught.value.message
    assert "net_import" not in {t.name for t in registry.list(ALICE)}


async def test_no_state_survives_a_call(registry: ToolRegistry) -> None:
    await register(registry, "counter")
    await register(registry, "counter", principal=BOB)
    for principal in (ALICE, BOB, ALICE, ALICE, BOB):
        assert await call(registry, "counter", {}, principal) == {"calls": 1}


async def test_many_calls_at_once(registry: ToolRegistry) -> None:
    expressions = [f"{i} * {i}" for i in range(24)]
    results = await asyncio.gather(*(call(registry, "calculator", {"expression": e}) for e in expressions))
    assert [r["result"] for r in results] == [i * i for i in range(24)]


async def test_cancelling_the_caller_interrupts_the_running_tool(
    registry: ToolRegistry, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    await register(registry, "loop", limits={"fuel": 20_000_000_000, "wall_clock_ms": 30_000})
    checks = count_deadline_checks(monkeypatch)
    task = asyncio.create_task(call(registry, "loop", {}))
    await until_running(sandbox)
    # Several slices of guest code have run: well inside the tool's loop.
    await eventually(lambda: checks[0] >= 3, message="the guest never ran")
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # invoke returns only once the worker has stopped the guest.
    assert time.monotonic() - cancelled_at < 0.5
    assert sandbox.active_calls == 0
    await assert_healthy(registry)


async def test_closing_the_sandbox_stops_running_calls(registry: ToolRegistry, sandbox: Sandbox) -> None:
    await register(registry, "loop", limits={"fuel": 20_000_000_000, "wall_clock_ms": 30_000})
    task = asyncio.create_task(call(registry, "loop", {}))
    await until_running(sandbox)
    started = time.monotonic()
    await sandbox.aclose()
    with pytest.raises(CallCancelled) as caught:
        await task
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    assert time.monotonic() - started < 0.5


# ---- tenants and roles ----------------------------------------------------------------


async def test_tenants_are_isolated(registry: ToolRegistry) -> None:
    await register(registry, "echo")
    assert "echo" in {t.name for t in registry.list(ALICE)}
    assert "echo" not in {t.name for t in registry.list(BOB)}
    with pytest.raises(ToolError) as caught:
        await call(registry, "echo", {}, BOB)
    assert caught.value.kind == "not_found"
    with pytest.raises(ToolError, match="no tool named 'echo'"):
        await registry.remove(BOB, "echo")
    assert await call(registry, "echo", {"x": 1}) == {"input": {"x": 1}}


async def test_roles(registry: ToolRegistry) -> None:
    manifest, wasm = hostile("echo")
    await registry.register(ALICE, dataclasses.replace(manifest, required_role="ops"), wasm)
    assert "echo" not in {t.name for t in registry.list(GUEST)}
    with pytest.raises(PermissionDenied, match="requires the role 'ops'"):
        await call(registry, "echo", {}, GUEST)
    with pytest.raises(PermissionDenied, match="requires the role 'admin'"):
        await registry.register(GUEST, manifest, wasm)
    with pytest.raises(PermissionDenied):
        await registry.remove(GUEST, "echo")
    ops = dataclasses.replace(GUEST, roles=frozenset({"ops"}))
    assert await call(registry, "echo", {}, ops) == {"input": {}}


async def test_built_in_tools_cannot_be_replaced_or_removed(registry: ToolRegistry) -> None:
    manifest, wasm = hostile("echo")
    with pytest.raises(ManifestError, match=r"manifest\.name: 'calculator' is a built-in tool"):
        await registry.register(ALICE, dataclasses.replace(manifest, name="calculator"), wasm)
    with pytest.raises(PermissionDenied, match="built-in tool"):
        await registry.remove(ALICE, "calculator")


# ---- registration, storage and the compile cache ------------------------------------


async def test_registered_tools_survive_a_restart_and_use_the_compile_cache(tools_dir: Path, tmp_path: Path) -> None:
    cache, storage = tmp_path / "cache", tmp_path / "storage"
    first = Sandbox(cache_dir=cache)
    try:
        registry = ToolRegistry(first, storage_dir=storage)
        await registry.start()
        await register(registry, "counter")
        await register(registry, "echo", principal=BOB)
        await register(registry, "echo", principal=BOB, limits={"memory_mib": 8})  # replaces
        await registry.remove(BOB, "echo")
        await register(registry, "echo", principal=BOB)
        assert first.stats.compiles == 2
    finally:
        first.close()
    assert len(list((storage / "bob").glob("*.wasm"))) == 1

    second = Sandbox(cache_dir=cache)
    try:
        registry = ToolRegistry(second, storage_dir=storage)
        await registry.start()
        assert second.stats.compiles == 0
        assert second.stats.disk_hits == 2  # deserialized, not compiled
        assert await call(registry, "counter", {}) == {"calls": 1}
        assert await call(registry, "echo", {"a": 1}, BOB) == {"input": {"a": 1}}
        assert [t.name for t in registry.list(ALICE)] == ["counter"]
    finally:
        second.close()


def test_a_corrupt_cache_entry_is_recompiled(tmp_path: Path, tools_dir: Path) -> None:
    wasm = (TOOLS / "calculator.wasm").read_bytes()
    first = Sandbox(cache_dir=tmp_path)
    first.load(wasm)
    first.close()
    (entry,) = tmp_path.glob("*.cwasm")
    entry.write_bytes(b"garbage")
    second = Sandbox(cache_dir=tmp_path)
    try:
        tool = second.load(wasm)
        assert (second.stats.disk_hits, second.stats.compiles) == (0, 1)
        result = second.run(tool, b'{"expression": "1+1"}', ToolLimits())
        assert result.output == {"result": 2}
    finally:
        second.close()


async def test_stored_tools_that_fail_to_load_are_skipped(tmp_path: Path, sandbox: Sandbox, tools_dir: Path) -> None:
    storage = tmp_path / "storage"
    registry = ToolRegistry(sandbox, storage_dir=storage)
    await registry.start()
    await register(registry, "echo")
    await register(registry, "counter")
    (module,) = (storage / "alice").glob("echo-*.wasm")
    module.write_bytes(b"\0asm tampered")
    reloaded = ToolRegistry(sandbox, storage_dir=storage)
    await reloaded.start()
    assert [t.name for t in reloaded.list(ALICE)] == ["counter"]


async def test_unusual_tenant_ids_get_safe_folders(tmp_path: Path, sandbox: Sandbox, tools_dir: Path) -> None:
    storage = tmp_path / "storage"
    odd = Principal(tenant="../../etc", subject="x", roles=frozenset({"admin"}), labels=frozenset())
    registry = ToolRegistry(sandbox, storage_dir=storage)
    await registry.start()
    await register(registry, "echo", principal=odd)
    (folder,) = storage.iterdir()
    assert folder.name.startswith("~")
    reloaded = ToolRegistry(sandbox, storage_dir=storage)
    await reloaded.start()
    assert [t.name for t in reloaded.list(odd)] == ["echo"]


def test_invalid_modules_are_refused(sandbox: Sandbox) -> None:
    with pytest.raises(InvalidArgument, match="wasm_module: not a WebAssembly binary"):
        sandbox.load(b"(module)")
    with pytest.raises(InvalidArgument, match="wasm_module: not a valid WebAssembly module"):
        sandbox.load(b"\0asm\x01\0\0\0\x05garbage")
    reactor = bytes(wasmtime.wat2wasm('(module (memory (export "memory") 1) (func (export "run")))'))
    with pytest.raises(InvalidArgument, match="must export a _start function"):
        sandbox.load(reactor)
    imports_env = bytes(wasmtime.wat2wasm('(module (import "env" "system" (func)) (func (export "_start")))'))
    with pytest.raises(ToolError, match=r"imports env\.system, which this host does not provide"):
        sandbox.load(imports_env)


async def test_initial_memory_beyond_the_limit_names_the_field(registry: ToolRegistry) -> None:
    big = bytes(wasmtime.wat2wasm('(module (memory (export "memory") 100) (func (export "_start")))'))
    manifest, _ = hostile("echo", memory_mib=4)
    with pytest.raises(ManifestError, match=r"manifest\.limits\.memory_mib: the module needs at least 7 MiB"):
        await registry.register(ALICE, manifest, big)


def test_a_broken_tools_directory_fails_start_up_naming_the_file(sandbox: Sandbox, tmp_path: Path) -> None:
    shutil.copy(TOOLS / "calculator.toml", tmp_path / "calculator.toml")
    with pytest.raises(ToolsDirError, match=r"calculator\.wasm: cannot read the module.*make -C tools"):
        ToolRegistry(sandbox, tools_dir=tmp_path).load()
    (tmp_path / "calculator.toml").write_text('name = "calculator"\n')
    with pytest.raises(ToolsDirError, match=r"calculator\.toml: manifest\.description: required"):
        ToolRegistry(sandbox, tools_dir=tmp_path).load()


# ---- http_fetch -----------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/ok":
            self._reply(200, b"hello from the host")
        elif self.path == "/big":
            self._reply(200, b"x" * (256 * 1024))
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._reply(404, b"no")

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def http_origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_http_fetch_is_mediated_by_the_tenant_policy(sandbox: Sandbox, tools_dir: Path, http_origin: str) -> None:
    policy = HttpPolicy(allow=(f"{http_origin}/ok", f"{http_origin}/big", f"{http_origin}/redirect"))
    registry = ToolRegistry(sandbox, tools_dir=tools_dir, http_policies={"alice": policy})
    await registry.start()

    assert await call(registry, "http_get", {"url": f"{http_origin}/ok"}) == {"body": "hello from the host"}

    with pytest.raises(ToolError) as caught:
        await call(registry, "http_get", {"url": f"{http_origin}/secret"})
    assert caught.value.kind == "capability_denied"
    assert f"{http_origin}/secret is not on the tenant's allow-list" in caught.value.message

    with pytest.raises(ToolError) as caught:  # the tool's 64 KiB buffer: cut, with an error
        await call(registry, "http_get", {"url": f"{http_origin}/big"})
    assert (caught.value.kind, caught.value.message) == ("tool_failed", "http_fetch failed: response too large (-3)")

    with pytest.raises(ToolError, match=r"HTTP error status \(-5\)"):  # redirects are not followed
        await call(registry, "http_get", {"url": f"{http_origin}/redirect"})

    with pytest.raises(ToolError) as caught:  # another tenant: no policy, nothing allowed
        await call(registry, "http_get", {"url": f"{http_origin}/ok"}, BOB)
    assert caught.value.kind == "capability_denied"
    await assert_healthy(registry)


async def test_http_fetch_needs_the_capability_in_the_manifest(registry: ToolRegistry) -> None:
    manifest = load_manifest_file(TOOLS / "http_get.toml")
    wasm = (TOOLS / "http_get.wasm").read_bytes()
    without = dataclasses.replace(manifest, name="fetch_plain", capabilities=frozenset())
    with pytest.raises(ToolError) as caught:
        await registry.register(ALICE, without, wasm)
    assert caught.value.kind == "capability_denied"
    assert "antiphon.http_fetch, which manifest.capabilities does not grant" in caught.value.message


def test_every_failure_is_an_antiphon_error() -> None:
    # What the gRPC boundary relies on: no tool failure escapes as a bare exception type.
    assert issubclass(ToolError, AntiphonError)
    assert issubclass(PermissionDenied, AntiphonError)
