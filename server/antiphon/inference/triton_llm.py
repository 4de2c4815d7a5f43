"""The LLM on a Triton server: model `antiphon_llm` (decoupled, one response per text delta).

One gRPC stream (ModelStreamInfer) per generation: the request carries the
prompt (chat template applied here, as the embedded backend does) and the
sampling options as JSON; each response carries a text delta and counters, the
last one the finish reason. Closing the stream early cancels the gRPC call;
Triton marks the request cancelled and the model stops between two tokens.
Token counting stays in process, from the prepared model's tokenizer.json.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import InferInput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

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
from antiphon.inference.llm_worker import options_to_wire
from antiphon.inference.prepare_llm import LLM_MODEL_NAME, is_llm_prepared, llm_model_dir

LLM_TRITON_MODEL = "antiphon_llm"
_REASONS = {r.value: r for r in FinishReason}
_CALL_TEARDOWN_TICKS = 3
_DRAIN_TIMEOUT_S = 2.0


async def check_ready(client: InferenceServerClient, url: str, model: str, timeout_s: float) -> None:
    """Raise Unavailable (server down or not ready) or ModelMissing (model not loaded), naming both."""
    try:
        server_ready = await client.is_server_ready(client_timeout=timeout_s)
    except (InferenceServerException, grpc.RpcError) as exc:
        raise Unavailable(f"Triton at {url} is unreachable: {_describe(exc)}") from None
    if not server_ready:
        raise Unavailable(f"Triton at {url} is not ready")
    try:
        model_ready = await client.is_model_ready(model, client_timeout=timeout_s)
    except (InferenceServerException, grpc.RpcError) as exc:
        raise Unavailable(f"Triton at {url}: readiness of model {model!r} unknown: {_describe(exc)}") from None
    if not model_ready:
        raise ModelMissing(
            f"model {model!r} is not ready on Triton at {url}: is it in the model repository "
            "(`antiphon models prepare --triton`) and did it load? (the Triton log names the error)"
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    if isinstance(exc, InferenceServerException):
        return str(exc.message() or exc)
    return str(exc)


class TritonLLM(LLM):
    def __init__(
        self,
        client: InferenceServerClient,
        url: str,
        model_dir: Path,
        *,
        model_name: str = LLM_TRITON_MODEL,
        context_tokens: int = 8192,
        stream_timeout_s: float = 600.0,
    ) -> None:
        from tokenizers import Tokenizer

        self._client = client
        self._url = url
        self._dir = model_dir
        self._model = model_name
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = json.loads((model_dir / "genai_config.json").read_text())["model"]
        self._max_context = min(int(config.get("context_length", 8192)), context_tokens)
        self._stream_timeout_s = stream_timeout_s
        self._closed = False

    @classmethod
    async def open(
        cls,
        url: str,
        models_dir: Path,
        *,
        model_name: str = LLM_TRITON_MODEL,
        context_tokens: int = 8192,
        timeout_s: float = 5.0,
        stream_timeout_s: float = 600.0,
    ) -> TritonLLM:
        """Connect and check that Triton and the model are ready (fails fast, naming the URL)."""
        if not is_llm_prepared(models_dir):
            raise ModelMissing(
                f"LLM model {LLM_MODEL_NAME!r} is not prepared in {models_dir} (its tokenizer counts "
                f"tokens in process): run `antiphon models prepare --models-dir {models_dir}`"
            )
        client = InferenceServerClient(url)
        try:
            await check_ready(client, url, model_name, timeout_s)
        except BaseException:
            await client.close()
            raise
        return cls(
            client, url, llm_model_dir(models_dir),
            model_name=model_name, context_tokens=context_tokens, stream_timeout_s=stream_timeout_s,
        )  # fmt: skip

    @property
    def description(self) -> ModelDescription:
        return ModelDescription(
            name=LLM_MODEL_NAME,
            backend="triton",
            path=f"{self._url}/{self._model}",
            quantization="int8",
            context_tokens=self._max_context,
        )

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._tokenizer.encode(render_chatml(messages), add_special_tokens=False).ids)

    def chat(self, messages: Sequence[ChatMessage], options: SamplingOptions) -> LLMStream:
        if self._closed:
            raise Unavailable("the language model is shutting down")
        return _TritonStream(self, render_chatml(messages), options)

    async def aclose(self) -> None:
        self._closed = True
        await self._client.close()

    def _request(self, prompt: str, options: SamplingOptions) -> dict[str, Any]:
        opts = options_to_wire(options)
        inputs = []
        for name, value in (("prompt", prompt), ("options", json.dumps(opts))):
            tensor = InferInput(name, [1], "BYTES")
            tensor.set_data_from_numpy(np.array([value.encode()], dtype=np.object_))
            inputs.append(tensor)
        return {"model_name": self._model, "inputs": inputs}


class _TritonStream(LLMStream):
    def __init__(self, llm: TritonLLM, prompt: str, options: SamplingOptions) -> None:
        self._llm = llm
        self._prompt = prompt
        self._options = options
        self.stats = GenerationStats()
        self._agen: AsyncGenerator[str, None] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._agen is None:
            self._agen = self._run()
        return self._agen

    async def aclose(self) -> None:
        if self.stats.finish_reason is None:
            self.stats.finish_reason = FinishReason.CANCELLED
        if self._agen is not None:
            await self._agen.aclose()

    async def _run(self) -> AsyncGenerator[str, None]:
        t0 = time.perf_counter()
        llm, stats = self._llm, self.stats
        request = llm._request(self._prompt, self._options)
        finished = asyncio.Event()

        async def requests() -> AsyncIterator[dict[str, Any]]:
            yield request
            await finished.wait()  # keep the stream open until the last response

        responses = llm._client.stream_infer(requests(), stream_timeout=llm._stream_timeout_s)
        try:
            async for result, error in responses:
                if error is not None:
                    message = str(error.message() or error)
                    if "too_long" in message:
                        raise InvalidArgument(message.removeprefix("too_long: "))
                    raise Unavailable(f"the language model on Triton at {llm._url} failed: {message}")
                text = _scalar(result.as_numpy("text"))
                counters = json.loads(_scalar(result.as_numpy("stats")))
                stats.output_tokens = int(counters["tokens"])
                stats.input_tokens = int(counters["input_tokens"])
                stats.model_s = float(counters["model_s"])
                stats.queue_s = float(counters["queue_s"])
                if text:
                    if stats.first_token_s is None:
                        stats.first_token_s = time.perf_counter() - t0
                    yield text
                if "reason" in counters:
                    stats.finish_reason = _REASONS[str(counters["reason"])]
                    return
            raise Unavailable(f"Triton at {llm._url} ended the stream before the generation finished")
        except (grpc.RpcError, InferenceServerException) as exc:
            raise Unavailable(f"the language model on Triton at {llm._url} is unavailable: {_describe(exc)}") from None
        finally:
            finished.set()  # no more requests: Triton ends the stream once its responses are out
            if stats.finish_reason is None:
                stats.finish_reason = FinishReason.CANCELLED
                responses.cancel()  # Triton cancels the request; the model stops between two tokens
                for _ in range(_CALL_TEARDOWN_TICKS):
                    await asyncio.sleep(0)  # let grpc.aio's own tasks see the cancellation
            else:
                await _drain(responses)


async def _drain(responses: Any) -> None:
    """Read the stream to its end so the call finishes cleanly (no task left behind)."""
    try:
        async with asyncio.timeout(_DRAIN_TIMEOUT_S):
            async for _ in responses:
                pass
    except (TimeoutError, grpc.RpcError, InferenceServerException, StopAsyncIteration):
        responses.cancel()


def _scalar(array: Any) -> str:
    value = np.asarray(array).reshape(-1)[0]
    return value.decode() if isinstance(value, bytes) else str(value)
