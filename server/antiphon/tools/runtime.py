"""One tool call: a fresh store, its limits, its host functions, and what its end means.

``run_call`` creates a Store, configures WASI (arguments on stdin, nothing
else: no preopened directories, no environment, no argv, no sockets), sets the
limits (fuel, linear memory, an epoch deadline), instantiates from the
``InstancePre``, runs ``_start`` and turns however it ended into a
``CallResult`` or a ``ToolError``. The store is closed before it returns, so
nothing of a call survives it.

Wall clock and cancellation share one mechanism, in deadlines.py: an epoch
ticker thread and a per-call deadline callback. Stopping one call never
disturbs another. The deadline is the earlier of the control's (fixed when the
call was submitted, so time spent waiting for a worker counts) and the tool's
wall-clock limit counted from now.

Host functions (``fd_write`` for stdout/stderr, ``poll_oneoff`` refusing to
sleep, ``antiphon.http_fetch``) find
their call through a thread-local: a call runs on one thread from start to end.
They never raise: wasmtime-py keeps a host function's exception in one
process-wide slot, where another thread's call could pick it up.

A few things use wasmtime-py's C bindings (``wasmtime._ffi``) and internals,
because its Python API does not offer them or is slow; the wasmtime version
is pinned, and the tests cover each: ``wasi_config_set_stdin_bytes`` (stdin
from memory, not a file), ``wasmtime_store_epoch_deadline_callback``, and
``wasmtime_instance_export_get`` + ``wasmtime_func_call`` to start the guest
(see ``_export``). Stdout goes through our own
``fd_write`` rather than ``WasiConfig.stdout_custom``, whose callbacks run on
wasmtime's I/O threads (four times slower here, and they can panic at
interpreter exit).
"""

from __future__ import annotations

import ctypes
import logging
import math
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Final, cast

import wasmtime
from wasmtime import _ffi as ffi
from wasmtime._func import enter_wasm

from antiphon.tools.capabilities import (
    HTTP_BAD_REQUEST,
    HTTP_DENIED,
    HTTP_NETWORK,
    MAX_URL_BYTES,
    HttpPolicy,
    http_fetch,
)
from antiphon.tools.deadlines import (
    _CONTROLS,
    _HANDLES,
    _NO_FINALIZER,
    _ON_EPOCH_DEADLINE,
    SLICE_TICKS,
    TICK_S,
    CallCancelled,
    CallControl,
    EpochTicker,
)
from antiphon.tools.errors import ToolError, ToolErrorKind
from antiphon.tools.manifest import ToolLimits
from antiphon.tools.schema import parse_json

log = logging.getLogger(__name__)

STDERR_KEEP_BYTES: Final = 4096
_MAX_IOVECS = 1024

# WASI errno values (wasi/api.h).
_ERRNO_SUCCESS = 0
_ERRNO_BADF = 8
_ERRNO_FAULT = 21
_ERRNO_FBIG = 22
_ERRNO_INVAL = 28
_ERRNO_IO = 29
_ERRNO_NOTSUP = 58

_U32 = struct.Struct("<I")
_IOVEC = struct.Struct("<II")

_TRAP_MESSAGES = {
    wasmtime.TrapCode.STACK_OVERFLOW: "stack overflow",
    wasmtime.TrapCode.UNREACHABLE: "unreachable code reached (the tool aborted)",
    wasmtime.TrapCode.MEMORY_OUT_OF_BOUNDS: "out-of-bounds memory access",
    wasmtime.TrapCode.INTEGER_DIVISION_BY_ZERO: "integer division by zero",
    wasmtime.TrapCode.INTEGER_OVERFLOW: "integer overflow",
    wasmtime.TrapCode.INDIRECT_CALL_TO_NULL: "indirect call to a null table entry",
    wasmtime.TrapCode.BAD_SIGNATURE: "indirect call with the wrong signature",
    wasmtime.TrapCode.TABLE_OUT_OF_BOUNDS: "out-of-bounds table access",
    wasmtime.TrapCode.BAD_CONVERSION_TO_INTEGER: "invalid conversion to integer",
}


