"""Process-wide stream accounting: the open-stream limit and graceful drain."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from antiphon.errors import ResourceExhausted, Unavailable
from antiphon.telemetry.metrics import Metrics


class StreamRegistry:
    def __init__(self, max_streams: int, metrics: Metrics) -> None:
        self._max = max_streams
        self._open = 0
        self._metrics = metrics
        self.draining = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def open_streams(self) -> int:
        return self._open

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[None]:
        if self.draining.is_set():
            raise Unavailable("the server is shutting down; retry on another instance")
        if self._open >= self._max:
            raise ResourceExhausted(f"the server is at its limit of {self._max} open streams; retry later")
        self._open += 1
        self._idle.clear()
        self._metrics.active_streams.inc()
        try:
            yield
        finally:
            self._open -= 1
            self._metrics.active_streams.dec()
            if self._open == 0:
                self._idle.set()

    def start_drain(self) -> None:
        self.draining.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every stream has closed; False if some are still open at the timeout."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True
