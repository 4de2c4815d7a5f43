"""Deadlines and cancellation of tool calls, through wasmtime's epochs.

A call's deadline is fixed when it is submitted (``CallControl(budget_s=...)``):
the time it waits for a worker counts against it, so a caller never waits much
past its budget however many calls are ahead of it.

An ``EpochTicker`` thread advances the engine's epoch every ``TICK_S`` while
calls run; every ``SLICE_TICKS`` a call's deadline callback runs on the call's
own thread and either lets it continue or stops it (deadline passed, task
cancelled, or the host decided to abort it). The ticker also knows the
running calls' deadlines: when the earliest one passes it advances the epoch a
whole slice at once, so that call checks at its next instruction boundary
rather than up to a slice later (a slice of ticks stretches when many calls
share few cores). Stopping one call never disturbs another. The callback is
registered through wasmtime-py's C bindings
(``wasmtime_store_epoch_deadline_callback``), which its Python API lacks.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import logging
import math
import threading
import time
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class CallTiming:
    """Where a call's time went, in milliseconds."""

    queue_ms: float = 0.0  # submitted until a worker started it (or until it was refused)
    run_ms: float = 0.0  # on the worker: argument checks, the run, output checks


_NO_TIMING: Final = CallTiming()
_TIMING_ATTR: Final = "antiphon_call_timing"


def attach_timing(exc: BaseException, timing: CallTiming) -> None:
    """Record on a failed call's error where its time went (read back with ``timing_of``)."""
    setattr(exc, _TIMING_ATTR, timing)


def timing_of(exc: BaseException) -> CallTiming:
    """The timing ``attach_timing`` recorded; zeros for an error raised before the call reached the sandbox."""
    timing = getattr(exc, _TIMING_ATTR, None)
    return timing if isinstance(timing, CallTiming) else _NO_TIMING


class CallControl:
    """Deadline, cancellation and timing of one call, shared by its task and its worker thread.

    ``budget_s``: how long the caller will wait, queueing included; the deadline
    is then fixed now. Without it the deadline is set when the call starts (the
    tool's own wall-clock limit, counted from there).
    """

    __slots__ = (
        "_aborted",
        "_stopped_by",
        "cancelled",
        "deadline",
        "expired",
        "finished",
        "started",
        "submitted",
    )

    def __init__(self, *, budget_s: float | None = None) -> None:
        self.cancelled = False
        self.submitted = time.monotonic()
        # A time.monotonic() instant by which the call must end.
        self.deadline = math.inf if budget_s is None else self.submitted + budget_s
        self.started: float | None = None  # when a worker started it
        self.finished: float | None = None  # when the worker was done with it, or when it was refused
        self.expired = False  # refused before it started: it must never run
        self._aborted = False
        self._stopped_by: StopReason | None = None

    @property
    def budget_ms(self) -> float:
        """From submission to the deadline (infinite until one is set)."""
        return (self.deadline - self.submitted) * 1000

    def timing(self) -> CallTiming:
        end = self.finished if self.finished is not None else time.monotonic()
        if self.started is None:
            return CallTiming(queue_ms=(end - self.submitted) * 1000)
        return CallTiming((self.started - self.submitted) * 1000, (end - self.started) * 1000)

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
    """Advances the engine's epoch every TICK_S while some call is running; a slice at once at a deadline."""

    def __init__(self, engine: wasmtime.Engine) -> None:
        self._engine = engine
        self._cond = threading.Condition()
        self._active = 0
        self._closed = False
        self._thread: threading.Thread | None = None
        # (deadline, entry number) of running calls; entries of calls that left stay until due.
        self._deadlines: list[tuple[float, int]] = []
        self._entries = itertools.count()

    def enter(self, deadline: float = math.inf) -> None:
        """A call starts; ``deadline`` (a time.monotonic() instant) is when it must be checked."""
        with self._cond:
            self._active += 1
            if deadline < math.inf:
                heapq.heappush(self._deadlines, (deadline, next(self._entries)))
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._run, name="antiphon-tool-epoch", daemon=True)
                self._thread.start()
            self._cond.notify()

    def leave(self) -> None:
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._deadlines.clear()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def _due(self, now: float) -> bool:
        """Whether some running call's deadline has passed since the last check (under self._cond)."""
        due = False
        while self._deadlines and self._deadlines[0][0] <= now:
            heapq.heappop(self._deadlines)
            due = True
        return due

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._active == 0 and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
            time.sleep(TICK_S)
            with self._cond:
                due = self._due(time.monotonic())
            # At a deadline, a whole slice: every running call checks at once (the others just carry on).
            for _ in range(SLICE_TICKS if due else 1):
                self._engine.increment_epoch()
