"""The language-model backend interface, shared by every backend.

A backend turns chat messages into a token stream. The stream object has an
explicit lifecycle (iterate, then ``aclose``) so a caller can stop generation
at any point: the backend stops within one token.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class SamplingOptions:
    """Validated generation options (the API layer applies defaults and limits)."""

    temperature: float = 0.7
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    greedy: bool = False
    # Constrained decoding: the output is JSON valid against this schema (tool calls, plans).
    json_schema: str | None = None


class FinishReason(enum.Enum):
    COMPLETED = "completed"  # end-of-sequence token or a stop string
    MAX_TOKENS = "max_tokens"
    CANCELLED = "cancelled"


@dataclass(slots=True)
class GenerationStats:
    """Filled in by the stream as it runs; final once the stream is exhausted or closed."""

    input_tokens: int = 0
    output_tokens: int = 0
    finish_reason: FinishReason | None = None
    # Time waiting for a model worker, and time inside the model.
    queue_s: float = 0.0
    model_s: float = 0.0
    # Wall time from the request to the first text delta.
    first_token_s: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


class LLMStream(abc.ABC):
    """One generation. ``async for delta in stream`` yields text deltas."""

    stats: GenerationStats

    @abc.abstractmethod
    def __aiter__(self) -> AsyncIterator[str]: ...

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop generating (within one token) and release the model worker."""


@dataclass(frozen=True, slots=True)
class ModelDescription:
    name: str
    backend: str
    path: str
    quantization: str
    context_tokens: int


class LLM(abc.ABC):
    """A chat language model."""

    @property
    @abc.abstractmethod
    def description(self) -> ModelDescription: ...

    @abc.abstractmethod
    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens the messages take with the chat template applied."""

    @abc.abstractmethod
    def chat(self, messages: Sequence[ChatMessage], options: SamplingOptions) -> LLMStream:
        """Start generating an assistant reply; nothing runs until iterated."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the model; streams still open fail with Unavailable."""
