"""The LLM worker process: onnxruntime-genai decoding, scheduled fairly across sessions.

onnxruntime-genai holds the GIL while it decodes (measured: the event loop got
one tick per token when decoding ran on a thread), so the model lives in its
own process and the server's event loop never waits on it.

Protocol on stdin/stdout: frames of a 4-byte big-endian length + a JSON object.
  parent -> worker: {"op": "start", "id", "prompt", "options"} | {"op": "cancel", "id"}
  worker -> parent: {"op": "ready", "context_length"}
                    {"op": "text", "id", "text", "tokens", "model_s", "queue_s", "input_tokens"}
                    {"op": "end", "id", "reason", ...same counters} | {"op": "error", "id", "message"}
Scheduling: round-robin over active generations, one time slice each (tokens
until slice_s, or at once when a generation's first text appears), so every
session advances every round and a cancel lands between two tokens.
"""

from __future__ import annotations

import json
import os
import queue
import struct
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, BinaryIO

from antiphon.inference.llm import SamplingOptions
from antiphon.inference.stop_strings import StopMatcher

_HEADER = struct.Struct(">I")
MAX_FRAME_BYTES = 64 << 20


def options_to_wire(options: SamplingOptions) -> dict[str, Any]:
    """SamplingOptions as the worker (and the Triton model, which runs the worker) reads them."""
    return {
        "max_tokens": options.max_tokens,
        "greedy": options.greedy,
        "temperature": options.temperature,
        "top_p": options.top_p,
        "seed": options.seed,
        "stop": list(options.stop),
        "json_schema": options.json_schema,
    }


def write_frame(out: BinaryIO, message: dict[str, Any]) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    out.write(_HEADER.pack(len(data)) + data)
    out.flush()


def read_frame(inp: BinaryIO) -> dict[str, Any] | None:
    header = inp.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_FRAME_BYTES}")
    payload = inp.read(size)
    return dict(json.loads(payload)) if len(payload) == size else None


@dataclass
class _Generation:
    id: int
    generator: Any
    detok: Any
    matcher: StopMatcher
    input_tokens: int
    ready_since: float
    tokens: int = 0
    model_s: float = 0.0
    queue_s: float = 0.0
    sent_text: bool = False


