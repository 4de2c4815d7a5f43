"""Triton Python-backend model `antiphon_llm`: the embedded LLM worker, served by Triton.

It runs the very scheduler the embedded backend runs in its worker process
(antiphon.inference.llm_worker.Worker: onnxruntime-genai decoding, round-robin
slices, stop strings, greedy/seed/temperature/top_p, cancel between two tokens).
Requests go into the worker's inbox as frames on a pipe; the worker's output
frames become responses of the decoupled model: one per text delta, and a final
one (TRITONSERVER_RESPONSE_COMPLETE_FINAL) whose `stats` carries the finish reason.

Inputs: prompt BYTES [1] (chat template applied), options BYTES [1] (JSON:
max_tokens, greedy, temperature, top_p, seed, stop, json_schema).
Outputs: text BYTES [1], stats BYTES [1] (JSON: tokens, input_tokens, model_s,
queue_s, and reason on the final response).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import sys
import threading
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

_path = os.environ.get("ANTIPHON_PYTHONPATH", "@PYTHONPATH@")
sys.path[:0] = [p for p in _path.split(os.pathsep) if p and not p.startswith("@") and p not in sys.path]

from antiphon.inference.llm_worker import Worker, write_frame  # noqa: E402  (after the path is set)

CANCEL_POLL_S = 0.005


class _Responses:
    """The worker's output stream: each frame it writes becomes a Triton response."""

    def __init__(self, model: TritonPythonModel) -> None:
        self._model = model

    def write(self, data: bytes) -> int:
        self._model.deliver(json.loads(data[4:]))  # write_frame writes one whole frame per call
        return len(data)

    def flush(self) -> None:
        return None


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        params = json.loads(args["model_config"])["parameters"]
        model_dir = params["model_dir"]["string_value"]
        slice_s = float(params.get("slice_ms", {}).get("string_value", "15")) / 1000
        self._senders: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        read_fd, write_fd = os.pipe()
        self._inbox = os.fdopen(write_fd, "wb")
        self._worker = Worker(model_dir, slice_s, _Responses(self))  # type: ignore[arg-type]
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._worker.serve, args=(os.fdopen(read_fd, "rb"),), daemon=True)
        self._stopping = threading.Event()
        self._thread.start()
        self._monitor = threading.Thread(target=self._watch_cancellations, daemon=True)
        self._monitor.start()
        self._ready.wait(60)

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            prompt = pb_utils.get_input_tensor_by_name(request, "prompt").as_numpy().reshape(-1)[0]
            options = pb_utils.get_input_tensor_by_name(request, "options").as_numpy().reshape(-1)[0]
            sender = request.get_response_sender()
            try:
                parsed = json.loads(options)
                text = prompt.decode() if isinstance(prompt, bytes) else str(prompt)
            except (ValueError, UnicodeDecodeError) as exc:
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad request: {exc}")),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
                continue
            gid = next(self._ids)
            with self._lock:
                self._senders[gid] = sender
                start = {
                    "op": "start",
                    "id": gid,
                    "prompt": text,
                    "options": parsed,
                    "sent_monotonic": time.monotonic(),
                }
                write_frame(self._inbox, start)

    def deliver(self, message: dict[str, Any]) -> None:
        """Called on the worker's thread for every frame it writes."""
        op = message["op"]
        if op == "ready":
            self._ready.set()
            return
        gid = int(message["id"])
        with self._lock:
            sender = self._senders.get(gid) if op == "text" else self._senders.pop(gid, None)
        if sender is None:
            return
        if op == "error":
            kind = message.get("kind", "model")
            code = pb_utils.TritonError.INVALID_ARG if kind == "too_long" else pb_utils.TritonError.INTERNAL
            response = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{kind}: {message['message']}", code))
            self._send(sender, response, final=True)
            return
        stats = {k: message[k] for k in ("tokens", "input_tokens", "model_s", "queue_s")}
        if op == "end":
            stats["reason"] = message["reason"]
        text = message.get("text", "")
        response = pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text", np.array([text.encode()], dtype=np.object_)),
                pb_utils.Tensor("stats", np.array([json.dumps(stats).encode()], dtype=np.object_)),
            ]
        )
        self._send(sender, response, final=op == "end")

    @staticmethod
    def _send(sender: Any, response: Any, *, final: bool) -> None:
        flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if final else 0
        with contextlib.suppress(pb_utils.TritonModelException):  # client gone (cancelled): nothing to tell it
            sender.send(response, flags=flags)

    def _watch_cancellations(self) -> None:
        """A cancelled request (client closed its stream) stops decoding between two tokens."""
        while not self._stopping.wait(CANCEL_POLL_S):
            with self._lock:
                cancelled = [gid for gid, sender in self._senders.items() if sender.is_cancelled()]
                for gid in cancelled:
                    write_frame(self._inbox, {"op": "cancel", "id": gid})

    def finalize(self) -> None:
        self._stopping.set()
        with self._lock:
            self._inbox.close()  # the worker exits when its inbox ends
        self._thread.join(10)
        self._monitor.join(1)
