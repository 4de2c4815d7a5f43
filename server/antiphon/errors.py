"""Domain errors and their one mapping to gRPC status codes.

Components raise these; the API layer translates them once, at the boundary,
so every servicer reports the same problem with the same status code.
"""

from __future__ import annotations

import math
from typing import Any

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # no stubs shipped


class AntiphonError(Exception):
    """Base of every error a client may see. ``retryable`` tells clients whether to retry."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False
    retry_after_s: float | None = None  # when set, the status tells the client when to retry

    def __init__(self, message: str, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if retryable is not None:
            self.retryable = retryable


class InvalidArgument(AntiphonError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AntiphonError):
    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(AntiphonError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class PermissionDenied(AntiphonError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(AntiphonError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    retryable = True


class Unavailable(AntiphonError):
    code = grpc.StatusCode.UNAVAILABLE
    retryable = True


class Unimplemented(AntiphonError):
    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(AntiphonError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    retryable = True


class ModelMissing(Unavailable):
    """A model the configuration needs has not been prepared."""

    retryable = False


# How much of a client's own input a message repeats (names, periods, ids).
MAX_QUOTED_CHARS = 80
# A status message travels in the grpc-message trailer (percent-encoded, and again in
# grpc-status-details-bin): past the client's metadata limit it would arrive as
# RESOURCE_EXHAUSTED instead of its own status. Messages are cut to this many UTF-8 bytes.
MAX_STATUS_MESSAGE_BYTES = 1024


def quote(value: object, limit: int = MAX_QUOTED_CHARS) -> str:
    """``repr`` of client-supplied text, cut to ``limit`` characters with an ellipsis."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        text = text[:limit] + "…"
    return repr(text)


def cap_message(message: str, limit: int = MAX_STATUS_MESSAGE_BYTES) -> str:
    """``message`` cut to at most ``limit`` UTF-8 bytes (an ellipsis marks the cut)."""
    if len(message) <= limit // 4 or len(message.encode("utf-8", "surrogatepass")) <= limit:
        return message
    cut = message.encode("utf-8", "surrogatepass")[: limit - 3]  # 3: the ellipsis
    return cut.decode("utf-8", "ignore") + "…"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The (code, message) a client sees for an exception.

    Unknown exceptions become INTERNAL with a generic message: their text may
    carry details (paths, prompts) that must not leak to clients. Messages are
    capped (``cap_message``) so that the status itself always reaches the client.
    """
    if isinstance(exc, AntiphonError):
        return exc.code, cap_message(exc.message)
    return grpc.StatusCode.INTERNAL, "internal error; the server log has details"


Trailers = tuple[tuple[str, Any], ...]


def retry_trailers(code: grpc.StatusCode, message: str, retry_after_s: float) -> Trailers:
    """Trailing metadata telling a client when to retry: google.rpc.RetryInfo, and retry-after-ms."""
    ms = max(1, math.ceil(retry_after_s * 1000))
    status = status_pb2.Status(code=code.value[0], message=message)
    delay = Duration(seconds=ms // 1000, nanos=ms % 1000 * 1_000_000)
    status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    return (("grpc-status-details-bin", status.SerializeToString()), ("retry-after-ms", str(ms)))


def rpc_status(exc: BaseException) -> tuple[grpc.StatusCode, str, Trailers]:
    """What a call that failed with ``exc`` ends with: code, message and trailers. The one mapping
    that the API boundary and the gateway's interceptor both use."""
    code, message = status_of(exc)
    retry_after_s = exc.retry_after_s if isinstance(exc, AntiphonError) else None
    trailers = retry_trailers(code, message, retry_after_s) if retry_after_s is not None else ()
    return code, message, trailers