class Worker:
    def __init__(self, model_dir: str, slice_s: float, out: BinaryIO, *, threads: int = 0) -> None:
        import onnxruntime_genai as og

        self._og = og
        config_ = og.Config(model_dir)
        if threads > 0:  # an overlay at load time: the models directory stays read-only
            options = {"intra_op_num_threads": threads}
            config_.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self._model = og.Model(config_)
        self._tokenizer = og.Tokenizer(self._model)
        with open(f"{model_dir}/genai_config.json") as f:
            config = json.load(f)["model"]
        eos = config.get("eos_token_id", [])
        self._eos = frozenset(eos if isinstance(eos, list) else [eos])
        self.context_length = int(config.get("context_length", 8192))
        self._slice_s = slice_s
        self._out = out
        self._inbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._cancelled: set[int] = set()
        self._active: deque[_Generation] = deque()

    def serve(self, inp: BinaryIO) -> None:
        threading.Thread(target=self._read, args=(inp,), daemon=True, name="inbox").start()
        write_frame(self._out, {"op": "ready", "context_length": self.context_length})
        while True:
            block = not self._active
            try:
                while True:
                    message = self._inbox.get(block=block)
                    block = False
                    if message is None:
                        return
                    self._accept(message)
            except queue.Empty:
                pass
            if self._active:
                self._run_slice(self._active.popleft())

    def _read(self, inp: BinaryIO) -> None:
        while (message := read_frame(inp)) is not None:
            if message.get("op") == "cancel":
                self._cancelled.add(int(message["id"]))  # read between tokens by the decoder
            self._inbox.put(message)
        self._inbox.put(None)  # parent gone: exit

    def _accept(self, message: dict[str, Any]) -> None:
        if message["op"] == "start":
            # CLOCK_MONOTONIC is system-wide: time spent in the inbox counts as queueing.
            sent = float(message.get("sent_monotonic", time.monotonic()))
            self._start(int(message["id"]), str(message["prompt"]), dict(message["options"]), sent)
        elif message["op"] == "cancel":
            gid = int(message["id"])
            for gen in [g for g in self._active if g.id == gid]:
                self._active.remove(gen)
                self._finish(gen, "cancelled")
            self._cancelled.discard(gid)

    def _start(self, gid: int, prompt: str, options: dict[str, Any], sent_monotonic: float) -> None:
        inbox_s = max(0.0, time.monotonic() - sent_monotonic)
        arrived = time.perf_counter()
        try:
            tokens = self._tokenizer.encode(prompt)
            n_in = len(tokens)
            if n_in + 1 > self.context_length:
                write_frame(
                    self._out,
                    {"op": "error", "id": gid, "kind": "too_long",
                     "message": f"prompt has {n_in} tokens; the model's context is {self.context_length}"},
                )  # fmt: skip
                return
            params = self._og.GeneratorParams(self._model)
            search: dict[str, Any] = {"max_length": min(n_in + int(options["max_tokens"]), self.context_length)}
            if options.get("greedy"):
                search["do_sample"] = False
            else:
                search.update(do_sample=True, temperature=options["temperature"], top_p=options["top_p"], top_k=50)
            if options.get("seed") is not None:
                search["random_seed"] = int(options["seed"]) % (1 << 31)
            params.set_search_options(**search)
            if options.get("json_schema"):
                params.set_guidance("json_schema", str(options["json_schema"]))
            generator = self._og.Generator(self._model, params)
            generator.append_tokens(tokens)
        except RuntimeError as exc:  # onnxruntime-genai reports every failure as RuntimeError
            write_frame(self._out, {"op": "error", "id": gid, "kind": "model", "message": str(exc)})
            return
        matcher = StopMatcher(tuple(options.get("stop", ())))
        gen = _Generation(gid, generator, self._tokenizer.create_stream(), matcher, n_in, time.perf_counter())
        gen.model_s = gen.ready_since - arrived
        gen.queue_s = inbox_s
        self._active.append(gen)

    def _run_slice(self, gen: _Generation) -> None:
        started = time.perf_counter()
        gen.queue_s += started - gen.ready_since
        deadline = started + self._slice_s
        reason: str | None = None
        text: list[str] = []
        try:
            while True:
                gen.generator.generate_next_token()
                token = int(gen.generator.get_next_tokens()[0])
                gen.tokens += 1
                if token in self._eos:
                    reason = "completed"
                    break
                piece = gen.matcher.feed(str(gen.detok.decode(token)))
                if piece:
                    text.append(piece)
                if gen.matcher.stopped:
                    reason = "completed"
                    break
                if gen.generator.is_done():
                    reason = "max_tokens"
                    break
                if gen.id in self._cancelled or (not gen.sent_text and text) or time.perf_counter() >= deadline:
                    break
        except RuntimeError as exc:
            write_frame(self._out, {"op": "error", "id": gen.id, "kind": "model", "message": str(exc)})
            return
        now = time.perf_counter()
        gen.model_s += now - started
        gen.ready_since = now
        if reason is not None:
            text.append(gen.matcher.flush())  # generation over: a held-back partial stop is just text
        text = [t for t in text if t]
        if text:
            gen.sent_text = True
            write_frame(self._out, {"op": "text", "id": gen.id, "text": "".join(text), **_counters(gen)})
        if reason is not None:
            self._finish(gen, reason)
        elif gen.id in self._cancelled:
            self._finish(gen, "cancelled")
        else:
            self._active.append(gen)

    def _finish(self, gen: _Generation, reason: str) -> None:
        write_frame(self._out, {"op": "end", "id": gen.id, "reason": reason, **_counters(gen)})


def _counters(gen: _Generation) -> dict[str, Any]:
    return {"tokens": gen.tokens, "model_s": gen.model_s, "queue_s": gen.queue_s, "input_tokens": gen.input_tokens}


def main() -> None:
    model_dir, slice_ms = sys.argv[1], float(sys.argv[2])
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    # The protocol owns the real stdout; anything a library prints goes to stderr instead.
    protocol_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    Worker(model_dir, slice_ms / 1000, protocol_out, threads=threads).serve(sys.stdin.buffer)


if __name__ == "__main__":
    main()
