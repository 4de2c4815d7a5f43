"""Deadlines and cancellation of tool calls, through wasmtime's epochs.

An ``EpochTicker`` thread advances the engine's epoch every ``TICK_S`` while
calls run; every ``SLICE_TICKS`` a call's deadline callback runs on the call's
own thread and either lets it continue or stops it (deadline passed, task
cancelled, or the host decided to abort it). Stopping one call never disturbs
another. The callback is registered through wasmtime-py's C bindings
(``wasmtime_store_epoch_deadline_callback``), which its Python API lacks.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import threading
import time
from typing import Any, Final, Literal

import wasmtime
from wasmtime import _ffi as ffi

from antiphon.errors import Unavailable

log = logging.getLogger(__name__)

TICK_S: Final = 0.001
# How often (in ticks) a running call checks its deadline and cancellation.
SLICE_TICKS: Final = 5


class CallCancelled(Unavailable):
    """The call was stopped from outside: its task was cancelled, or the sandbox closed.

    A cancelled task sees CancelledError; only a caller still waiting when the
    sandbox closes sees this (UNAVAILABLE: retry elsewhere).
    """

    def __init__(self, message: str = "the tool call was cancelled (the server is shutting down)") -> None:
        super().__init__(message)


StopReason = Literal["timeout", "cancelled", "aborted"]


class CallControl:
    """Deadline and cancellation of one call, shared by its task and its worker thread."""

    __slots__ = ("_aborted", "_stopped_by", "cancelled", "deadline")

    def __init__(self) -> None:
        self.cancelled = False
        self.deadline = math.inf  # a time.monotonic() instant, set when the call starts
        self._aborted = False
        self._stopped_by: StopReason | None = None

    def cancel(self) -> None:
        """Stop the call at its next check (within SLICE_TICKS); it raises CallCancelled."""
        self.cancelled = True

    def abort(self) -> None:
        """Stop the call at its next check because the host already knows it failed."""
        self._aborted = True

    @property
    def stopped_by(self) -> StopReason | None:
        return self._stopped_by

    def next_slice(self) -> int | None:
        """Ticks until the next check, or None to stop the call now."""
        if self.cancelled:
            self._stopped_by = "cancelled"
            return None
        if self._aborted:
            self._stopped_by = "aborted"
            return None
        remaining_s = self.deadline - time.monotonic()
        if remaining_s <= 0:
            self._stopped_by = "timeout"
            return None
        return max(1, min(SLICE_TICKS, math.ceil(remaining_s / TICK_S)))


# ---- epoch deadlines -----------------------------------------------------------

_DeadlineCallback = ctypes.CFUNCTYPE(
    ctypes.c_size_t,
    ctypes.POINTER(ffi.wasmtime_context_t),
    ctypes.c_void_p,
    ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ctypes.c_uint8),
)
_Finalizer = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_UPDATE_DEADLINE_CONTINUE = 0
_CONTROLS: dict[int, CallControl] = {}
_HANDLES = itertools.count(1)


def _wasmtime_error(message: str) -> int:
    error = ffi.wasmtime_error_new(ctypes.create_string_buffer(message.encode()))
    return ctypes.cast(error, ctypes.c_void_p).value or 0


def _on_epoch_deadline(_context: Any, data: int | None, delta: Any, kind: Any) -> int:
    # Runs on the call's own thread, inside wasm, each time its epoch deadline passes.
    try:
        control = _CONTROLS.get(data or 0)
        ticks = control.next_slice() if control is not None else None
        if ticks is None:
            return _wasmtime_error("antiphon: call interrupted")
        delta[0] = ticks
        kind[0] = _UPDATE_DEADLINE_CONTINUE
        return 0
    except BaseException:  # documented boundary: a ctypes callback must not raise; stop the call
        log.exception("epoch deadline callback failed")
        return _wasmtime_error("antiphon: deadline check failed")


def _no_finalizer(_data: int | None) -> None:
    return None


_ON_EPOCH_DEADLINE = _DeadlineCallback(_on_epoch_deadline)
_NO_FINALIZER = _Finalizer(_no_finalizer)


class EpochTicker:
    """Advances the engine's epoch every TICK_S, only while some call is running."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False
        self._thread: threading.Thread | None = None

    def enter(self) -> None:
        with self._cond:
            self._active += 1
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="antiphon-tool-epoch", daemon=True)
                self._thread.start()
            self._cond.notify()

    def leave(self) -> None:
        with self._cond:
            self._active -= 1

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._active == 0 and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            time.sleep(TICK_S)
            self._engine.increment_epoch()