@dataclass(frozen=True, slots=True)
class HostContext:
    """What the host offers one call: the calling tenant's policies."""

    http: HttpPolicy = field(default_factory=HttpPolicy)


@dataclass(frozen=True, slots=True)
class CallResult:
    output: Any  # the parsed JSON the tool wrote
    output_json: str  # the same, as compact JSON text
    fuel_used: int
    duration_ms: float  # the wasm run alone
    # Set by Sandbox.call: waiting for a worker, then the whole time on it (duration_ms and the checks around it).
    queue_ms: float = 0.0
    run_ms: float = 0.0


# ---- host functions ------------------------------------------------------------


class _GuestFault(Exception):
    """The guest does not export the memory a host function needs."""


class _CallState:
    """What the host functions of one running call need. Lives on that call's thread."""

    __slots__ = ("control", "denied_url", "host", "memory", "stderr", "stdout", "stdout_bytes", "stdout_limit")

    def __init__(self, control: CallControl, stdout_limit: int, host: HostContext) -> None:
        self.control = control
        self.host = host
        self.stdout: list[bytes] = []
        self.stdout_bytes = 0
        self.stdout_limit = stdout_limit
        self.stderr = bytearray()
        self.memory: wasmtime.Memory | None = None
        self.denied_url: str | None = None

    @property
    def overflowed(self) -> bool:
        return self.stdout_bytes > self.stdout_limit

    def _guest_memory(self, caller: wasmtime.Caller) -> tuple[int, int]:
        """(base address, size) of the caller's linear memory; valid while the guest is paused."""
        if self.memory is None:
            memory = caller.get("memory")
            if not isinstance(memory, wasmtime.Memory):
                raise _GuestFault
            self.memory = memory
        base = ctypes.cast(self.memory.data_ptr(caller), ctypes.c_void_p).value or 0
        return base, self.memory.data_len(caller)

    def fd_write(self, caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
        if fd not in (1, 2):
            return _ERRNO_BADF  # no other descriptor exists: no preopens, no sockets
        base, size = self._guest_memory(caller)
        iovs, iovs_len, nwritten = iovs & 0xFFFFFFFF, iovs_len & 0xFFFFFFFF, nwritten & 0xFFFFFFFF
        if iovs_len > _MAX_IOVECS:
            return _ERRNO_INVAL
        if iovs + _IOVEC.size * iovs_len > size or nwritten + _U32.size > size:
            return _ERRNO_FAULT
        chunks: list[bytes] = []
        total = 0
        for ptr, length in _IOVEC.iter_unpack(ctypes.string_at(base + iovs, _IOVEC.size * iovs_len)):
            if ptr + length > size:
                return _ERRNO_FAULT
            if length:
                chunks.append(ctypes.string_at(base + ptr, length))
                total += length
        if fd == 1:
            self.stdout_bytes += total
            if self.overflowed:
                self.control.abort()  # the call has failed; stop it rather than let it retry
                return _ERRNO_FBIG
            self.stdout.extend(chunks)
        elif len(self.stderr) < STDERR_KEEP_BYTES:
            self.stderr += b"".join(chunks)[: STDERR_KEEP_BYTES - len(self.stderr)]
        ctypes.memmove(base + nwritten, _U32.pack(total), _U32.size)
        return _ERRNO_SUCCESS

    def http_fetch(self, caller: wasmtime.Caller, url_ptr: int, url_len: int, buf_ptr: int, buf_len: int) -> int:
        url_ptr, url_len = url_ptr & 0xFFFFFFFF, url_len & 0xFFFFFFFF
        buf_ptr, buf_len = buf_ptr & 0xFFFFFFFF, buf_len & 0xFFFFFFFF
        base, size = self._guest_memory(caller)
        if url_len > MAX_URL_BYTES or url_ptr + url_len > size or buf_ptr + buf_len > size:
            return HTTP_BAD_REQUEST
        try:
            url = ctypes.string_at(base + url_ptr, url_len).decode("utf-8")
        except UnicodeDecodeError:
            return HTTP_BAD_REQUEST
        control = self.control
        result = http_fetch(
            url, self.host.http, max_bytes=buf_len, deadline=control.deadline, is_cancelled=lambda: control.cancelled
        )
        if isinstance(result, bytes):
            ctypes.memmove(base + buf_ptr, result, len(result))
            return len(result)
        if result == HTTP_DENIED and self.denied_url is None:
            self.denied_url = url[:200]
            control.abort()  # a policy violation ends the call with capability_denied
        return result


_current = threading.local()


def _host_fd_write(caller: wasmtime.Caller, fd: int, iovs: int, iovs_len: int, nwritten: int) -> int:
    call: _CallState | None = getattr(_current, "call", None)
    if call is None:
        return _ERRNO_BADF
    try:
        return call.fd_write(caller, fd, iovs, iovs_len, nwritten)
    except _GuestFault:
        return _ERRNO_FAULT
    except Exception:  # documented boundary: host functions never raise (see the module docstring)
        log.exception("fd_write host function failed")
        return _ERRNO_IO


def _host_http_fetch(caller: wasmtime.Caller, url_ptr: int, url_len: int, buf_ptr: int, buf_len: int) -> int:
    call: _CallState | None = getattr(_current, "call", None)
    if call is None:
        return HTTP_DENIED
    try:
        return call.http_fetch(caller, url_ptr, url_len, buf_ptr, buf_len)
    except _GuestFault:
        return HTTP_BAD_REQUEST
    except Exception:  # documented boundary, as in _host_fd_write
        log.exception("http_fetch host function failed")
        return HTTP_NETWORK


def _host_poll_oneoff(_in: int, _out: int, _subscriptions: int, _events: int) -> int:
    # WASI's own poll_oneoff sleeps inside the host, where epoch deadlines cannot
    # interrupt it: a tool calling sleep() would outlive its wall-clock limit.
    return _ERRNO_NOTSUP


def define_host_functions(linker: wasmtime.Linker, capabilities: frozenset[str]) -> None:
    """Our fd_write and poll_oneoff (shadowing WASI's) and the granted capabilities, on a linker with WASI."""
    i32 = wasmtime.ValType.i32()
    four_i32 = wasmtime.FuncType([i32] * 4, [i32])
    linker.allow_shadowing = True
    linker.define_func("wasi_snapshot_preview1", "fd_write", four_i32, _host_fd_write, True)
    linker.define_func("wasi_snapshot_preview1", "poll_oneoff", four_i32, _host_poll_oneoff)
    linker.allow_shadowing = False
    if "http_fetch" in capabilities:
        linker.define_func("antiphon", "http_fetch", four_i32, _host_http_fetch, True)


# ---- running one call ----------------------------------------------------------


def run_call(
    engine: wasmtime.Engine,
    ticker: EpochTicker,
    pre: wasmtime.InstancePre,
    stdin: bytes,
    limits: ToolLimits,
    *,
    host: HostContext,
    control: CallControl,
) -> CallResult:
    """Run one call on this thread; see the module docstring."""
    if control.cancelled:
        raise CallCancelled
    call = _CallState(control, limits.output_bytes, host)
    handle = next(_HANDLES)
    _CONTROLS[handle] = control
    store = wasmtime.Store(engine)
    now = time.monotonic()
    control.deadline = min(control.deadline, now + limits.wall_clock_ms / 1000)
    ticker.enter(control.deadline)
    _current.call = call
    started = time.perf_counter()
    outcome = _Outcome()
    try:
        wasi = wasmtime.WasiConfig()
        _set_stdin(wasi, stdin)
        store.set_wasi(wasi)
        store.set_limits(memory_size=limits.memory_bytes)
        store.set_fuel(limits.fuel)
        # The first check: within a slice, or at the deadline if the budget left is shorter.
        store.set_epoch_deadline(max(1, min(SLICE_TICKS, math.ceil((control.deadline - now) / TICK_S))))
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _ON_EPOCH_DEADLINE, handle, _NO_FINALIZER)
        _execute(pre, store, call, outcome)
        duration_ms = (time.perf_counter() - started) * 1000
        # A call stopped by its deadline callback reports 0: wasmtime does not
        # write back the fuel burnt before such a stop.
        fuel_used = 0 if control.stopped_by else limits.fuel - store.get_fuel()
    finally:
        _current.call = None
        ticker.leave()
        del _CONTROLS[handle]
        store.close()
    return _result(limits, call, outcome, fuel_used=fuel_used, duration_ms=duration_ms)


