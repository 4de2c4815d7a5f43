"""Small asyncio helpers used by every stream."""

from __future__ import annotations

import asyncio
import logging

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
