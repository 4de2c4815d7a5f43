"""How a tool call fails: one structured error with a closed set of kinds.

Every failure of a tool call (bad arguments, a limit, a trap, bad output)
becomes a ``ToolError``; nothing a tool does can raise anything else out of the
sandbox. Each kind carries its gRPC status, so the API layer maps it once, like
every other ``AntiphonError``.
"""

from __future__ import annotations

from typing import Literal, get_args

import grpc

from antiphon.errors import AntiphonError, PermissionDenied

ToolErrorKind = Literal[
    "invalid_arguments",
    "out_of_fuel",
    "timeout",
    "memory_limit",
    "trap",
    "invalid_output",
    "output_too_large",
    "not_found",
    "capability_denied",
    "tool_failed",
]
TOOL_ERROR_KINDS: tuple[ToolErrorKind, ...] = get_args(ToolErrorKind)

# The tool ran and failed on its own terms: InvokeTool reports these in
# InvokeToolResponse.error (status OK) so the agent can read and react to them.
IN_BAND_KINDS: frozenset[ToolErrorKind] = frozenset({"trap", "invalid_output", "tool_failed"})

_STATUS: dict[ToolErrorKind, grpc.StatusCode] = {
    "invalid_arguments": grpc.StatusCode.INVALID_ARGUMENT,
    "out_of_fuel": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "memory_limit": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "output_too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "timeout": grpc.StatusCode.DEADLINE_EXCEEDED,
    "not_found": grpc.StatusCode.NOT_FOUND,
    "capability_denied": grpc.StatusCode.PERMISSION_DENIED,
    # In-band kinds: only seen as a status where a caller does not report them in band.
    "trap": grpc.StatusCode.ABORTED,
    "invalid_output": grpc.StatusCode.ABORTED,
    "tool_failed": grpc.StatusCode.ABORTED,
}


class ToolError(AntiphonError):
    """A tool call failed. ``kind`` says how; ``message`` says what, without host details.

    ``fuel_used`` and ``duration_ms`` describe the failed run when the tool ran at all.
    Retrying is never automatic: a tool may have side effects, and the same
    arguments hit the same limit again.
    """

    retryable = False

    def __init__(self, kind: ToolErrorKind, message: str, *, fuel_used: int = 0, duration_ms: float = 0.0) -> None:
        if kind not in _STATUS:
            raise ValueError(f"unknown tool error kind {kind!r}")
        super().__init__(message)
        self.kind: ToolErrorKind = kind
        self.code = _STATUS[kind]
        self.fuel_used = fuel_used
        self.duration_ms = duration_ms

    @property
    def in_band(self) -> bool:
        """True when InvokeTool reports this error in its response rather than as a status."""
        return self.kind in IN_BAND_KINDS

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"

    def __repr__(self) -> str:
        return f"ToolError({self.kind!r}, {self.message!r})"


__all__ = ["PermissionDenied", "ToolError", "ToolErrorKind"]
