"""WebAssembly tool calls: per-call overhead and wall-clock precision.

    python bench/bench_tools.py [--json out.json] [--calls 2000]

Per-call overhead, warm (the module compiled and linked once): each call gets a
fresh Store and instance, JSON in on stdin and out on stdout, under fuel, epoch
and memory limits. Rows:

- sandbox.run: the call on the calling thread (what a worker thread does);
- sandbox.invoke: the same from asyncio, through the worker pool (the hop
  alone is the first row);
- registry.invoke: plus JSON parsing and input/output schema validation;
- subprocess: the same C source compiled natively (gcc -O2) and run per call
  with JSON on stdin: what a process-per-call sandbox costs, before any isolation;
- compile per call: no compile cache (the module compiled for every call);
- deserialize: ``Module.deserialize`` alone, what a cache hit after a restart costs.

Then the wall-clock limit: requested vs measured stop for a tool that spins.
Informational only: nothing here passes or fails. Needs clang + wasi-libc (make
-C tools) and gcc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, pct, print_table, write_json
from antiphon.gateway.principal import EMBEDDED_PRINCIPAL
from antiphon.tools import Sandbox, ToolError, ToolLimits, ToolRegistry, load_manifest_file
from antiphon.tools.sandbox import WASMTIME_VERSION

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
WORKLOADS = {
    # name: (C source, arguments)
    "echo": (TOOLS / "hostile" / "echo.c", {"text": "what is the weather in Lyon?", "n": [1, 2, 3]}),
    "calculator": (TOOLS / "calculator.c", {"expression": "2 * (3 + 4.5) / (1 - 0.25)"}),
}


OVERHEAD_KEYS = ("workload", "path", "calls", "p50_us", "p99_us")
TIMEOUT_KEYS = ("requested_ms", "runs", "median_ms", "max_ms", "median_over_ms")


def timed(fn: Callable[[], object], n: int) -> list[float]:
    """Microseconds per call, n calls after a few warm-up calls."""
    for _ in range(min(20, n)):
        fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e6)
    return out


async def timed_async(fn: Callable[[], Any], n: int) -> list[float]:
    for _ in range(min(20, n)):
        await fn()
    out = []
    for _ in range(n):
        start = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def with_custom_section(wasm: bytes, tag: int) -> bytes:
    """The same module with a distinct custom section: a new sha256, so no cache can hit."""
    name = b"bench"
    payload = bytes([len(name)]) + name + tag.to_bytes(8, "little")
    return wasm + bytes([0, len(payload)]) + payload


def build_native(source: Path, out_dir: Path) -> Path | None:
    if shutil.which("gcc") is None:
        return None
    binary = out_dir / source.stem
    subprocess.run(["gcc", "-O2", "-w", "-o", str(binary), str(source), "-lm"], check=True)
    return binary


async def overhead_rows(sandbox: Sandbox, calls: int, scratch: Path) -> list[list[Any]]:
    registry = ToolRegistry(sandbox, tools_dir=TOOLS)
    await registry.start()
    echo_manifest = load_manifest_file(TOOLS / "hostile" / "echo.toml")
    await registry.register(EMBEDDED_PRINCIPAL, echo_manifest, (TOOLS / "hostile" / "echo.wasm").read_bytes())
    hop = await timed_async(lambda: sandbox.submit(lambda _control: None), calls)
    rows: list[list[Any]] = [["(none)", "worker-pool hop alone", len(hop), pct(hop, 50), pct(hop, 99)]]
    for workload in WORKLOADS:
        rows.extend(await workload_rows(sandbox, registry, workload, calls=calls, scratch=scratch))
    return rows


async def workload_rows(
    sandbox: Sandbox, registry: ToolRegistry, workload: str, *, calls: int, scratch: Path
) -> list[list[Any]]:
    source, args = WORKLOADS[workload]
    wasm = source.with_suffix(".wasm").read_bytes()
    stdin = json.dumps(args, separators=(",", ":")).encode()
    arguments = json.dumps(args)
    limits = ToolLimits()
    tool = sandbox.load(wasm)
    rows: list[list[Any]] = []

    def row(path: str, samples: list[float]) -> None:
        rows.append([workload, path, len(samples), pct(samples, 50), pct(samples, 99)])

    row("sandbox.run (this thread)", timed(lambda: sandbox.run(tool, stdin, limits), calls))
    row("sandbox.invoke (worker pool)", await timed_async(lambda: sandbox.invoke(tool, stdin, limits), calls))
    invoke = await timed_async(lambda: registry.invoke(EMBEDDED_PRINCIPAL, workload, arguments), calls)
    row("registry.invoke (+ schemas)", invoke)
    binary = build_native(source, scratch)
    if binary is not None:
        command = [str(binary)]
        spawn = timed(lambda: subprocess.run(command, input=stdin, capture_output=True, check=True), calls // 10)
        row("subprocess (native, per call)", spawn)
    counter = iter(range(1_000_000))
    compiled = timed(lambda: sandbox.run(sandbox.load(with_custom_section(wasm, next(counter))), stdin, limits), 20)
    row("compile per call (no cache)", compiled)
    serialized = bytes(wasmtime.Module(sandbox.engine, wasm).serialize())
    row("deserialize only (cache hit)", timed(lambda: wasmtime.Module.deserialize(sandbox.engine, serialized), 200))
    return rows


def timeout_rows(sandbox: Sandbox, repeats: int) -> list[list[Any]]:
    tool = sandbox.load((TOOLS / "hostile" / "loop.wasm").read_bytes())
    rows: list[list[Any]] = []
    for requested_ms in (10, 50, 100):
        limits = ToolLimits(fuel=20_000_000_000, wall_clock_ms=requested_ms)
        measured = []
        for _ in range(repeats):
            start = time.perf_counter()
            try:
                sandbox.run(tool, b"{}", limits)
            except ToolError as exc:
                if exc.kind != "timeout":
                    raise
            measured.append((time.perf_counter() - start) * 1000)
        rows.append([requested_ms, repeats, median(measured), max(measured), median(measured) - requested_ms])
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        sandbox = Sandbox(cache_dir=Path(scratch) / "cache", max_workers=2)
        try:
            overhead = await overhead_rows(sandbox, args.calls, Path(scratch))
            timeouts = timeout_rows(sandbox, 10)
        finally:
            sandbox.close()

    print(f"wasmtime {WASMTIME_VERSION}, Python {platform.python_version()}, {platform.machine()}")
    print_table(
        "Per-call cost, warm (fresh store + instance per call, JSON in and out)",
        ["workload", "path", "calls", "p50 us", "p99 us"],
        overhead,
    )
    print_table(
        "Wall-clock limit (a spinning tool; 1 ms epoch ticks, checked every 5)",
        ["requested ms", "runs", "median ms", "max ms", "median over ms"],
        timeouts,
    )
    write_json(
        args.json,
        {
            "wasmtime": WASMTIME_VERSION,
            "overhead": [
                dict(zip(["workload", "path", "calls", "p50_us", "p99_us"], r, strict=False)) for r in overhead
            ],
            "timeouts": [dict(zip(["requested_ms", "runs", "median_ms", "max_ms"], r, strict=False)) for r in timeouts],
        },
    )


if __name__ == "__main__":
    subprocess.run(["make", "-s", "-C", str(TOOLS)], check=True)
    asyncio.run(main())