def _set_stdin(wasi: wasmtime.WasiConfig, data: bytes) -> None:
    vec = ffi.wasm_byte_vec_t()
    ffi.wasm_byte_vec_new(ctypes.byref(vec), len(data), (ctypes.c_uint8 * len(data)).from_buffer_copy(data))
    ffi.wasi_config_set_stdin_bytes(wasi.ptr(), ctypes.byref(vec))  # the config takes ownership of vec


class _Outcome:
    """How the guest's run ended (at most one of exit_code != 0, trap, interrupted, instantiate_error)."""

    __slots__ = ("exit_code", "instantiate_error", "interrupted", "memory_bytes", "trap")

    def __init__(self) -> None:
        self.exit_code = 0
        self.trap: wasmtime.Trap | None = None
        self.interrupted: wasmtime.WasmtimeError | None = None  # stopped by the deadline callback
        self.instantiate_error: wasmtime.WasmtimeError | None = None
        self.memory_bytes = 0  # the guest's linear memory when it stopped


_START = ctypes.create_string_buffer(b"_start")
_MEMORY = ctypes.create_string_buffer(b"memory")


def _export(store: wasmtime.Store, instance: wasmtime.Instance, name: Any, kind: int) -> Any:
    """One export's raw handle (a wasmtime_extern_t), or None.

    ``Instance.exports`` wraps every export in Python objects and ``Func.__call__``
    rebuilds the function type on each call: about 18 us of a 100 us call in
    wasmtime-py 50. This asks the C API for the two exports a call needs.
    """
    item = ffi.wasmtime_extern_t()
    found = ffi.wasmtime_instance_export_get(
        store._context(), ctypes.byref(instance._instance), name, len(name.value), ctypes.byref(item)
    )
    return item if found and cast(int, item.kind) == kind else None  # a struct field reads as int


