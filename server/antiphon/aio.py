"""Small asyncio helpers used by every stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)

# A library may swallow CancelledError; never wait on a cancelled task forever.
CANCEL_TIMEOUT_S = 3.0


async def cancel_and_wait(*tasks: asyncio.Task[object] | None, timeout_s: float = CANCEL_TIMEOUT_S) -> None:
    """Cancel tasks and wait (bounded) until they have finished unwinding."""
    pending = [t for t in tasks if t is not None and not t.done()]
    for task in pending:
        task.cancel()
    if not pending:
        return
    done, still = await asyncio.wait(pending, timeout=timeout_s)
    for task in still:
        log.warning("task %s did not finish within %.1fs of cancellation", task.get_name(), timeout_s)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.debug("task %s ended with %r while cancelled", task.get_name(), task.exception())


# Teardown tasks still running after their caller was cancelled: held here so none is collected.
_UNWINDING: set[asyncio.Task[None]] = set()


def _settled(task: asyncio.Task[None]) -> None:
    _UNWINDING.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.warning("teardown %s failed: %r", task.get_name(), task.exception())


async def unwind(teardown: Coroutine[Any, Any, None], name: str = "teardown") -> None:
    """Run a teardown to its end even when the caller is cancelled meanwhile: a stream whose client
    went away is cancelled, often more than once, and must still give back what it holds (its
    session lease) instead of leaving it to expire. The caller's cancellation still propagates."""
    task = asyncio.create_task(teardown, name=name)
    _UNWINDING.add(task)
    task.add_done_callback(_settled)
    await asyncio.shield(task)
