"""The one place where domain errors become gRPC statuses."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

import grpc

from antiphon.errors import AntiphonError, rpc_status
from antiphon.telemetry.metrics import Metrics

log = logging.getLogger(__name__)
T = TypeVar("T")


async def _abort(exc: Exception, context: grpc.aio.ServicerContext, method: str, metrics: Metrics) -> None:
    code, message, trailers = rpc_status(exc)
    if not isinstance(exc, AntiphonError):
        log.error("%s failed", method, exc_info=exc)
    metrics.rpc_errors.labels(method, code.name).inc()
    await context.abort(code, message, trailing_metadata=trailers)


async def guard_stream(
    events: AsyncGenerator[T, None], context: grpc.aio.ServicerContext, method: str, metrics: Metrics
) -> AsyncIterator[T]:
    """Run a server-streaming handler; map its errors to a status once, here."""
    try:
        # aclosing: a cancelled client must unwind the handler now, not whenever GC runs.
        async with contextlib.aclosing(events) as handler:
            async for event in handler:
                yield event
    except grpc.aio.AbortError:
        raise
    except AntiphonError as exc:
        await _abort(exc, context, method, metrics)
    except Exception as exc:  # documented boundary: an unexpected bug becomes INTERNAL, not a crash
        await _abort(exc, context, method, metrics)


async def guard_unary(
    call: Callable[[], Awaitable[T]], context: grpc.aio.ServicerContext, method: str, metrics: Metrics
) -> T:
    try:
        return await call()
    except grpc.aio.AbortError:
        raise
    except Exception as exc:  # documented boundary, as above
        await _abort(exc, context, method, metrics)
        raise  # unreachable: abort raises
