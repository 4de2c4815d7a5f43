"""The embedded LLM backend: onnxruntime-genai in process, on CPU.

Decoding runs in a bounded thread pool, one token per job: jobs queue FIFO, so
concurrent sessions take turns token by token (no session starves while
another decodes) and a cancelled stream stops after the token in flight.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from antiphon.errors import InvalidArgument, ModelMissing, Unavailable
from antiphon.inference.chat_template import render_chatml
from antiphon.inference.llm import (
    LLM,
    ChatMessage,
    FinishReason,
    GenerationStats,
    LLMStream,
    ModelDescription,
    SamplingOptions,
)
from antiphon.inference.prepare_llm import LLM_MODEL_NAME, is_llm_prepared, llm_model_dir
from antiphon.inference.stop_strings import StopMatcher

log = logging.getLogger(__name__)

# onnxruntime-genai reports every failure (bad input, ORT error) as RuntimeError.
_MODEL_ERRORS = (RuntimeError,)


class OnnxGenaiLLM(LLM):
    def __init__(self, model_dir: Path, *, workers: int = 1, context_tokens: int = 8192, slice_ms: int = 15) -> None:
        import onnxruntime_genai as og  # heavy native import, kept out of module import

        self._og: Any = og
        self._dir = model_dir
        self._model: Any = og.Model(str(model_dir))
        self._tokenizer: Any = og.Tokenizer(self._model)
        config = json.loads((model_dir / "genai_config.json").read_text())
        eos = config["model"].get("eos_token_id", [])
        self._eos_ids = frozenset(eos if isinstance(eos, list) else [eos])
        self._max_context = min(int(config["model"].get("context_length", 8192)), context_tokens)
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llm")
        self._closed = False
        self._slice_s = slice_ms / 1000

    @classmethod
    def from_models_dir(
        cls, models_dir: Path, *, workers: int, threads: int, context_tokens: int, slice_ms: int = 15
    ) -> OnnxGenaiLLM:
        if not is_llm_prepared(models_dir):
            raise ModelMissing(
                f"LLM model {LLM_MODEL_NAME!r} is not prepared in {models_dir}: "
                f"run `antiphon models prepare --models-dir {models_dir}` (or `make models`)"
            )
        path = llm_model_dir(models_dir)
        _set_threads(path, threads)
        return cls(path, workers=workers, context_tokens=context_tokens, slice_ms=slice_ms)

    @property
    def description(self) -> ModelDescription:
        return ModelDescription(
            name=LLM_MODEL_NAME,
            backend="onnx",
            path=str(self._dir),
            quantization="int8",
            context_tokens=self._max_context,
        )

    def encode(self, text: str) -> Any:
        return self._tokenizer.encode(text)

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._tokenizer.encode(render_chatml(messages)))

    def chat(self, messages: Sequence[ChatMessage], options: SamplingOptions) -> LLMStream:
        if self._closed:
            raise Unavailable("the language model is shutting down")
        return _OnnxStream(self, render_chatml(messages), options)

    async def aclose(self) -> None:
        self._closed = True
        # Jobs in flight are single tokens; waiting for them is bounded.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    # The methods below run on executor threads.

    def _new_generator(self, prompt: str, options: SamplingOptions) -> tuple[Any, Any, int]:
        tokens = self._tokenizer.encode(prompt)
        n_in = len(tokens)
        if n_in + 1 > self._max_context:
            raise _PromptTooLong(n_in, self._max_context)
        params = self._og.GeneratorParams(self._model)
        search: dict[str, Any] = {"max_length": min(n_in + options.max_tokens, self._max_context)}
        if options.greedy:
            search["do_sample"] = False
        else:
            search.update(do_sample=True, temperature=options.temperature, top_p=options.top_p, top_k=50)
        if options.seed is not None:
            search["random_seed"] = options.seed % (1 << 31)
        params.set_search_options(**search)
        generator = self._og.Generator(self._model, params)
        generator.append_tokens(tokens)
        return generator, self._tokenizer.create_stream(), n_in


class _PromptTooLong(Exception):
    def __init__(self, n_in: int, limit: int) -> None:
        super().__init__(f"prompt has {n_in} tokens; the model's context is {limit}")


def _set_threads(model_dir: Path, threads: int) -> None:
    """Keep genai_config.json's decoder thread count in line with the settings."""
    path = model_dir / "genai_config.json"
    config = json.loads(path.read_text())
    options = config["model"]["decoder"].setdefault("session_options", {})
    if options.get("intra_op_num_threads") != threads:
        options["intra_op_num_threads"] = threads
        path.write_text(json.dumps(config, indent=4))


