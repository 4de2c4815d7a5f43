"""The WebAssembly sandbox: compile once, cache, run each call in a fresh store.

One ``wasmtime.Engine`` with fuel and epoch interruption. A module is compiled
once: the native code is cached on disk (``Module.serialize``, keyed by the
wasmtime version, the engine settings, the CPU architecture and the module's
sha256) and in memory, and linked once into an ``InstancePre`` for the
capabilities its manifest grants. Each call then gets a fresh Store (see
``runtime``): nothing survives a call or crosses tenants.

Calls run off the event loop in a bounded thread pool (wasmtime releases the
GIL while wasm runs). Cancelling the awaiting task interrupts the running call
at its next deadline check, a few milliseconds later.

A tool call (``call``, ``invoke``) has one budget for waiting and running
together: its wall-clock limit, or less if its caller's deadline is sooner. A
call still waiting for a worker when the budget is spent never runs; it fails
with ``SandboxBusy`` (RESOURCE_EXHAUSTED, retryable). One that starts runs on
what is left of the budget. Either way the caller waits at most its budget
plus the few milliseconds a running call takes to stop; ``CallResult`` (or the
error, through ``timing_of``) says how long it queued and how long it ran.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import importlib.metadata
import logging
import math
import os
import platform
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import grpc
import wasmtime

from antiphon.aio import CANCEL_TIMEOUT_S
from antiphon.errors import InvalidArgument
from antiphon.tools.deadlines import CallCancelled, CallControl, EpochTicker, attach_timing
from antiphon.tools.errors import ToolError
from antiphon.tools.manifest import ToolLimits
from antiphon.tools.runtime import CallResult, HostContext, define_host_functions, run_call

log = logging.getLogger(__name__)
T = TypeVar("T")

WASMTIME_VERSION: Final = importlib.metadata.version("wasmtime")
# The engine settings: part of the compile-cache key (code compiled under other
# settings must not be deserialized into this engine).
_ENGINE_SETTINGS: Final = (("consume_fuel", True), ("epoch_interruption", True))
MAX_MODULE_BYTES: Final = 32 * 1024 * 1024
_WASM_PAGE = 65536
_WASM_MAGIC = b"\0asm"
_WASI = "wasi_snapshot_preview1"
_HOST_MODULE = "antiphon"


_NO_HOST = HostContext()  # no capability granted beyond WASI


class SandboxBusy(ToolError):
    """No worker came free within the call's budget, so the tool never ran: RESOURCE_EXHAUSTED, retryable.

    Its kind is ``timeout`` (the call did not finish in time); the status says
    the server, not the tool, is at fault, so the same call may succeed later.
    """

    retryable = True

    def __init__(self, budget_ms: float, workers: int) -> None:
        super().__init__(
            "timeout",
            f"the tool sandbox is busy: no worker came free within the call's {budget_ms:.0f} ms "
            f"(all {workers} were running other calls); the tool did not run, try again later",
        )
        self.code = grpc.StatusCode.RESOURCE_EXHAUSTED


def _deliver(loop: asyncio.AbstractEventLoop, done: concurrent.futures.Future[T], outcome: asyncio.Future[T]) -> None:
    """Hand a worker's outcome to the event loop (on the worker thread, as the job ends)."""
    if not loop.is_closed():
        loop.call_soon_threadsafe(_settle, done, outcome)


def _settle(done: concurrent.futures.Future[T], outcome: asyncio.Future[T]) -> None:
    if outcome.done():  # refused at its deadline, or its caller was cancelled: nobody waits for this
        return
    if done.cancelled():
        outcome.cancel()
        return
    error = done.exception()
    if error is not None:
        outcome.set_exception(error)
    else:
        outcome.set_result(done.result())


@dataclass(frozen=True, slots=True)
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    compiles: int = 0


@dataclass(frozen=True, slots=True, eq=False)
class CompiledTool:
    """A module compiled and linked for a set of capabilities; shared by every call and thread."""

    sha256: str
    capabilities: frozenset[str]
    min_memory_bytes: int
    pre: wasmtime.InstancePre = field(repr=False)
    module: wasmtime.Module = field(repr=False)  # keeps the in-memory cache entry alive


