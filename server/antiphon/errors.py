"""Domain errors and their one mapping to gRPC status codes.

Components raise these; the API layer translates them once, at the boundary,
so every servicer reports the same problem with the same status code.
"""

from __future__ import annotations

import grpc


class AntiphonError(Exception):
    """Base of every error a client may see. ``retryable`` tells clients whether to retry."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    retryable: bool = False

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
