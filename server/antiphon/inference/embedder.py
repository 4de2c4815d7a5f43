"""Sentence embeddings: the interface, and the ONNX Runtime backend.

Vectors are float32, one row per text, L2-normalised: a dot product is the
cosine similarity. The ONNX backend needs only onnxruntime, tokenizers and
numpy (the model was exported by `antiphon models prepare`); it runs in a
bounded thread pool, one batch per job, so concurrent callers take turns
batch by batch and the event loop never runs inference.
"""

from __future__ import annotations

import abc
import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from antiphon.errors import InvalidArgument, ModelMissing, Unavailable
from antiphon.inference.prepare_embedder import (
    CONFIG_FILE,
    EMBEDDER_MODEL_NAME,
    MODEL_FILE,
    TOKENIZER_FILE,
    configure_tokenizer,
    embedder_model_dir,
    is_embedder_prepared,
)

Vectors = npt.NDArray[np.float32]

MAX_TEXTS_PER_CALL = 4096


class Embedder(abc.ABC):
    """Turns texts into unit-length float32 vectors of `dimensions` columns."""

    @property
    @abc.abstractmethod
    def name(self) -> str: ...

    @property
    @abc.abstractmethod
    def dimensions(self) -> int: ...

    @abc.abstractmethod
    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        """Embed on the calling thread (tools, benchmarks, executor jobs)."""

    @abc.abstractmethod
    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed off the event loop; returns shape (len(texts), dimensions)."""

    async def aclose(self) -> None:  # optional hook: most fakes hold nothing
        return None


@dataclass(frozen=True, slots=True)
class EmbedderOptions:
    threads: int = 1  # ONNX Runtime intra-op threads per call
    # Texts per model call (and per executor job). A call's texts are sorted by length
    # before batching, so small batches pad little: 16 beat 64 by 1.3x on docstring sentences.
    batch_size: int = 16
    workers: int = 1  # executor threads; each runs one batch at a time

    def __post_init__(self) -> None:
        if not 1 <= self.threads <= 64:
            raise ValueError("threads: must be 1..64")
        if not 1 <= self.batch_size <= 1024:
            raise ValueError("batch_size: must be 1..1024")
        if not 1 <= self.workers <= 16:
            raise ValueError("workers: must be 1..16")


class OnnxEmbedder(Embedder):
    def __init__(self, model_dir: Path, options: EmbedderOptions | None = None) -> None:
        import onnxruntime as ort  # native import kept out of module import
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
        from tokenizers import Tokenizer

        self._options = options or EmbedderOptions()
        config = json.loads((model_dir / CONFIG_FILE).read_text())
        self._name = str(config["model"])
        self._dimensions = int(config["dimensions"])
        self._output = str(config["output"])
        self._dir = model_dir
        self._tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_FILE))
        configure_tokenizer(self._tokenizer)  # in case the file's settings were edited
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = self._options.threads
        session_options.inter_op_num_threads = 1
        session_options.log_severity_level = 3
        self._session: Any = ort.InferenceSession(
            str(model_dir / MODEL_FILE), session_options, providers=["CPUExecutionProvider"]
        )
        # onnxruntime's errors derive from Exception, not RuntimeError.
        self._model_errors: tuple[type[Exception], ...] = (
            ort_state.Fail,
            ort_state.RuntimeException,
            ort_state.InvalidArgument,
            ort_state.EPFail,
        )
        self._executor = ThreadPoolExecutor(max_workers=self._options.workers, thread_name_prefix="embedder")
        self._closed = False

    @classmethod
    def from_models_dir(cls, models_dir: Path, options: EmbedderOptions | None = None) -> OnnxEmbedder:
        if not is_embedder_prepared(models_dir):
            raise ModelMissing(
                f"embedder model {EMBEDDER_MODEL_NAME!r} is not prepared in {models_dir}: "
                f"run `antiphon models prepare --models-dir {models_dir}` (or `make models`)"
            )
        return cls(embedder_model_dir(models_dir), options)

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def path(self) -> Path:
        return self._dir

    def embed_sync(self, texts: Sequence[str]) -> Vectors:
        order = self._plan(texts)
        out = np.empty((len(order), self._dimensions), dtype=np.float32)
        for batch in self._batches(order):
            out[batch] = self._run([texts[i] for i in batch])
        return out

    async def embed(self, texts: Sequence[str]) -> Vectors:
        if self._closed:
            raise Unavailable("the embedder is shutting down")
        order = self._plan(texts)
        out = np.empty((len(order), self._dimensions), dtype=np.float32)
        loop = asyncio.get_running_loop()
        for batch in self._batches(order):
            try:
                out[batch] = await loop.run_in_executor(self._executor, self._run, [texts[i] for i in batch])
            except RuntimeError as exc:
                if "shutdown" in str(exc):
                    raise Unavailable("the embedder is shutting down") from None
                raise
        return out

    async def aclose(self) -> None:
        self._closed = True
        # Jobs are single batches; waiting for the one in flight is bounded.
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    def _plan(self, texts: Sequence[str]) -> npt.NDArray[np.intp]:
        """Indices sorted by length: each batch pads to its longest text, so similar
        lengths together waste the least compute."""
        if isinstance(texts, str):
            raise InvalidArgument("texts: expected a sequence of strings, got one string")
        if len(texts) > MAX_TEXTS_PER_CALL:
            raise InvalidArgument(f"texts: at most {MAX_TEXTS_PER_CALL} per call, got {len(texts)}")
        return np.argsort(np.fromiter((len(t) for t in texts), dtype=np.intp, count=len(texts)), kind="stable")

    def _batches(self, order: npt.NDArray[np.intp]) -> list[npt.NDArray[np.intp]]:
        size = self._options.batch_size
        return [order[i : i + size] for i in range(0, len(order), size)]

    def _run(self, texts: list[str]) -> Vectors:
        """One model call (on an executor thread or the caller's)."""
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        try:
            vectors = self._session.run([self._output], {"input_ids": ids, "attention_mask": mask})[0]
        except self._model_errors as exc:
            raise Unavailable(f"the embedder failed: {exc}") from None
        return np.ascontiguousarray(vectors, dtype=np.float32)
