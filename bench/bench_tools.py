"""WebAssembly tool calls: per-call overhead and wall-clock precision.

    python bench/bench_tools.py [--json out.json] [--calls 2000]

Per-call overhead, warm (the module compiled and linked once): each call gets a
fresh Store and instance, JSON in on stdin and out on stdout, under fuel, epoch
and memory limits. Rows:

- worker-pool hop: an empty job through the pool, three ways, interleaved in
  batches so all see the same machine: as every call did before the wall
  clock counted the queue (``asyncio.wrap_future`` + ``shield`` over a pool
  of the same size, reproduced here), ``submit`` without a budget (unbounded
  queue), and ``call`` as a tool call makes it now (queue bounded by the
  budget, a deadline timer, queue and run times on the result);
- sandbox.run: the call on the calling thread (what a worker thread does);
- sandbox.invoke: the same from asyncio, through the worker pool;
- registry.invoke: plus JSON parsing and input/output schema validation;
- subprocess: the same C source compiled natively (gcc -O2) and run per call
  with JSON on stdin: what a process-per-call sandbox costs, before any isolation;
- compile per call: no compile cache (the module compiled for every call);
- deserialize: ``Module.deserialize`` alone, what a cache hit after a restart costs.

Then the wall-clock limit: requested vs measured stop for a tool that spins;
and queueing: 8 hostile calls at once on 2 workers (4 spinning with a 400 ms
limit, 4 memory bombs with 1000 ms and 256 MiB), how far past its limit each
caller waited, with the queue unbounded (as before: the limit counted from
the start of the run) and bounded (now). Informational only: nothing here passes or fails. Needs clang + wasi-libc (make
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
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import wasmtime

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, pct, print_table, write_json
from antiphon.gateway.principal import EMBEDDED_PRINCIPAL
from antiphon.tools import CallResult, CompiledTool, Sandbox, ToolError, ToolLimits, ToolRegistry, load_manifest_file
from antiphon.tools.sandbox import WASMTIME_VERSION, SandboxBusy

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
WORKLOADS = {
    # name: (C source, arguments)
    "echo": (TOOLS / "hostile" / "echo.c", {"text": "what is the weather in Lyon?", "n": [1, 2, 3]}),
    "calculator": (TOOLS / "calculator.c", {"expression": "2 * (3 + 4.5) / (1 - 0.25)"}),
}


OVERHEAD_KEYS = ("workload", "path", "calls", "p50_us", "p99_us")
TIMEOUT_KEYS = ("requested_ms", "runs", "median_ms", "max_ms", "median_over_ms")
QUEUE_KEYS = ("queue", "calls", "p50_over_ms", "max_over_ms", "refused_busy")


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
    rows = await hop_rows(sandbox, calls)
    for workload in WORKLOADS:
        rows.extend(await workload_rows(sandbox, registry, workload, calls=calls, scratch=scratch))
    return rows


class _HopBefore:
    """The worker-pool hop as Sandbox.submit made it before the queue counted against the limit."""

    def __init__(self, workers: int) -> None:
        self._pool = ThreadPoolExecutor(workers)
        self._lock = threading.Lock()
        self._running: set[object] = set()

    def _tracked(self, control: object) -> None:
        with self._lock:
            self._running.add(control)
        with self._lock:
            self._running.discard(control)

    async def hop(self) -> None:
        await asyncio.shield(asyncio.wrap_future(self._pool.submit(self._tracked, object())))

    def close(self) -> None:
        self._pool.shutdown()


async def hop_rows(sandbox: Sandbox, calls: int) -> list[list[Any]]:
    empty = CallResult({}, "{}", 0, 0.0)
    before = _HopBefore(sandbox.workers)
    samples: dict[str, list[float]] = {
        "worker-pool hop, before (shield)": [],
        "worker-pool hop, submit (unbounded)": [],
        "worker-pool hop, call (bounded, timed)": [],
    }
    ways: list[Callable[[], Any]] = [
        before.hop,
        lambda: sandbox.submit(lambda _control: None),
        lambda: sandbox.call(lambda _control: empty, budget_s=60.0),
    ]
    try:
        for _ in range(10):
            for out, way in zip(samples.values(), ways, strict=True):
                out.extend(await timed_async(way, calls // 10))
    finally:
        before.close()
    return [["(none)", name, len(s), pct(s, 50), pct(s, 99)] for name, s in samples.items()]


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


async def queue_rows(sandbox: Sandbox, rounds: int) -> list[list[Any]]:
    """8 hostile calls at once on a 2-worker sandbox; how far past its limit each caller waited."""
    spin = sandbox.load((TOOLS / "hostile" / "loop.wasm").read_bytes())
    bomb = sandbox.load((TOOLS / "hostile" / "membomb.wasm").read_bytes())
    spin_limits = ToolLimits(fuel=20_000_000_000, wall_clock_ms=400)
    bomb_limits = ToolLimits(fuel=20_000_000_000, wall_clock_ms=1000, memory_mib=256)
    calls = [(spin, spin_limits) if i % 2 == 0 else (bomb, bomb_limits) for i in range(8)]

    async def before(tool: CompiledTool, limits: ToolLimits) -> CallResult:
        return await sandbox.submit(lambda control: sandbox.run(tool, b"{}", limits, control=control))

    async def now(tool: CompiledTool, limits: ToolLimits) -> CallResult:
        return await sandbox.invoke(tool, b"{}", limits)

    async def waited(
        how: Callable[[CompiledTool, ToolLimits], Any], tool: CompiledTool, limits: ToolLimits
    ) -> tuple[float, bool]:
        start = time.perf_counter()
        busy = False
        try:
            await how(tool, limits)
        except ToolError as exc:
            busy = isinstance(exc, SandboxBusy)
        return (time.perf_counter() - start) * 1000 - limits.wall_clock_ms, busy

    rows: list[list[Any]] = []
    for name, how in (("unbounded (before)", before), ("bounded (now)", now)):
        over: list[float] = []
        refused = 0
        for _ in range(rounds):
            for over_ms, busy in await asyncio.gather(*(waited(how, tool, limits) for tool, limits in calls)):
                over.append(over_ms)
                refused += busy
        rows.append([name, len(over), pct(over, 50), max(over), refused])
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
            queueing = await queue_rows(sandbox, 3)
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
    print_table(
        "Queueing: 8 hostile calls at once, 2 workers; how far past its limit each caller waited",
        ["queue", "calls", "p50 over ms", "max over ms", "refused busy"],
        queueing,
    )
    write_json(
        args.json,
        {
            "wasmtime": WASMTIME_VERSION,
            "overhead": [
                dict(zip(["workload", "path", "calls", "p50_us", "p99_us"], r, strict=False)) for r in overhead
            ],
            "timeouts": [dict(zip(["requested_ms", "runs", "median_ms", "max_ms"], r, strict=False)) for r in timeouts],
            "queueing": [dict(zip(QUEUE_KEYS, r, strict=True)) for r in queueing],
        },
    )


if __name__ == "__main__":
    subprocess.run(["make", "-s", "-C", str(TOOLS)], check=True)
    asyncio.run(main())
