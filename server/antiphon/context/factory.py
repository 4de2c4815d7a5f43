"""Builds the long-term memory stack (embedder, hnswlib store, Redis change log) from the settings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from antiphon.config import ContextSettings, Settings
from antiphon.context.documents import DocumentService
from antiphon.context.memory import MemoryStore
from antiphon.errors import Unavailable
from antiphon.inference.embedder import Embedder, OnnxEmbedder
from antiphon.inference.prepare_embedder import EMBEDDER_MODEL_NAME, is_embedder_prepared
from antiphon.redis_support import redis_client

log = logging.getLogger(__name__)


async def open_documents(settings: Settings) -> DocumentService | None:
    """The document service, or None (memory RPCs answer UNAVAILABLE) when the embedder is not prepared."""
    models = settings.models.path
    if not is_embedder_prepared(models):
        log.warning(
            "embedder %s is not prepared in %s: long-term memory is off (run `antiphon models prepare`)",
            EMBEDDER_MODEL_NAME,
            models,
        )
        return None
    embedder: Embedder
    m = settings.models
    if m.backend == "triton":
        from antiphon.inference.triton_embedder import TritonEmbedder

        try:
            embedder = await TritonEmbedder.open(m.triton_url, models_dir=models, timeout_s=m.triton_timeout_s)
        except Unavailable as exc:
            if not m.triton_fallback:
                raise
            log.error("Triton unreachable at start; embedding in process: %s", exc.message)
            embedder = OnnxEmbedder.from_models_dir(models)
    else:
        embedder = OnnxEmbedder.from_models_dir(models)
    c = settings.context
    persist = Path(c.memory_dir) if c.memory_dir else None
    return DocumentService(MemoryStore(), embedder, redis=memory_redis(c), prefix=c.redis_prefix, persist_dir=persist)


def memory_redis(c: ContextSettings) -> Any:
    """The memory store's client where context.sessions = "redis", else None. Binary-safe: vectors
    are stored as raw float32 bytes."""
    if c.sessions != "redis":
        return None
    return redis_client(c, max_connections=32, timeout_s=5.0, decode_responses=False)