class Sandbox:
    """Compiles, caches and runs WASI tool modules. Thread-safe; one per process is enough."""

    def __init__(self, *, cache_dir: Path | None = None, max_workers: int = 4) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers: must be at least 1, got {max_workers}")
        config = wasmtime.Config()
        for name, value in _ENGINE_SETTINGS:
            setattr(config, name, value)
        self._engine = wasmtime.Engine(config)
        self._cache_dir = cache_dir
        if cache_dir is not None:
            # Deserializing runs native code from these files: keep the directory private.
            cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        # Modules some tool still uses; a removed tool's module leaves with it.
        self._modules: weakref.WeakValueDictionary[str, wasmtime.Module] = weakref.WeakValueDictionary()
        self._closed = False
        self._linkers: dict[frozenset[str], wasmtime.Linker] = {}
        self._stats = CacheStats()
        self._ticker = EpochTicker(self._engine)
        self._workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="antiphon-tool")
        self._running: set[CallControl] = set()
        self._waiting: set[CallControl] = set()

    @property
    def stats(self) -> CacheStats:
        return self._stats

    @property
    def engine(self) -> wasmtime.Engine:
        return self._engine

    @property
    def active_calls(self) -> int:
        """Calls running on the worker threads now (not those waiting for one)."""
        return len(self._running)

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def waiting_calls(self) -> int:
        """Calls waiting for a worker thread now."""
        return len(self._waiting)

    async def aclose(self) -> None:
        """``close`` off the event loop: running calls get a few ms to stop."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Stops running calls (their callers get CallCancelled: UNAVAILABLE) and the worker threads."""
        with self._lock:
            self._closed = True
            for control in self._running:
                control.cancel()
        self._pool.shutdown(wait=True)  # queued work sees _closed and ends at once
        self._ticker.close()

    # -- compiling ---------------------------------------------------------------

    def load(self, wasm: bytes, capabilities: frozenset[str] = frozenset()) -> CompiledTool:
        """Compile (or fetch from the caches) and link a module. Blocking: 0.2 ms cached, 50-250 ms not.

        Raises InvalidArgument for a module that is not a WASI command, and
        ToolError("capability_denied") for one whose imports the host does not grant.
        """
        if len(wasm) > MAX_MODULE_BYTES:
            raise InvalidArgument(f"wasm_module: at most {MAX_MODULE_BYTES} bytes")
        if not wasm.startswith(_WASM_MAGIC):
            raise InvalidArgument("wasm_module: not a WebAssembly binary (no \\0asm header)")
        sha256 = hashlib.sha256(wasm).hexdigest()
        module = self._module(wasm, sha256)
        self._check_imports(module, capabilities)
        exports = {export.name: export.type for export in module.exports}
        if not isinstance(exports.get("_start"), wasmtime.FuncType):
            raise InvalidArgument("wasm_module: must export a _start function (build a WASI command, not a reactor)")
        memory = exports.get("memory")
        if not isinstance(memory, wasmtime.MemoryType):
            raise InvalidArgument("wasm_module: must export its linear memory as 'memory'")
        try:
            pre = self._linker(capabilities).instantiate_pre(module)
        except wasmtime.WasmtimeError as exc:
            reason = str(exc).splitlines()[0]
            raise ToolError("capability_denied", f"the module's imports cannot be satisfied: {reason}") from None
        return CompiledTool(sha256, capabilities, memory.limits.min * _WASM_PAGE, pre, module)

    def _module(self, wasm: bytes, sha256: str) -> wasmtime.Module:
        with self._lock:
            module = self._modules.get(sha256)
            if module is not None:
                self._count(memory_hits=1)
                return module
        module = self._from_disk(sha256)
        if module is None:
            try:
                module = wasmtime.Module(self._engine, wasm)
            except wasmtime.WasmtimeError as exc:
                reason = str(exc).splitlines()[0]
                raise InvalidArgument(f"wasm_module: not a valid WebAssembly module: {reason}") from None
            with self._lock:
                self._count(compiles=1)
            self._to_disk(sha256, module)
        with self._lock:
            return self._modules.setdefault(sha256, module)

    def _cache_path(self, sha256: str) -> Path | None:
        if self._cache_dir is None:
            return None
        settings = ",".join(f"{k}={v}" for k, v in _ENGINE_SETTINGS)
        key = f"wasmtime={WASMTIME_VERSION};{settings};arch={platform.machine()};module={sha256}"
        return self._cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()}.cwasm"

    def _from_disk(self, sha256: str) -> wasmtime.Module | None:
        path = self._cache_path(sha256)
        if path is None or not path.exists():
            return None
        try:
            module = wasmtime.Module.deserialize(self._engine, path.read_bytes())
        except (OSError, wasmtime.WasmtimeError) as exc:
            log.warning("compile cache entry %s unusable (%s); recompiling", path.name, exc)
            path.unlink(missing_ok=True)
            return None
        with self._lock:
            self._count(disk_hits=1)
        return module

    def _to_disk(self, sha256: str, module: wasmtime.Module) -> None:
        path = self._cache_path(sha256)
        if path is None:
            return
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_bytes(bytes(module.serialize()))
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot write compile cache entry %s: %s", path, exc)
            tmp.unlink(missing_ok=True)

    def _count(self, *, memory_hits: int = 0, disk_hits: int = 0, compiles: int = 0) -> None:
        # Under self._lock.
        s = self._stats
        self._stats = CacheStats(s.memory_hits + memory_hits, s.disk_hits + disk_hits, s.compiles + compiles)

    @staticmethod
    def _check_imports(module: wasmtime.Module, capabilities: frozenset[str]) -> None:
        for imported in module.imports:
            what = f"{imported.module}.{imported.name}"
            if imported.module == _WASI:
                continue  # instantiate_pre reports the functions WASI does not have
            if imported.module == _HOST_MODULE and imported.name in capabilities:
                continue
            if imported.module == _HOST_MODULE:
                raise ToolError(
                    "capability_denied",
                    f"the module imports {what}, which manifest.capabilities does not grant",
                )
            raise ToolError("capability_denied", f"the module imports {what}, which this host does not provide")

    def _linker(self, capabilities: frozenset[str]) -> wasmtime.Linker:
        with self._lock:
            linker = self._linkers.get(capabilities)
            if linker is None:
                linker = wasmtime.Linker(self._engine)
                linker.define_wasi()
                define_host_functions(linker, capabilities)
                self._linkers[capabilities] = linker
            return linker

    # -- running -----------------------------------------------------------------

    async def invoke(
        self, tool: CompiledTool, stdin: bytes, limits: ToolLimits, *, host: HostContext | None = None
    ) -> CallResult:
        """Run a call in the worker pool within its wall-clock limit, waiting included; see ``run`` and ``call``."""
        return await self.call(
            lambda control: self.run(tool, stdin, limits, host=host, control=control),
            budget_s=limits.wall_clock_ms / 1000,
        )

    async def call(self, work: Callable[[CallControl], CallResult], *, budget_s: float) -> CallResult:
        """``submit`` for a tool call: the result, or the ToolError, carries its queue and run times.

        ``budget_s`` bounds waiting for a worker and running together (see the module docstring).
        """
        control = CallControl(budget_s=budget_s)
        try:
            result = await self._submit(work, control)
        except ToolError as exc:
            attach_timing(exc, control.timing())
            raise
        timing = control.timing()
        r = result
        return CallResult(r.output, r.output_json, r.fuel_used, r.duration_ms, timing.queue_ms, timing.run_ms)

    async def submit(self, work: Callable[[CallControl], T], *, budget_s: float | None = None) -> T:
        """Run ``work`` on a worker thread. Cancelling the caller interrupts it and waits (bounded) for it to stop.

        With ``budget_s``, work not started within it is dropped (SandboxBusy) and
        ``control.deadline`` is the end of the budget; without, it waits for a worker however long.
        """
        return await self._submit(work, CallControl(budget_s=budget_s))

    async def _submit(self, work: Callable[[CallControl], T], control: CallControl) -> T:
        if self._closed:
            raise CallCancelled
        if control.deadline <= control.submitted:
            raise ToolError("timeout", "the caller's deadline passed before the tool could start")
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[T] = loop.create_future()
        with self._lock:
            self._waiting.add(control)
        try:
            queued = self._pool.submit(self._tracked, work, control)
        except RuntimeError:  # the pool shut down since the check above
            with self._lock:
                self._waiting.discard(control)
            raise CallCancelled from None
        queued.add_done_callback(lambda done: _deliver(loop, done, outcome))
        timer = None
        if control.deadline < math.inf:
            timer = loop.call_later(control.deadline - time.monotonic(), self._on_deadline, control, queued, outcome)
        try:
            return await outcome
        except asyncio.CancelledError:
            control.cancel()
            if outcome.done() and not outcome.cancelled():
                outcome.exception()  # it ended as the caller was cancelled: retrieved, nobody reports it
            if self._expire(control):  # never started: nothing to wait for
                queued.cancel()
                raise
            future = asyncio.wrap_future(queued)
            await asyncio.wait({future}, timeout=CANCEL_TIMEOUT_S)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: the caller is gone, and CallCancelled is expected
            else:
                future.cancel()
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _on_deadline(
        self, control: CallControl, queued: concurrent.futures.Future[Any], outcome: asyncio.Future[Any]
    ) -> None:
        # On the event loop, at the end of the call's budget: a call still waiting for a worker never runs.
        if not outcome.done() and self._expire(control):
            queued.cancel()  # out of the pool's queue; a worker that has just taken it sees control.expired
            outcome.set_exception(SandboxBusy(control.budget_ms, self._workers))

    def _expire(self, control: CallControl) -> bool:
        """Mark a call that has not started as one that never will; False if it has started."""
        with self._lock:
            if control.started is not None:
                return False
            self._waiting.discard(control)
            control.expired = True
            if control.finished is None:
                control.finished = time.monotonic()
            return True

    def _tracked(self, work: Callable[[CallControl], T], control: CallControl) -> T:
        with self._lock:
            self._waiting.discard(control)
            if self._closed or control.cancelled:
                raise CallCancelled
            now = time.monotonic()
            if control.expired or now >= control.deadline:  # too late: refused, not started late
                control.expired = True
                control.finished = control.finished or now
                raise SandboxBusy(control.budget_ms, self._workers)
            control.started = now
            self._running.add(control)
        try:
            return work(control)
        finally:
            control.finished = time.monotonic()
            with self._lock:
                self._running.discard(control)

    def run(
        self,
        tool: CompiledTool,
        stdin: bytes,
        limits: ToolLimits,
        *,
        host: HostContext | None = None,
        control: CallControl | None = None,
    ) -> CallResult:
        """Run one call on this thread: a fresh store, ``stdin`` in, parsed JSON out.

        Raises ToolError for every way the call can fail, and CallCancelled when
        ``control`` was cancelled.
        """
        return run_call(
            self._engine,
            self._ticker,
            tool.pre,
            stdin,
            limits,
            host=host or _NO_HOST,
            control=control or CallControl(),
        )
