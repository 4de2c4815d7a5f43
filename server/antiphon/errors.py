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


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The (code, message) a client sees for an exception.

    Unknown exceptions become INTERNAL with a generic message: their text may
    carry details (paths, prompts) that must not leak to clients.
    """
    if isinstance(exc, AntiphonError):
        return exc.code, exc.message
    return grpc.StatusCode.INTERNAL, "internal error; the server log has details"
