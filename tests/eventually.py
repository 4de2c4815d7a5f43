"""Waiting for a background effect: poll a condition until it holds, within a bound.

The bound is a failure detector, not a schedule: a test waits only as long as the effect
takes, so keep bounds generous (they should trip on a bug, not on a loaded machine). The
condition is always checked once more after the bound has passed, so a slow poll is never
what fails a test.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_INTERVAL_S = 0.01

Message = str | Callable[[], str]


def _text(message: Message, timeout_s: float) -> str:
    text = message() if callable(message) else message
    return f"{text} (still false after {timeout_s:g} s)"


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    message: Message = "the condition never held",
) -> None:
    """Return once `condition()` (sync or async) is true; raise AssertionError with `message`
    when a check that began after `timeout_s` is still false. An exception from the
    condition propagates at once (an assertion there fails fast)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        began = loop.time()
        outcome = condition()
        held = await outcome if inspect.isawaitable(outcome) else outcome
        if held:
            return
        if began >= deadline:
            raise AssertionError(_text(message, timeout_s))
        await asyncio.sleep(min(interval_s, max(0.0, deadline - loop.time())))


def eventually_sync(
    condition: Callable[[], bool],
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    interval_s: float = DEFAULT_INTERVAL_S,
    message: Message = "the condition never held",
) -> None:
    """`eventually` for code outside an event loop (fixtures starting a server process)."""
    deadline = time.monotonic() + timeout_s
    while True:
        began = time.monotonic()
        if condition():
            return
        if began >= deadline:
            raise AssertionError(_text(message, timeout_s))
        time.sleep(min(interval_s, max(0.0, deadline - time.monotonic())))
