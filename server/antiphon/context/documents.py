"""Long-term memory documents: chunk, embed, store, search, delete — across workers.

With Redis configured, Redis holds every chunk and its vector (the source of
truth) and a Redis Stream is the change log: a write is acknowledged once it is
in Redis and the log; every worker applies the log to its in-process hnswlib
indexes (its own writes at once, for read-your-writes). A worker that starts
rebuilds its indexes from Redis, then follows the log from where the rebuild
began. Without Redis, the in-process store is all there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from antiphon.aio import cancel_and_wait
from antiphon.context.builder import RetrievedMemory
from antiphon.context.memory import Document, MemoryStore, SearchResult, chunk_text
from antiphon.errors import InvalidArgument
from antiphon.gateway.principal import Principal
from antiphon.inference.embedder import Embedder
from antiphon.redis_support import close_redis, unavailable_on_redis_error

log = logging.getLogger(__name__)

MAX_DOCUMENT_CHARS = 256 * 1024
MAX_DOCUMENTS_PER_CALL = 256
MAX_CHUNKS_PER_CALL = 1024
COMPACT_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class DocumentInput:
    id: str
    text: str
    labels: frozenset[str]
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = ""


class DocumentService:
    def __init__(
        self,
        store: MemoryStore,
        embedder: Embedder,
        *,
        redis: aioredis.Redis | None = None,
        prefix: str = "antiphon",
        persist_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.embedder = embedder
        # Any: redis-py's return types are unions of every decoding mode; this client returns bytes.
        self._redis: Any = redis
        self._prefix = prefix
        self._stream = f"{prefix}:changes"
        self._worker_id = uuid.uuid4().hex
        # Without Redis the indexes are the only copy: saved at shutdown, loaded at start.
        self._persist_dir = persist_dir if redis is None else None
        self._follower: asyncio.Task[None] | None = None
        self._compactor: asyncio.Task[None] | None = None
        self._closing = False  # the loops' own exit: a Redis call may swallow their cancel
        self.applied = 0  # change-log entries applied from other workers

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._compactor = asyncio.create_task(self._compact_periodically(), name="memory-compaction")
        if self._redis is None:
            if self._persist_dir is not None and (self._persist_dir / "memory.json").is_file():
                await asyncio.get_running_loop().run_in_executor(None, self.store.load, self._persist_dir)
                log.info("memory loaded", extra={"dir": str(self._persist_dir), "tenants": len(self.store.tenants())})
            return
        try:
            last = await self._rebuild_from_redis()
        except (RedisError, OSError) as exc:
            log.error("memory rebuild from Redis failed; following the change log from now: %s", exc)
            last = "$"
        self._follower = asyncio.create_task(self._follow(last), name="memory-changelog")

    async def aclose(self) -> None:
        self._closing = True
        await cancel_and_wait(self._follower, self._compactor)
        if self._persist_dir is not None:
            await asyncio.get_running_loop().run_in_executor(None, self.store.save, self._persist_dir)
        await self.embedder.aclose()
        await self.store.aclose()
        if self._redis is not None:
            await close_redis(self._redis)

    # ------------------------------------------------------------------ API

    async def put(self, principal: Principal, documents: Sequence[DocumentInput]) -> tuple[list[str], int]:
        """Store documents (long text is chunked); returns their ids and the number of chunks."""
        if not documents:
            raise InvalidArgument("documents: at least one document is required")
        if len(documents) > MAX_DOCUMENTS_PER_CALL:
            raise InvalidArgument(f"documents: at most {MAX_DOCUMENTS_PER_CALL} per call")
        chunks: list[Document] = []
        for i, doc in enumerate(documents):
            if not doc.id or len(doc.id) > 200 or "#" in doc.id:
                raise InvalidArgument(f"documents[{i}].id: 1..200 characters, without '#'")
            if not doc.text.strip():
                raise InvalidArgument(f"documents[{i}].text: must not be empty")
            if len(doc.text) > MAX_DOCUMENT_CHARS:
                raise InvalidArgument(f"documents[{i}].text: {len(doc.text)} characters exceeds {MAX_DOCUMENT_CHARS}")
            if not doc.labels:
                raise InvalidArgument(f"documents[{i}].acl_labels: at least one label is required")
            meta = {**doc.metadata, "document_id": doc.id}
            chunks += [
                Document(c.id, c.text, doc.labels, meta, doc.source) for c in chunk_text(doc.text, doc_id=doc.id)
            ]
        if len(chunks) > MAX_CHUNKS_PER_CALL:
            raise InvalidArgument(
                f"documents: {len(chunks)} chunks exceed {MAX_CHUNKS_PER_CALL} per call; "
                "send fewer or shorter documents"
            )
        vectors = await self.embedder.embed([c.text for c in chunks])
        # Replacing a document: its old chunks go first (a shorter text has fewer chunks).
        stale = [c for d in documents for c in await self._chunk_ids(principal.tenant, d.id)]
        await self.store.put(principal, chunks, vectors)  # checks labels; raises before anything is written
        fresh = {c.id for c in chunks}
        if gone := [cid for cid in stale if cid not in fresh]:
            await self._off_loop(self.store.apply_delete, principal.tenant, gone)
        if self._redis is not None:
            await self._write_redis(principal.tenant, documents, chunks, vectors, gone)
        return [d.id for d in documents], len(chunks)

    async def search(self, principal: Principal, query: str, top_k: int, min_score: float) -> SearchResult:
        if not query.strip():
            raise InvalidArgument("query: must not be empty")
        vector = await self.embedder.embed([query])
        return await self.store.search(principal, vector, top_k=top_k, min_score=min_score)

    async def delete(self, principal: Principal, ids: Sequence[str]) -> int:
        """Delete documents (all their chunks); returns how many documents existed."""
        deleted = 0
        for doc_id in ids:
            chunk_ids = await self._chunk_ids(principal.tenant, doc_id)
            if chunk_ids and await self.store.delete(principal, chunk_ids):
                deleted += 1
                if self._redis is not None:
                    await self._delete_redis(principal.tenant, doc_id, chunk_ids)
        return deleted

    async def retrieve(self, principal: Principal, query: str, top_k: int, min_score: float) -> list[RetrievedMemory]:
        """The context builder's retriever: the principal's most relevant chunks."""
        if self.store.stats(principal.tenant).live == 0:
            return []  # nothing stored for this tenant: skip embedding the query (a few ms per turn)
        result = await self.search(principal, query, top_k, min_score)
        return [RetrievedMemory(h.document.id, h.document.text, h.score, h.document.labels) for h in result.hits]

    # ------------------------------------------------------------------ Redis

    def _doc_key(self, tenant: str, doc_id: str) -> str:
        return f"{self._prefix}:{tenant}:doc:{doc_id}"

    async def _chunk_ids(self, tenant: str, doc_id: str) -> list[str]:
        return self.store.chunk_ids(tenant, doc_id)

    def _errors(self, what: str) -> contextlib.AbstractAsyncContextManager[None]:
        return unavailable_on_redis_error("document store", what, "retry; the write was not acknowledged")

    async def _write_redis(
        self, tenant: str, documents: Sequence[DocumentInput], chunks: list[Document], vectors: Any, gone: list[str]
    ) -> None:
        assert self._redis is not None
        matrix = np.asarray(vectors, dtype=np.float32)
        async with self._errors("write documents"), self._redis.pipeline(transaction=True) as pipe:
            for doc in documents:
                mine = [i for i, c in enumerate(chunks) if c.metadata.get("document_id") == doc.id]
                pipe.delete(self._doc_key(tenant, doc.id))
                pipe.hset(
                    self._doc_key(tenant, doc.id),
                    mapping={
                        "chunks": json.dumps([_encode(chunks[i]) for i in mine]),
                        "vectors": matrix[mine].tobytes(),
                    },
                )
                pipe.sadd(f"{self._prefix}:tenants", tenant)
                pipe.xadd(self._stream, {"op": "put", "tenant": tenant, "doc": doc.id, "origin": self._worker_id})
            for cid in gone:
                pipe.xadd(self._stream, {"op": "drop", "tenant": tenant, "doc": cid, "origin": self._worker_id})
            await pipe.execute()

    async def _delete_redis(self, tenant: str, doc_id: str, chunk_ids: list[str]) -> None:
        assert self._redis is not None
        async with self._errors("delete documents"), self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._doc_key(tenant, doc_id))
            pipe.xadd(self._stream, {"op": "delete", "tenant": tenant, "doc": doc_id, "origin": self._worker_id})
            await pipe.execute()

    async def _load_doc(self, tenant: str, doc_id: str) -> tuple[list[Document], np.ndarray] | None:
        assert self._redis is not None
        raw = await self._redis.hgetall(self._doc_key(tenant, doc_id))
        if not raw:
            return None
        chunks = [_decode(c) for c in json.loads(raw[b"chunks"])]
        vectors = np.frombuffer(raw[b"vectors"], dtype=np.float32).reshape(len(chunks), -1)
        return chunks, vectors

    async def _rebuild_from_redis(self) -> str:
        """Load every document from Redis; returns the change-log id to follow from."""
        assert self._redis is not None
        newest = await self._redis.xrevrange(self._stream, count=1)
        last = newest[0][0].decode() if newest else "0-0"
        for raw_tenant in await self._redis.smembers(f"{self._prefix}:tenants"):
            tenant = raw_tenant.decode()
            items: list[tuple[Document, np.ndarray]] = []
            async for key in self._redis.scan_iter(match=f"{self._prefix}:{tenant}:doc:*", count=500):
                doc_id = key.decode().rsplit(":doc:", 1)[1]
                loaded = await self._load_doc(tenant, doc_id)
                if loaded is not None:
                    items += list(zip(loaded[0], loaded[1], strict=True))
            await asyncio.get_running_loop().run_in_executor(None, self.store.rebuild, tenant, items)
            log.info("memory rebuilt from redis", extra={"tenant": tenant, "chunks": len(items)})
        return last

    async def _follow(self, last: str) -> None:
        """Apply other workers' writes from the change log, in order, for as long as we run."""
        assert self._redis is not None
        while not self._closing:
            try:
                batches = await self._redis.xread({self._stream: last}, block=1000, count=100)
            except (RedisError, OSError) as exc:
                if not self._closing:
                    log.warning("change log read failed, retrying: %s", exc)
                    await asyncio.sleep(1.0)
                continue
            for _stream, entries in batches or []:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    if fields.get(b"origin", b"").decode() == self._worker_id:
                        continue  # applied locally when it was written
                    await self._apply(fields)

    def _replace(self, tenant: str, doc_id: str, chunks: list[Document], vectors: np.ndarray) -> None:
        self.store.apply_delete(tenant, self.store.chunk_ids(tenant, doc_id))
        self.store.apply_put(tenant, chunks, vectors)

    async def _off_loop(self, fn: Any, *args: Any) -> Any:
        """Index writes take the tenant's lock and touch hnswlib: never on the event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    async def _compact_periodically(self) -> None:
        """Rebuild indexes whose deleted slots pass the threshold, so deleted vectors leave memory."""
        while not self._closing:
            await asyncio.sleep(COMPACT_EVERY_S)
            rebuilt = await self.store.compact()
            if rebuilt:
                log.info("memory compacted", extra={"tenants": rebuilt})

    async def _apply(self, fields: dict[bytes, bytes]) -> None:
        op, tenant, doc_id = (fields[k].decode() for k in (b"op", b"tenant", b"doc"))
        try:
            if op == "put":
                loaded = await self._load_doc(tenant, doc_id)
                if loaded is not None:  # None: deleted since; its delete entry follows
                    await self._off_loop(self._replace, tenant, doc_id, loaded[0], loaded[1])
            elif op == "delete":
                await self._off_loop(lambda: self.store.apply_delete(tenant, self.store.chunk_ids(tenant, doc_id)))
            elif op == "drop":
                await self._off_loop(self.store.apply_delete, tenant, [doc_id])
            self.applied += 1
        except (RedisError, OSError) as exc:
            log.warning("could not apply change %s for %s: %s", op, doc_id, exc)


def _encode(doc: Document) -> dict[str, Any]:
    return {
        "id": doc.id,
        "text": doc.text,
        "labels": sorted(doc.labels),
        "metadata": dict(doc.metadata),
        "source": doc.source,
    }


def _decode(raw: dict[str, Any]) -> Document:
    return Document(raw["id"], raw["text"], frozenset(raw["labels"]), dict(raw["metadata"]), raw.get("source", ""))
