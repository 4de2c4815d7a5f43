"""The embedded LLM backend: onnxruntime-genai on the CPU, in a worker process.

The worker (llm_worker.py) decodes and schedules sessions round-robin; this
side speaks its pipe protocol from the event loop, so decoding never blocks
the loop (onnxruntime-genai holds the GIL while it runs). Token counting for
the context budget uses the same tokenizer.json in process (identical ids,
about 35 µs per message). A worker that dies fails only the turns in flight
(UNAVAILABLE) and is started again for the next turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import struct
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
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
from antiphon.inference.llm_worker import MAX_FRAME_BYTES, options_to_wire
from antiphon.inference.prepare_llm import LLM_MODEL_NAME, is_llm_prepared, llm_model_dir

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
_REASONS = {
    "completed": FinishReason.COMPLETED,
    "max_tokens": FinishReason.MAX_TOKENS,
    "cancelled": FinishReason.CANCELLED,
}
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 5.0


class OnnxGenaiLLM(LLM):
    def __init__(self, model_dir: Path, *, threads: int = 2, context_tokens: int = 8192, slice_ms: int = 15) -> None:
        import json

        from tokenizers import Tokenizer

        self._dir = model_dir
        self._slice_ms = slice_ms
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        config = json.loads((model_dir / "genai_config.json").read_text())["model"]
        self._max_context = min(int(config.get("context_length", 8192)), context_tokens)
        self._threads = threads  # passed to the worker at load time: the models directory is never written
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._streams: dict[int, _WorkerStream] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        self._closed = False
        self.restarts = 0

    @classmethod
    async def open(cls, models_dir: Path, *, threads: int, context_tokens: int, slice_ms: int = 15) -> OnnxGenaiLLM:
        """Check the model is prepared and start its worker (fails fast, with the fix, if not)."""
        if not is_llm_prepared(models_dir):
            raise ModelMissing(
                f"LLM model {LLM_MODEL_NAME!r} is not prepared in {models_dir}: "
                f"run `antiphon models prepare --models-dir {models_dir}` (or `make models`)"
            )
        llm = cls(llm_model_dir(models_dir), threads=threads, context_tokens=context_tokens, slice_ms=slice_ms)
        await llm._ensure_worker()
        return llm

    @property
    def description(self) -> ModelDescription:
        return ModelDescription(
            name=LLM_MODEL_NAME,
            backend="onnx",
            path=str(self._dir),
            quantization="int8",
            context_tokens=self._max_context,
        )

    @property
    def worker_pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    def count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._tokenizer.encode(render_chatml(messages), add_special_tokens=False).ids)

    def chat(self, messages: Sequence[ChatMessage], options: SamplingOptions) -> LLMStream:
        if self._closed:
            raise Unavailable("the language model is shutting down")
        return _WorkerStream(self, render_chatml(messages), options)

    async def aclose(self) -> None:
        self._closed = True
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # the worker exits when its input ends
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await self._reader

    async def _ensure_worker(self) -> asyncio.subprocess.Process:
        async with self._lock:
            if self._proc is not None and self._proc.returncode is None:
                return self._proc
            if self._closed:
                raise Unavailable("the language model is shutting down")
            if self._reader is not None:
                self.restarts += 1
                log.warning("restarting the LLM worker", extra={"restarts": self.restarts})
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "antiphon.inference.llm_worker",
                str(self._dir), str(self._slice_ms), str(self._threads),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=MAX_FRAME_BYTES,
            )  # fmt: skip
            assert proc.stdout is not None  # PIPE was requested
            try:
                ready = await asyncio.wait_for(_read_frame(proc.stdout), START_TIMEOUT_S)
            except (TimeoutError, asyncio.IncompleteReadError):
                ready = None
            if ready is None or ready.get("op") != "ready":
                proc.kill()
                await proc.wait()
                raise Unavailable("the language model worker failed to start; the server log has its error")
            self._proc = proc
            self._reader = asyncio.create_task(self._read_loop(proc), name="llm-worker-reader")
            log.info("LLM worker ready", extra={"pid": proc.pid})
            return proc

    async def _read_loop(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        cancelled = False
        try:
            while (message := await _read_frame(proc.stdout)) is not None:
                stream = self._streams.get(int(message["id"]))
                if stream is not None:
                    stream.deliver(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # The event loop is closing without aclose(): the worker must not outlive the server, and
            # waiting here for a worker that is still alive would hang the loop's teardown.
            cancelled = True
            if proc.returncode is None:
                proc.kill()
            raise
        finally:
            lost = {"op": "error", "kind": "exit", "message": "the language model worker exited"}
            for stream in list(self._streams.values()):
                stream.deliver(lost)
            self._streams.clear()
            if not self._closed and not cancelled:
                log.error("LLM worker exited", extra={"returncode": await proc.wait()})

    async def _submit(self, stream: _WorkerStream, prompt: str, options: SamplingOptions) -> int:
        opts = options_to_wire(options)
        for _attempt in range(2):
            proc = await self._ensure_worker()
            gid = next(self._ids)
            self._streams[gid] = stream
            start = {"op": "start", "id": gid, "prompt": prompt, "options": opts, "sent_monotonic": time.monotonic()}
            try:
                await self._write(proc, start)
                return gid
            except ConnectionError:
                # The worker died and has not been reaped yet: reap it, so the next try starts a new one.
                self._streams.pop(gid, None)
                if proc.returncode is None:
                    proc.kill()
                await proc.wait()
        raise Unavailable("the language model worker keeps exiting; the server log has its error")

    async def _cancel(self, gid: int) -> None:
        self._streams.pop(gid, None)
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError):  # worker gone: nothing decodes for us
                await self._write(proc, {"op": "cancel", "id": gid})

    @staticmethod
    async def _write(proc: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
        import json

        assert proc.stdin is not None
        data = json.dumps(message, separators=(",", ":")).encode()
        proc.stdin.write(_HEADER.pack(len(data)) + data)
        await proc.stdin.drain()


async def _read_frame(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    import json

    try:
        header = await reader.readexactly(_HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    (size,) = _HEADER.unpack(header)
    return dict(json.loads(await reader.readexactly(size)))


class _WorkerStream(LLMStream):
    def __init__(self, llm: OnnxGenaiLLM, prompt: str, options: SamplingOptions) -> None:
        self._llm = llm
        self._prompt = prompt
        self._options = options
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._gid: int | None = None
        self.stats = GenerationStats()
        self._agen: AsyncGenerator[str, None] | None = None

    def __aiter__(self) -> AsyncIterator[str]:
        if self._agen is None:
            self._agen = self._run()
        return self._agen

    def deliver(self, message: dict[str, Any]) -> None:
        self._inbox.put_nowait(message)

    async def aclose(self) -> None:
        if self.stats.finish_reason is None:
            self.stats.finish_reason = FinishReason.CANCELLED
        if self._agen is not None:
            await self._agen.aclose()

    async def _run(self) -> AsyncGenerator[str, None]:
        t0 = time.perf_counter()
        stats = self.stats
        self._gid = await self._llm._submit(self, self._prompt, self._options)
        done = False
        try:
            while True:
                message = await self._inbox.get()
                op = message["op"]
                if op == "error":
                    done = True
                    if message.get("kind") == "too_long":
                        raise InvalidArgument(str(message["message"]))
                    raise Unavailable(f"the language model failed: {message['message']}")
                stats.output_tokens = int(message["tokens"])
                stats.input_tokens = int(message["input_tokens"])
                stats.model_s = float(message["model_s"])
                stats.queue_s = float(message["queue_s"])
                if op == "text":
                    if stats.first_token_s is None:
                        stats.first_token_s = time.perf_counter() - t0
                    yield str(message["text"])
                elif op == "end":
                    done = True
                    stats.finish_reason = _REASONS[str(message["reason"])]
                    return
        finally:
            if not done:
                await self._llm._cancel(self._gid)
            else:
                self._llm._streams.pop(self._gid, None)
            if stats.finish_reason is None:
                stats.finish_reason = FinishReason.CANCELLED