class _OnnxStream(LLMStream):
    def __init__(self, llm: OnnxGenaiLLM, prompt: str, options: SamplingOptions) -> None:
        self._llm = llm
        self._prompt = prompt
        self._options = options
        self._cancelled = False
        self.stats = GenerationStats()
        self._agen: AsyncGenerator[str, None] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._agen is None:
            self._agen = self._run()
        return self._agen

    async def aclose(self) -> None:
        self._cancelled = True
        if self.stats.finish_reason is None:
            self.stats.finish_reason = FinishReason.CANCELLED
        if self._agen is not None:
            await self._agen.aclose()

    async def _call(self, fn: Any, *args: Any) -> Any:
        """Run one job on the model pool; account queue and model time."""
        submitted = time.perf_counter()
        loop = asyncio.get_running_loop()

        def job() -> tuple[float, float, Any]:
            started = time.perf_counter()
            result = fn(*args)
            return started, time.perf_counter(), result

        try:
            started, ended, result = await loop.run_in_executor(self._llm._executor, job)
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise Unavailable("the language model is shutting down") from None
            raise
        self.stats.queue_s += started - submitted
        self.stats.model_s += ended - started
        return result

    async def _run(self) -> AsyncGenerator[str, None]:
        t0 = time.perf_counter()
        stats, options = self.stats, self._options
        try:
            generator, detok, stats.input_tokens = await self._call(self._llm._new_generator, self._prompt, options)
        except _PromptTooLong as exc:
            raise InvalidArgument(str(exc)) from None
        except _MODEL_ERRORS as exc:
            raise Unavailable(f"the language model failed: {exc}") from None
        matcher = StopMatcher(options.stop)
        while not self._cancelled:
            try:
                pieces, produced, reason = await self._call(self._decode_slice, generator, detok, matcher)
            except _MODEL_ERRORS as exc:
                raise Unavailable(f"the language model failed: {exc}") from None
            stats.output_tokens += produced
            if pieces:
                if stats.first_token_s is None:
                    stats.first_token_s = time.perf_counter() - t0
                yield "".join(pieces)
            if reason is not None:
                stats.finish_reason = reason
                break
        tail = matcher.flush()
        if tail and not self._cancelled:
            yield tail
        if stats.finish_reason is None:
            stats.finish_reason = FinishReason.CANCELLED

    def _decode_slice(
        self, generator: Any, detok: Any, matcher: StopMatcher
    ) -> tuple[list[str], int, FinishReason | None]:
        """Decode tokens for one time slice (runs on a model thread).

        A slice ends after slice_s, at the first text of the answer (so it leaves at once),
        or when the stream is cancelled (checked between tokens): other sessions get the
        worker at least every slice, and a cancel stops within one token.
        """
        eos = self._llm._eos_ids
        deadline = time.perf_counter() + self._llm._slice_s
        first = self.stats.first_token_s is None
        pieces: list[str] = []
        produced = 0
        while True:
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            produced += 1
            if token in eos:
                return pieces, produced, FinishReason.COMPLETED
            out = matcher.feed(str(detok.decode(token)))
            if out:
                pieces.append(out)
            if matcher.stopped:
                return pieces, produced, FinishReason.COMPLETED
            if generator.is_done():
                return pieces, produced, FinishReason.MAX_TOKENS
            if self._cancelled or (first and pieces) or time.perf_counter() >= deadline:
                return pieces, produced, None
