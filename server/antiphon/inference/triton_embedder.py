"""Sentence embeddings on a Triton server: model `antiphon_embed` (texts BYTES -> FP32 [n, 384]).

Same vectors as OnnxEmbedder (the Triton model runs it). Large calls go out in
chunks so no message nears gRPC's size limit; every call has a timeout, and a
Triton that is down or failing is reported as Unavailable, naming the URL.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton_sync
from tritonclient.grpc import InferInput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from antiphon.errors import InvalidArgument, Unavailable
from antiphon.inference.embedder import MAX_TEXTS_PER_CALL, Embedder, Vectors
from antiphon.inference.prepare_embedder import CONFIG_FILE, DIMENSIONS, EMBEDDER_MODEL_NAME, embedder_model_dir
from antiphon.inference.triton_llm import _describe, check_ready

EMBED_TRITON_MODEL = "antiphon_embed"
CHUNK_TEXTS = 256


class TritonEmbedder(Embedder):
    def __init__(
        self, client: InferenceServerClient, url: str, *, model_name: str = EMBED_TRITON_MODEL,
        name: str = EMBEDDER_MODEL_NAME, dimensions: int = DIMENSIONS, timeout_s: float = 10.0,
    ) -> None:  # fmt: skip
        self._client = client
        self._url = url
        self._model = model_name
        self._name = name
        self._dimensions = dimensions
        self._timeout_s = timeout_s
        self._sync: triton_sync.InferenceServerClient | None = None
        self._closed = False

    @classmethod
    async def open(
        cls, url: str, *, models_dir: Path | None = None, model_name: str = EMBED_TRITON_MODEL, timeout_s: float = 10.0
    ) -> TritonEmbedder:
        """Connect and check readiness; the model's name comes from the prepared model when present."""
        name, dimensions = EMBEDDER_MODEL_NAME, DIMENSIONS
        config = embedder_model_dir(models_dir) / CONFIG_FILE if models_dir is not None else None
        if config is not None and config.is_file():
            data = json.loads(config.read_text())
            name, dimensions = str(data["model"]), int(data["dimensions"])
        client = InferenceServerClient(url)
        try:
            await check_ready(client, url, model_name, timeout_s)
        except BaseException:
            await client.close()
            raise
        return cls(client, url, model_name=model_name, name=name, dimensions=dimensions, timeout_s=timeout_s)

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        self._check(texts)
        if self._sync is None:
            self._sync = triton_sync.InferenceServerClient(self._url)
        out = np.empty((len(texts), self._dimensions), dtype=np.float32)
        for start in range(0, len(texts), CHUNK_TEXTS):
            chunk = texts[start : start + CHUNK_TEXTS]
            try:
                result = self._sync.infer(self._model, [self._input(chunk)], client_timeout=self._timeout_s)
            except (InferenceServerException, grpc.RpcError) as exc:
                raise self._unavailable(exc) from None
            out[start : start + len(chunk)] = self._vectors(result, len(chunk))
        return out

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if self._closed:
            raise Unavailable("the embedder is shutting down")
        self._check(texts)
        out = np.empty((len(texts), self._dimensions), dtype=np.float32)
        for start in range(0, len(texts), CHUNK_TEXTS):  # no texts: no call
            chunk = texts[start : start + CHUNK_TEXTS]
            try:
                result = await self._client.infer(self._model, [self._input(chunk)], client_timeout=self._timeout_s)
            except (InferenceServerException, grpc.RpcError) as exc:
                raise self._unavailable(exc) from None
            out[start : start + len(chunk)] = self._vectors(result, len(chunk))
        return out

    async def aclose(self) -> None:
        self._closed = True
        await self._client.close()
        if self._sync is not None:
            self._sync.close()

    @staticmethod
    def _check(texts: Sequence[str]) -> None:
        if isinstance(texts, str):
            raise InvalidArgument("texts: expected a sequence of strings, got one string")
        if len(texts) > MAX_TEXTS_PER_CALL:
            raise InvalidArgument(f"texts: at most {MAX_TEXTS_PER_CALL} per call, got {len(texts)}")

    @staticmethod
    def _input(texts: Sequence[str]) -> InferInput:
        tensor = InferInput("texts", [len(texts)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
        return tensor

    def _vectors(self, result: Any, n: int) -> Vectors:
        vectors = np.asarray(result.as_numpy("embeddings"), dtype=np.float32)
        if vectors.shape != (n, self._dimensions):
            raise Unavailable(f"Triton at {self._url} returned embeddings of shape {vectors.shape}")
        return vectors

    def _unavailable(self, exc: BaseException) -> Unavailable:
        return Unavailable(f"the embedder on Triton at {self._url} is unavailable: {_describe(exc)}")