def _execute(pre: wasmtime.InstancePre, store: wasmtime.Store, call: _CallState, outcome: _Outcome) -> None:
    try:
        instance = pre.instantiate(store)
    except wasmtime.Trap as exc:
        outcome.trap = exc
        return
    except wasmtime.WasmtimeError as exc:
        outcome.instantiate_error = exc
        return
    memory_export = _export(store, instance, _MEMORY, ffi.WASMTIME_EXTERN_MEMORY.value)
    memory = wasmtime.Memory._from_raw(memory_export.of.memory) if memory_export is not None else None
    call.memory = memory  # saves fd_write a lookup through its caller
    start = _export(store, instance, _START, ffi.WASMTIME_EXTERN_FUNC.value)
    try:
        if start is None:  # Sandbox.load checked that it exists
            raise wasmtime.WasmtimeError("the module has no _start function")
        # What Func.__call__ does for a () -> () function.
        with enter_wasm(store) as trap:
            error = ffi.wasmtime_func_call(store._context(), ctypes.byref(start.of.func), None, 0, None, 0, trap)
            if error:
                raise wasmtime.WasmtimeError._from_ptr(error)  # an ExitTrap when the guest called exit()
        return
    except wasmtime.ExitTrap as exc:
        outcome.exit_code = exc.code
    except wasmtime.Trap as exc:
        outcome.trap = exc
    except wasmtime.WasmtimeError as exc:
        outcome.interrupted = exc
    if memory is not None:
        outcome.memory_bytes = memory.data_len(store)


