"""Long-term memory: documents with ACL labels, searched by vector, one index per tenant.

Tenants are hard walls: each has its own hnswlib index, vector matrix and
label postings, and a search only ever touches the caller's tenant. Within a
tenant every document carries ACL labels, and a caller sees a document iff it
holds one of them (`Principal.can_read`). The filter runs inside the search:
the planner (search_plan.py) scans exactly the visible vectors when they are
few and walks the graph with a per-candidate filter when they are many.

Each operation has a synchronous form (`put_sync`, ...) that works under the
tenant's lock, and an async form that runs it in a bounded executor, so the
event loop never computes (hnswlib releases the GIL while it searches).
Redis will be the source of truth later; `rebuild` is its entry point.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from antiphon.context.search_plan import IndexCounts, IndexState, PlannerConfig, SearchPlan
from antiphon.errors import InvalidArgument, PermissionDenied, Unavailable
from antiphon.gateway.principal import Principal

log = logging.getLogger(__name__)

LABEL_PATTERN = re.compile(r"[a-z0-9_.:-]{1,64}")
MAX_TOP_K = 100
MAX_ID_CHARS = 256
FORMAT_VERSION = 1
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Document:
    id: str
    text: str
    labels: frozenset[str]  # ACL labels: visible to callers holding any of them
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)
    source: str = ""


@dataclass(frozen=True, slots=True)
class Hit:
    document: Document
    score: float  # cosine similarity, -1..1


@dataclass(frozen=True, slots=True)
class SearchResult:
    hits: tuple[Hit, ...]
    plan: SearchPlan  # which algorithm ran (for traces)
    visible: int  # documents the caller may see in its tenant
    live: int  # documents in the tenant
    ef: int | None  # hnswlib ef for graph plans
    elapsed_s: float


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    dimensions: int = 384
    m: int = 16  # hnswlib graph degree
    ef_construction: int = 200
    planner: PlannerConfig = field(default_factory=PlannerConfig)
    max_text_bytes: int = 64 * 1024
    max_labels_per_document: int = 32
    max_documents_per_put: int = 1024
    # compact() rebuilds a tenant once this fraction of its slots hold deleted documents.
    compact_deleted_fraction: float = 0.2
    initial_capacity: int = 1024
    workers: int = 1  # executor threads for the async API
    index_threads: int = 1  # hnswlib threads per insert batch (rebuilds use them too)

    def __post_init__(self) -> None:
        checks = (
            (1 <= self.dimensions <= 4096, "dimensions", "must be 1..4096"),
            (2 <= self.m <= 128, "m", "must be 2..128"),
            (1 <= self.ef_construction <= 4096, "ef_construction", "must be 1..4096"),
            (self.max_text_bytes >= 1, "max_text_bytes", "must be >= 1"),
            (1 <= self.max_labels_per_document <= 1024, "max_labels_per_document", "must be 1..1024"),
            (self.max_documents_per_put >= 1, "max_documents_per_put", "must be >= 1"),
            (0 < self.compact_deleted_fraction < 1, "compact_deleted_fraction", "must be in (0, 1)"),
            (self.initial_capacity >= 1, "initial_capacity", "must be >= 1"),
            (1 <= self.workers <= 64, "workers", "must be 1..64"),
            (1 <= self.index_threads <= 64, "index_threads", "must be 1..64"),
        )
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"{name}: {rule}")


class _Tenant:
    """A tenant's lock and its current index state (compaction swaps the state)."""

    __slots__ = ("lock", "name", "state")

    def __init__(self, name: str, state: IndexState[Document]) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.state = state


