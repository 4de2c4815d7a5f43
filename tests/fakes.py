"""Test doubles that implement the real interfaces (used by unit and API tests only)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np

from antiphon.agent.tooling import ToolCallInfo, ToolOutcome
from antiphon.inference.embedder import Embedder, Vectors
from antiphon.inference.llm import (
    LLM,
    ChatMessage,
    FinishReason,
    GenerationStats,
    LLMStream,
    ModelDescription,
    SamplingOptions,
)
from antiphon.inference.stop_strings import StopMatcher


class FakeLLM(LLM):
    """Answers with a scripted list of tokens.

    ``gate``: when set, the stream waits on it after the first token, so a test
    can act (interrupt, disconnect, shut down) while a turn is provably running.
    """

    def __init__(
        self, tokens: Sequence[str] = ("Hello", ",", " world", "."), *, fail_with: Exception | None = None
    ) -> None:
        self.tokens = list(tokens)
        self.gate: asyncio.Event | None = None
        self.fail_with = fail_with
        self.prompts: list[list[ChatMessage]] = []
        self.started = asyncio.Event()
        self.produced = 0
        self.closed_streams = 0
        # Optional: choose the answer from the prompt (agent tests); None falls back to `tokens`.
        self.responder: Callable[[Sequence[ChatMessage], SamplingOptions], list[str] | None] | None = None
        self.options: list[SamplingOptions] = []

    @property
    def description(self) -> ModelDescription:
        return ModelDescription("fake", "fake", "", "none", 8192)

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.content.split()) + 4 for m in messages) + 3

    def chat(self, messages: Sequence[ChatMessage], options: SamplingOptions) -> LLMStream:
        self.prompts.append(list(messages))
        self.options.append(options)
        scripted = self.responder(messages, options) if self.responder else None
        return _FakeStream(self, messages, options, scripted)

    async def aclose(self) -> None:
        return None


class _FakeStream(LLMStream):
    def __init__(
        self, llm: FakeLLM, messages: Sequence[ChatMessage], options: SamplingOptions, scripted: list[str] | None
    ) -> None:
        self._llm = llm
        self._options = options
        self._tokens = scripted if scripted is not None else llm.tokens
        self.stats = GenerationStats(input_tokens=llm.count_tokens(messages))
        self._agen: AsyncGenerator[str, None] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._agen is None:
            self._agen = self._run()
        return self._agen

    async def aclose(self) -> None:
        self._llm.closed_streams += 1
        if self.stats.finish_reason is None:
            self.stats.finish_reason = FinishReason.CANCELLED
        if self._agen is not None:
            await self._agen.aclose()

    async def _run(self) -> AsyncGenerator[str, None]:
        llm = self._llm
        llm.started.set()
        if llm.fail_with is not None:
            raise llm.fail_with
        matcher = StopMatcher(self._options.stop)
        for i, token in enumerate(self._tokens[: self._options.max_tokens]):
            await asyncio.sleep(0)
            if i == 1 and llm.gate is not None:
                await llm.gate.wait()
            self.stats.output_tokens += 1
            llm.produced += 1
            if self.stats.first_token_s is None:
                self.stats.first_token_s = 0.001
            out = matcher.feed(token)
            if out:
                yield out
            if matcher.stopped:
                self.stats.finish_reason = FinishReason.COMPLETED
                return
        tail = matcher.flush()
        if tail:
            yield tail
        over = len(self._tokens) > self._options.max_tokens
        self.stats.finish_reason = FinishReason.MAX_TOKENS if over else FinishReason.COMPLETED


class FakeEmbedder(Embedder):
    """Bag of hashed words: texts sharing words score high. Deterministic, no model."""

    dims = 384

    @property
    def name(self) -> str:
        return "fake-embedder"

    @property
    def dimensions(self) -> int:
        return self.dims

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        out = np.zeros((len(texts), self.dims), dtype=np.float32)
        for row, text in enumerate(texts):
            for raw in text.lower().split():
                word = raw.strip(".,?!")
                out[row, zlib.crc32(word.encode()) % self.dims] += 1.0
            out[row] /= max(float(np.linalg.norm(out[row])), 1e-6)
        return out

    async def embed(self, texts: Sequence[str]) -> Vectors:
        return self.embed_sync(texts)


class RecordingSink:
    """A TurnSink that keeps every event; client tools answer from a script."""

    def __init__(
        self, client_tools: Sequence[tuple[str, str, dict[str, Any]]] = (), answers: dict[str, str] | None = None
    ) -> None:
        self.client_tools = list(client_tools)
        self.answers = answers or {}
        self.texts: list[str] = []
        self.calls: list[ToolCallInfo] = []
        self.results: list[ToolOutcome] = []

    async def text(self, delta: str) -> None:
        self.texts.append(delta)

    async def tool_call(self, call: ToolCallInfo) -> None:
        self.calls.append(call)

    async def tool_result(self, outcome: ToolOutcome) -> None:
        self.results.append(outcome)

    async def ask_client(self, call: ToolCallInfo) -> ToolOutcome:
        return ToolOutcome(call.call_id, True, output_json=self.answers.get(call.name, "{}"))

    async def confirmed(self) -> None:
        return None