def _result(
    limits: ToolLimits, call: _CallState, outcome: _Outcome, *, fuel_used: int, duration_ms: float
) -> CallResult:
    """The call's result, or the ToolError that best explains why it failed."""

    def fail(kind: ToolErrorKind, message: str) -> ToolError:
        return ToolError(kind, message, fuel_used=fuel_used, duration_ms=duration_ms)

    control = call.control
    if control.stopped_by == "cancelled":
        raise CallCancelled
    if call.denied_url is not None:
        raise fail("capability_denied", f"http_fetch: {call.denied_url} is not on the tenant's allow-list")
    if call.overflowed:
        raise fail("output_too_large", f"the tool wrote more than {limits.output_bytes} bytes to stdout")
    trap = outcome.trap
    trap_code = trap.trap_code if trap is not None else None
    if trap_code == wasmtime.TrapCode.OUT_OF_FUEL:
        raise fail("out_of_fuel", f"the tool used all of its {limits.fuel} fuel")
    if control.stopped_by == "timeout" or trap_code == wasmtime.TrapCode.INTERRUPT:
        raise fail("timeout", _timeout_message(limits, control))
    if outcome.instantiate_error is not None:
        reason = str(outcome.instantiate_error).splitlines()[0]
        if "memory" in reason and "limit" in reason:
            raise fail("memory_limit", f"the module needs more than {limits.memory_mib} MiB of memory at start")
        raise fail("trap", f"instantiation failed: {reason}")
    failed = trap is not None or outcome.interrupted is not None or outcome.exit_code != 0
    if failed and _near_memory_cap(outcome.memory_bytes, limits.memory_bytes):
        raise fail("memory_limit", f"the tool needed more than its {limits.memory_mib} MiB of memory")
    if trap is not None:
        message = _TRAP_MESSAGES.get(trap_code) if trap_code is not None else None
        raise fail("trap", message or trap.message.splitlines()[0])
    if outcome.interrupted is not None:
        raise fail("trap", str(outcome.interrupted).splitlines()[0])
    if outcome.exit_code != 0:
        raise fail("tool_failed", _failure_message(call, outcome.exit_code))
    if call.stdout_bytes == 0:
        raise fail("invalid_output", "output: the tool wrote nothing to stdout")
    text = b"".join(call.stdout)
    try:
        output = parse_json(text, kind="invalid_output", where="output")
    except ToolError as exc:
        raise fail(exc.kind, exc.message) from None
    # Valid JSON (parse_json decoded it as UTF-8 and accepted it): pass the tool's own text on.
    return CallResult(output, text.decode().strip(), fuel_used, duration_ms)


def _timeout_message(limits: ToolLimits, control: CallControl) -> str:
    limit_ms = limits.wall_clock_ms
    budget_ms = control.budget_ms
    if budget_ms < limit_ms - 0.5:  # the caller's own deadline came first
        return f"the tool ran past the caller's deadline, {budget_ms:.0f} ms after the call (its limit: {limit_ms} ms)"
    queued_ms = ((control.started or control.submitted) - control.submitted) * 1000
    if queued_ms >= 1 and budget_ms <= limit_ms + 0.5:  # the limit was counted from the submission
        return (
            f"the tool ran past its {limit_ms} ms wall-clock limit "
            f"({queued_ms:.0f} ms of it waiting for a sandbox worker)"
        )
    return f"the tool ran past its {limit_ms} ms wall-clock limit"


def _near_memory_cap(size: int, cap: int) -> bool:
    """Whether a failed call most likely failed for want of memory.

    wasmtime reports a refused ``memory.grow`` to the guest (malloc returns
    NULL), not to the host; a tool that then fails with its memory within
    1/16 of the cap (at least 2 MiB) is reported as memory_limit.
    """
    return size >= cap // 2 and cap - size < max(cap // 16, 2 * 1024 * 1024)


def _failure_message(call: _CallState, exit_code: int) -> str:
    """A failing tool's own message: {"error": ...} on stdout, else stderr, else the status."""
    try:
        reported = parse_json(b"".join(call.stdout), kind="tool_failed", where="output")
    except ToolError:
        reported = None
    if isinstance(reported, dict) and isinstance(reported.get("error"), str) and reported["error"]:
        return str(reported["error"])[:1000]
    stderr = call.stderr.decode("utf-8", errors="replace").strip()
    if stderr:
        return stderr[:1000]
    return f"the tool exited with status {exit_code}"
