"""Triton Python-backend model `antiphon_embed`: antiphon's OnnxEmbedder, served by Triton.

Input: texts BYTES [-1] (UTF-8). Output: embeddings FP32 [-1, 384], unit length
(a dot product is the cosine similarity), identical to the embedded backend.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

_path = os.environ.get("ANTIPHON_PYTHONPATH", "@PYTHONPATH@")
sys.path[:0] = [p for p in _path.split(os.pathsep) if p and not p.startswith("@") and p not in sys.path]

from antiphon.errors import AntiphonError  # noqa: E402  (after the path is set)
from antiphon.inference.embedder import EmbedderOptions, OnnxEmbedder  # noqa: E402


class TritonPythonModel:
    def initialize(self, args: dict[str, Any]) -> None:
        params = json.loads(args["model_config"])["parameters"]
        threads = int(params.get("threads", {}).get("string_value", "1"))
        self._embedder = OnnxEmbedder(Path(params["model_dir"]["string_value"]), EmbedderOptions(threads=threads))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            raw = pb_utils.get_input_tensor_by_name(request, "texts").as_numpy().reshape(-1)
            try:
                texts = [t.decode() if isinstance(t, bytes) else str(t) for t in raw]
                vectors = self._embedder.embed_sync(texts)
            except (UnicodeDecodeError, AntiphonError) as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("embeddings", vectors)]))
        return responses
