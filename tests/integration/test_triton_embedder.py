"""Embeddings through a real tritonserver match the in-process OnnxEmbedder."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from antiphon.errors import ModelMissing, Unavailable
from antiphon.inference.embedder import OnnxEmbedder
from antiphon.inference.triton_embedder import TritonEmbedder
from tests.integration.conftest import models_dir
from tests.integration.triton_server import TritonServer, free_port, triton, triton_repository

__all__ = ["triton", "triton_repository"]  # module-scoped fixtures used below

TEXTS = [
    "The capital of France is Paris.",
    "Barge-in cancels the agent's turn within one frame.",
    "ok",
    "Ünïcödé and emoji 🎙️ survive the trip.",
]


@pytest.fixture
async def triton_embedder(triton: TritonServer) -> AsyncIterator[TritonEmbedder]:
    embedder = await TritonEmbedder.open(triton.url, models_dir=models_dir())
    try:
        yield embedder
    finally:
        await embedder.aclose()


async def test_vectors_match_the_embedded_backend(triton_embedder: TritonEmbedder) -> None:
    local = OnnxEmbedder.from_models_dir(models_dir())
    try:
        expected = local.embed_sync(TEXTS)
    finally:
        await local.aclose()
    remote = await triton_embedder.embed(TEXTS)
    assert remote.shape == (len(TEXTS), 384)
    assert remote.dtype == np.float32
    cosine = np.sum(remote * expected, axis=1) / (np.linalg.norm(remote, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.9999
    assert np.allclose(triton_embedder.embed_sync(TEXTS), remote, atol=1e-6)
    assert triton_embedder.name == local.name
    assert triton_embedder.dimensions == local.dimensions
    assert (await triton_embedder.embed([])).shape == (0, 384)


async def test_triton_down_is_unavailable_naming_the_url() -> None:
    url = f"127.0.0.1:{free_port()}"
    with pytest.raises(Unavailable, match=url):
        await TritonEmbedder.open(url, timeout_s=1)


async def test_missing_model_is_named(triton: TritonServer) -> None:
    with pytest.raises(ModelMissing, match="'antiphon_embed_v2'"):
        await TritonEmbedder.open(triton.url, model_name="antiphon_embed_v2")