class MemoryStore:
    def __init__(self, config: MemoryConfig | None = None) -> None:
        self.config = config or MemoryConfig()
        self._tenants: dict[str, _Tenant] = {}
        self._tenants_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="memory")
        self._closed = False

    # Async API: thin wrappers that keep the work off the event loop.

    async def put(self, principal: Principal, documents: Sequence[Document], vectors: npt.ArrayLike) -> None:
        await self._off_loop(self.put_sync, principal, documents, vectors)

    async def search(
        self,
        principal: Principal,
        query_vector: npt.ArrayLike,
        *,
        top_k: int = 5,
        min_score: float = -1.0,
        force_plan: SearchPlan | None = None,
    ) -> SearchResult:
        call = functools.partial(self.search_sync, top_k=top_k, min_score=min_score, force_plan=force_plan)
        return await self._off_loop(call, principal, query_vector)

    async def delete(self, principal: Principal, ids: Sequence[str]) -> int:
        return await self._off_loop(self.delete_sync, principal, ids)

    async def compact(self, tenant: str | None = None, *, force: bool = False) -> list[str]:
        return await self._off_loop(functools.partial(self.compact_sync, force=force), tenant)

    async def aclose(self) -> None:
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)

    async def _off_loop(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._closed:
            raise Unavailable("the memory store is shutting down")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise Unavailable("the memory store is shutting down") from None
            raise

    # Synchronous API.

    def put_sync(self, principal: Principal, documents: Sequence[Document], vectors: npt.ArrayLike) -> None:
        """Insert or replace (by id) documents in the caller's tenant.

        The caller must hold every label it writes, and every label of a
        document it replaces: nobody can relabel or overwrite what they could
        not have written.
        """
        matrix = self._check_batch(documents, vectors)
        for i, doc in enumerate(documents):
            missing = doc.labels - principal.labels
            if missing:
                raise PermissionDenied(f"documents[{i}].acl_labels: the caller does not hold {sorted(missing)}")
        self._write(principal.tenant, documents, matrix, principal.labels)

    def apply_put(self, tenant: str, documents: Sequence[Document], vectors: npt.ArrayLike) -> None:
        """Insert or replace without a caller: for the source of truth's change log, already authorised."""
        self._write(tenant, documents, self._check_batch(documents, vectors), None)

    def apply_delete(self, tenant: str, ids: Sequence[str]) -> int:
        """Delete without a caller (change log); returns how many existed."""
        current = self._find(tenant)
        if current is None:
            return 0
        with current.lock:
            return current.state.delete(ids)

    def chunk_ids(self, tenant: str, doc_id: str) -> list[str]:
        """Stored ids of a document: `doc_id` itself and its chunks `doc_id#0`, `doc_id#1`, ..."""
        current = self._find(tenant)
        if current is None:
            return []
        with current.lock:
            return current.state.ids_of(doc_id)

    def search_sync(
        self,
        principal: Principal,
        query_vector: npt.ArrayLike,
        *,
        top_k: int = 5,
        min_score: float = -1.0,
        force_plan: SearchPlan | None = None,
    ) -> SearchResult:
        """The caller's best `top_k` visible documents scoring at least `min_score`.

        `force_plan` (tests, benchmarks) overrides the planner; it can choose
        the algorithm, never what is visible.
        """
        start = time.perf_counter()
        if not 1 <= top_k <= MAX_TOP_K:
            raise InvalidArgument(f"top_k: must be 1..{MAX_TOP_K}, got {top_k}")
        if not -1.0 <= min_score <= 1.0:
            raise InvalidArgument(f"min_score: must be -1..1, got {min_score}")
        query = self._check_vectors(query_vector, 1, "query_vector")[0]
        tenant = self._find(principal.tenant)
        if tenant is None:
            return SearchResult((), SearchPlan.EMPTY, 0, 0, None, time.perf_counter() - start)
        with tenant.lock:
            outcome = tenant.state.search(principal.labels, query, top_k, self.config.planner, force_plan)
            hits = []
            for slot, score in zip(outcome.slots.tolist(), outcome.scores.tolist(), strict=True):
                if score < min_score:
                    break  # best first
                doc = tenant.state.documents[slot]
                if doc is None or not principal.can_read(doc.labels):
                    # Unreachable by construction; a defence in depth, not the filter.
                    log.error("memory search returned an invisible or deleted slot %d (plan %s)", slot, outcome.plan)
                    continue
                hits.append(Hit(doc, float(score)))
        return SearchResult(
            tuple(hits), outcome.plan, outcome.visible, outcome.live, outcome.ef, time.perf_counter() - start
        )

    def delete_sync(self, principal: Principal, ids: Sequence[str]) -> int:
        """Delete documents by id; returns how many existed. Ids the caller cannot see count as absent."""
        for i, doc_id in enumerate(ids):
            if not isinstance(doc_id, str) or not doc_id:
                raise InvalidArgument(f"ids[{i}]: must be a non-empty string")
        tenant = self._find(principal.tenant)
        if tenant is None:
            return 0
        with tenant.lock:
            state = tenant.state
            found = []
            for i, doc_id in enumerate(ids):
                doc = state.document(doc_id)
                if doc is None or not principal.can_read(doc.labels):
                    continue
                if not doc.labels <= principal.labels:
                    raise PermissionDenied(f"ids[{i}]: the caller may not delete document {doc_id!r}")
                found.append(doc_id)
            return state.delete(found)

    def needs_compaction(self, tenant: str) -> bool:
        current = self._find(tenant)
        if current is None:
            return False
        stats = current.state.counts()
        return stats.deleted > self.config.compact_deleted_fraction * max(1, stats.live + stats.deleted)

    def compact_sync(self, tenant: str | None = None, *, force: bool = False) -> list[str]:
        """Rebuild the index of each tenant (or the one named) whose deleted slots exceed
        `compact_deleted_fraction`, so deleted vectors leave memory. Returns the tenants rebuilt.

        The new index is built outside the lock from a snapshot and swapped in if
        nothing changed meanwhile; otherwise it is rebuilt under the lock.
        """
        names = [tenant] if tenant is not None else sorted(self._tenants)
        done = []
        for name in names:
            current = self._find(name)
            if current is None or not (force or self.needs_compaction(name)):
                continue
            with current.lock:
                generation = current.state.generation
                snapshot = current.state.live_items()
            fresh = self._build(snapshot)
            with current.lock:
                if current.state.generation != generation:
                    fresh = self._build(current.state.live_items())
                current.state = fresh
            done.append(name)
        return done

    def rebuild(self, tenant: str, items: Iterable[tuple[Document, npt.ArrayLike]]) -> None:
        """Replace a tenant's whole content (from the source of truth, e.g. Redis)."""
        if not tenant:
            raise InvalidArgument("tenant: must not be empty")
        documents: list[Document] = []
        rows: list[npt.NDArray[np.float32]] = []
        for i, (doc, vector) in enumerate(items):
            self._check_document(doc, f"documents[{i}]")
            rows.append(self._check_vectors(vector, 1, f"vectors[{i}]")[0])
            documents.append(doc)
        if len({d.id for d in documents}) != len(documents):
            raise InvalidArgument("documents: ids must be unique")
        matrix = np.stack(rows) if rows else np.empty((0, self.config.dimensions), dtype=np.float32)
        fresh = self._build((documents, matrix))
        current = self._tenant(tenant)
        with current.lock:
            current.state = fresh

    def stats(self, tenant: str) -> IndexCounts:
        current = self._find(tenant)
        if current is None:
            return IndexCounts(0, 0, 0, 0)
        with current.lock:
            return current.state.counts()

    def tenants(self) -> list[str]:
        return sorted(self._tenants)

    # Persistence: one folder per tenant, replaced atomically as a whole.

    def save(self, directory: Path) -> None:
        """Write every tenant under `directory` (an existing save there is replaced atomically)."""
        directory = directory.resolve()
        directory.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            manifest = {"format": FORMAT_VERSION, "dimensions": self.config.dimensions, "tenants": {}}
            for name in self.tenants():
                tenant = self._tenants[name]
                folder = _tenant_folder(name)
                with tenant.lock:
                    tenant.state.save(work / folder, _encode)
                manifest["tenants"][name] = folder  # type: ignore[index]  # a dict literal above
            _write_json(work / "memory.json", manifest)  # Last: its presence means complete.
            old = work / "old"
            if directory.exists():
                directory.rename(old)
            work.rename(directory)
            shutil.rmtree(directory / "old", ignore_errors=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def load(self, directory: Path) -> None:
        """Replace the in-memory tenants with those saved under `directory`."""
        try:
            manifest = json.loads((directory / "memory.json").read_text())
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"memory directory {directory}: no readable memory.json ({exc})") from None
        if manifest.get("format") != FORMAT_VERSION or manifest.get("dimensions") != self.config.dimensions:
            raise InvalidArgument(f"memory directory {directory}: format or dimensions do not match this store")
        try:
            loaded = {
                name: _Tenant(name, IndexState.load(directory / folder, _decode, self.config.dimensions))
                for name, folder in manifest["tenants"].items()
            }
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise InvalidArgument(f"memory directory {directory}: cannot load ({exc})") from None
        with self._tenants_lock:
            self._tenants = loaded

    # Internals.

    def _find(self, name: str) -> _Tenant | None:
        if not name:
            raise InvalidArgument("principal.tenant: must not be empty")
        return self._tenants.get(name)

    def _tenant(self, name: str) -> _Tenant:
        """The tenant, created empty on first write."""
        tenant = self._find(name)
        if tenant is None:
            with self._tenants_lock:
                tenant = self._tenants.get(name)
                if tenant is None:
                    tenant = _Tenant(name, self._empty_state(self.config.initial_capacity))
                    self._tenants[name] = tenant
        return tenant

    def _write(
        self, tenant: str, documents: Sequence[Document], matrix: npt.NDArray[np.float32], held: frozenset[str] | None
    ) -> None:
        if not documents:
            return
        current = self._tenant(tenant)
        with current.lock:
            state = current.state
            for i, doc in enumerate(documents):
                old = state.document(doc.id)
                if held is not None and old is not None and not old.labels <= held:
                    raise PermissionDenied(f"documents[{i}].id: the caller may not replace document {doc.id!r}")
            state.upsert(documents, matrix, threads=self.config.index_threads)

    def _check_batch(self, documents: Sequence[Document], vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
        if len(documents) > self.config.max_documents_per_put:
            raise InvalidArgument(f"documents: at most {self.config.max_documents_per_put} per call")
        matrix = self._check_vectors(vectors, len(documents), "vectors")
        seen: set[str] = set()
        for i, doc in enumerate(documents):
            self._check_document(doc, f"documents[{i}]")
            if doc.id in seen:
                raise InvalidArgument(f"documents[{i}].id: {doc.id!r} appears twice in one call")
            seen.add(doc.id)
        return matrix

    def _empty_state(self, capacity: int) -> IndexState[Document]:
        c = self.config
        return IndexState(c.dimensions, c.m, c.ef_construction, capacity)

    def _build(self, items: tuple[Sequence[Document], npt.NDArray[np.float32]]) -> IndexState[Document]:
        documents, matrix = items
        state = self._empty_state(max(self.config.initial_capacity, len(documents)))
        if documents:
            state.upsert(list(documents), matrix, threads=self.config.index_threads)
        return state

    def _check_document(self, doc: Document, where: str) -> None:
        if not isinstance(doc.id, str) or not doc.id or len(doc.id) > MAX_ID_CHARS:
            raise InvalidArgument(f"{where}.id: must be 1..{MAX_ID_CHARS} characters")
        if not isinstance(doc.text, str) or not doc.text.strip():
            raise InvalidArgument(f"{where}.text: must not be empty")
        size = len(doc.text.encode("utf-8", "surrogatepass"))
        if size > self.config.max_text_bytes:
            raise InvalidArgument(f"{where}.text: {size} bytes; at most {self.config.max_text_bytes} (chunk it)")
        if not isinstance(doc.labels, frozenset) or not doc.labels:
            raise InvalidArgument(f"{where}.acl_labels: at least one label is required")
        if len(doc.labels) > self.config.max_labels_per_document:
            raise InvalidArgument(f"{where}.acl_labels: at most {self.config.max_labels_per_document} labels")
        for label in sorted(doc.labels, key=str):
            if not isinstance(label, str) or not LABEL_PATTERN.fullmatch(label):
                raise InvalidArgument(f"{where}.acl_labels: {label!r} does not match {LABEL_PATTERN.pattern}")
        for key, value in doc.metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidArgument(f"{where}.metadata: keys and values must be strings")

    def _check_vectors(self, vectors: npt.ArrayLike, rows: int, where: str) -> npt.NDArray[np.float32]:
        """As a C-contiguous float32 (rows, dimensions) matrix of unit rows."""
        try:
            matrix = np.array(vectors, dtype=np.float32, ndmin=2)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{where}: not a numeric array") from None
        if matrix.shape != (rows, self.config.dimensions):
            raise InvalidArgument(f"{where}: shape {matrix.shape}, expected ({rows}, {self.config.dimensions})")
        if not np.isfinite(matrix).all():
            raise InvalidArgument(f"{where}: contains NaN or infinity")
        norms = np.linalg.norm(matrix, axis=1, keepdims=True)
        if rows and norms.min() < 1e-6:
            raise InvalidArgument(f"{where}: a zero vector cannot be compared")
        return np.ascontiguousarray(matrix / norms, dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Chunk:
    id: str  # "<document id>#<n>"
    text: str
    start: int  # character offsets of the chunk in the original text
    end: int


_WORD = re.compile(r"\S+")


def chunk_text(text: str, *, doc_id: str, max_words: int = 180, overlap_words: int = 30) -> list[Chunk]:
    """Split long text into overlapping windows of whole words, ids `doc_id#0`, `doc_id#1`, ...

    180 words is about 230 WordPiece tokens of English prose, under the
    embedder's 256-token window, so no chunk is silently truncated.
    """
    if max_words < 1 or not 0 <= overlap_words < max_words:
        raise ValueError("max_words must be >= 1 and overlap_words in [0, max_words)")
    spans = [m.span() for m in _WORD.finditer(text)]
    if not spans:
        return []
    chunks = []
    step = max_words - overlap_words
    for n, first in enumerate(range(0, max(1, len(spans) - overlap_words), step)):
        window = spans[first : first + max_words]
        start, end = window[0][0], window[-1][1]
        chunks.append(Chunk(f"{doc_id}#{n}", text[start:end], start, end))
    return chunks


def _encode(doc: Document) -> dict[str, Any]:
    labels = sorted(doc.labels)
    return {"id": doc.id, "text": doc.text, "labels": labels, "metadata": dict(doc.metadata), "source": doc.source}


def _decode(raw: dict[str, Any]) -> Document:
    return Document(raw["id"], raw["text"], frozenset(raw["labels"]), dict(raw["metadata"]), raw["source"])


def _tenant_folder(tenant: str) -> str:
    """A folder name for any tenant string: hex, so no name can escape the directory."""
    return "t-" + tenant.encode("utf-8").hex()


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)
