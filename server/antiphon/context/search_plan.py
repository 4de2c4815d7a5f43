"""How a memory search runs, chosen by how many documents the caller may see.

hnswlib's `filter=` calls back into Python for every candidate it visits and,
when few documents are visible, walks much of the graph before it has k of
them: at 100k documents (bench/bench_memory.py) ef=64 costs 0.9 ms at 50%
visible, 3.2 ms at 10%, 19 ms at 1%. An exact scan costs time proportional to
the vectors it reads, and reading them is the cost: gathering 10k scattered
rows of the tenant matrix took 3-4 ms, a product over 10k contiguous rows
0.7 ms. So, as vector databases do, the planner scans small visible sets
exactly, over a per-label contiguous copy of the label's vectors (a "block",
built on first use and dropped on change, within a memory budget), and walks
the graph with the access-control filter inside the search when many
documents are visible. ef=64 kept recall@10 >= 0.998 down to 5% visible (a
filtered walk keeps going until it has ef visible candidates), so ef is
raised only when top_k is large for the visible fraction.

`IndexState` is one tenant's index: the hnswlib graph, a contiguous float32
matrix of the same vectors (row = hnswlib label = slot) and label -> slots
postings. It knows documents only by id and labels; memory.py owns the rest
and the locks.
"""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import hnswlib  # type: ignore[import-untyped]  # ships no type information
import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
Scores = npt.NDArray[np.float32]
Slots = npt.NDArray[np.int64]
INDEX_FILE, VECTORS_FILE, DOCUMENTS_FILE, STATE_FILE = "index.bin", "vectors.npy", "documents.json", "state.json"


class SearchPlan(enum.StrEnum):
    """Which algorithm answered a search (reported in traces as `SearchResult.plan`)."""

    EMPTY = "empty"  # nothing visible to the caller: no index touched
    EXACT = "exact"  # dot products over exactly the visible vectors
    HNSW = "hnsw"  # every live document is visible: the plain graph search
    HNSW_FILTERED = "hnsw_filtered"  # graph search that skips invisible documents as it walks


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    # Scan exactly when it reads at most this many vectors (the sum over the
    # caller's labels), or when at most `exact_max_fraction` of the tenant is
    # visible (a filtered walk slows as 1/fraction). Chosen with bench_memory.py.
    exact_max_rows: int = 20_000
    exact_max_fraction: float = 0.05
    ef_search: int = 64  # hnswlib ef for graph searches
    # ef >= top_k * ef_per_result / visible_fraction, at most ef_max.
    ef_per_result: float = 0.5
    ef_max: int = 800
    # Labels with at least this many documents get a contiguous copy of their vectors
    # when scanned; all such copies together hold at most block_budget x the live vectors.
    block_min_rows: int = 1024
    block_budget: float = 1.0

    def __post_init__(self) -> None:
        if self.exact_max_rows < 0:
            raise ValueError("exact_max_rows: must be >= 0")
        if not 0 <= self.exact_max_fraction <= 1:
            raise ValueError("exact_max_fraction: must be 0..1")
        if not 1 <= self.ef_search <= self.ef_max:
            raise ValueError("ef_search: must be 1..ef_max")
        if self.ef_per_result < 0:
            raise ValueError("ef_per_result: must be >= 0")
        if self.block_min_rows < 1 or self.block_budget < 0:
            raise ValueError("block_min_rows: must be >= 1; block_budget: must be >= 0")


def choose_plan(visible: int, live: int, scan_rows: int, config: PlannerConfig) -> SearchPlan:
    """The cheapest plan that keeps recall: exact for small visible sets, the graph otherwise."""
    if visible == 0:
        return SearchPlan.EMPTY
    if scan_rows <= config.exact_max_rows or visible <= config.exact_max_fraction * live:
        return SearchPlan.EXACT
    return SearchPlan.HNSW if visible >= live else SearchPlan.HNSW_FILTERED


def search_ef(visible: int, live: int, top_k: int, config: PlannerConfig) -> int:
    """hnswlib's ef for a graph search: the base value, raised when top_k is large for the visible fraction."""
    base = max(config.ef_search, top_k)
    if visible >= live or live == 0:
        return base
    fraction = max(visible, 1) / live
    return int(min(max(config.ef_max, top_k), max(base, math.ceil(top_k * config.ef_per_result / fraction))))


def dot(rows: Matrix, query: Scores) -> Scores:
    """rows @ query on this thread. einsum, not BLAS: OpenBLAS threads its GEMV, and with
    a busy second core that cost 8 ms stalls; single-threaded it was also faster past the cache."""
    return np.einsum("ij,j->i", rows, query)  # type: ignore[no-any-return]  # einsum is loosely typed


def top_k_of(slots: Slots, scores: Scores, k: int) -> tuple[Slots, Scores]:
    """The k best (slot, score) pairs, best first."""
    if k <= 0 or len(slots) == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    order = top[np.argsort(-scores[top], kind="stable")]
    return slots[order], scores[order]


def exact_top_k(vectors: Matrix, slots: Slots, query: Scores, k: int) -> tuple[Slots, Scores]:
    """Best k of `slots` (rows of `vectors`) by dot product with `query`, best first."""
    if len(slots) == 0:
        return top_k_of(slots, np.empty(0, dtype=np.float32), k)
    return top_k_of(slots, dot(vectors[slots], query), k)


def merge_top_k(parts: Sequence[tuple[Slots, Scores]], k: int) -> tuple[Slots, Scores]:
    """Best k over several best-first lists that may share slots (a document with two of the caller's labels)."""
    if len(parts) == 1:
        return parts[0]
    slots = np.concatenate([p[0] for p in parts])
    scores = np.concatenate([p[1] for p in parts])
    order = np.argsort(-scores, kind="stable")
    _, first = np.unique(slots[order], return_index=True)
    keep = order[np.sort(first)][:k]
    return slots[keep], scores[keep]


def mask_filter(mask: npt.NDArray[np.bool_]) -> Callable[[int], bool]:
    """The per-candidate callback for hnswlib: one C-level index into a byte view, no Python frame."""
    view = memoryview(cast(bytes, mask.view(np.uint8)))  # numpy arrays are buffers; the stubs disagree
    return cast(Callable[[int], bool], view.__getitem__)  # returns 0/1, which hnswlib takes as bool


@dataclass(frozen=True, slots=True)
class SearchOutcome:
    slots: Slots  # best first
    scores: npt.NDArray[np.float32]
    plan: SearchPlan
    visible: int
    live: int
    ef: int | None


@dataclass(frozen=True, slots=True)
class IndexCounts:
    live: int
    deleted: int  # slots holding a deleted document until reused or compacted
    capacity: int
    labels: int


class Labelled(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def labels(self) -> frozenset[str]: ...


D = TypeVar("D", bound=Labelled)


class _Posting:
    """The slots carrying one label: a set for updates, a cached array for searches.

    Appends extend the cached array cheaply; a removal drops it (rebuilt on the next search).
    """

    __slots__ = ("_added", "_array", "members")

    def __init__(self) -> None:
        self.members: set[int] = set()
        self._array: Slots | None = None
        self._added: list[int] = []

    def add(self, slot: int) -> None:
        self.members.add(slot)
        if self._array is not None:
            self._added.append(slot)

    def remove(self, slot: int) -> None:
        self.members.discard(slot)
        self._array, self._added = None, []

    def array(self) -> Slots:
        if self._array is None:
            self._array = np.fromiter(self.members, dtype=np.int64, count=len(self.members))
        elif self._added:
            self._array = np.concatenate([self._array, np.array(self._added, dtype=np.int64)])
        self._added = []
        return self._array


def chunk_base(doc_id: str) -> str:
    """ "doc#3" -> "doc": the document a chunk id belongs to (an id without "#<n>" is its own base)."""
    base, sep, number = doc_id.rpartition("#")
    return base if sep and number.isdigit() else doc_id


class _Block:
    """A label's vectors copied into one contiguous array (scanned ~4x faster than
    gathered rows) and kept current in place: writes append, update or swap-remove rows."""

    __slots__ = ("rows", "size", "slots")

    def __init__(self, slots: Slots, rows: Matrix) -> None:
        self.slots, self.rows, self.size = slots.copy(), rows, len(slots)

    def append(self, slot: int, vector: Matrix) -> None:
        if self.size == len(self.slots):
            grown = self.size + self.size // 2 + 16
            self.slots = np.resize(self.slots, grown)
            rows = np.empty((grown, self.rows.shape[1]), dtype=np.float32)
            rows[: self.size] = self.rows[: self.size]
            self.rows = rows
        self.slots[self.size], self.rows[self.size] = slot, vector
        self.size += 1

    def update(self, slot: int, vector: Matrix) -> None:
        for i in np.flatnonzero(self.slots[: self.size] == slot):
            self.rows[i] = vector

    def remove(self, slot: int) -> None:
        for i in np.flatnonzero(self.slots[: self.size] == slot):
            last = self.size - 1
            self.slots[i], self.rows[i] = self.slots[last], self.rows[last]
            self.size = last


class IndexState(Generic[D]):
    """One tenant's vectors, documents and postings. Not thread-safe: callers hold the tenant lock."""

    def __init__(self, dimensions: int, m: int, ef_construction: int, capacity: int, *, index: Any = None) -> None:
        capacity = max(1, capacity)
        if index is None:
            index = hnswlib.Index(space="ip", dim=dimensions)  # vectors are unit length: ip == cosine
            index.init_index(max_elements=capacity, ef_construction=ef_construction, M=m, random_seed=100)
        self.index: Any = index
        self.dimensions = dimensions
        self.vectors: Matrix = np.zeros((capacity, dimensions), dtype=np.float32)
        self.documents: list[D | None] = [None] * capacity
        self.slot_of: dict[str, int] = {}
        self._by_base: dict[str, set[str]] = {}  # "doc" -> {"doc#0", "doc#1"} (and "doc" if stored whole)
        self.free: list[int] = []  # deleted slots, marked deleted in hnswlib, reused first
        self.next_slot = 0  # slots below this exist in hnswlib
        self.postings: dict[str, _Posting] = {}
        self._blocks: OrderedDict[str, _Block] = OrderedDict()  # least recently scanned first
        self.generation = 0  # bumped by every change (compaction checks it)

    @property
    def capacity(self) -> int:
        return len(self.documents)

    def document(self, doc_id: str) -> D | None:
        slot = self.slot_of.get(doc_id)
        return None if slot is None else self.documents[slot]

    def ids_of(self, base: str) -> list[str]:
        """The stored ids whose chunk base is `base`, in chunk order."""
        return sorted(self._by_base.get(base, ()), key=lambda i: (len(i), i))

    def counts(self) -> IndexCounts:
        return IndexCounts(len(self.slot_of), len(self.free), self.capacity, len(self.postings))

    def upsert(self, documents: Sequence[D], matrix: Matrix, *, threads: int) -> None:
        """Insert or replace by id (ids unique within the call; rows unit length).

        A replaced document keeps its slot and hnswlib overwrites the vector in
        place; a new one takes a deleted slot first (hnswlib reuses its memory).
        """
        free, next_slot, slots = list(self.free), self.next_slot, []
        for doc in documents:
            slot = self.slot_of.get(doc.id)
            if slot is None and free:
                slot = free.pop()
            elif slot is None:
                slot, next_slot = next_slot, next_slot + 1
            slots.append(slot)
        if next_slot > self.capacity:
            self._grow(max(next_slot, 2 * self.capacity))
        self.index.add_items(matrix, np.asarray(slots, dtype=np.int64), num_threads=threads)
        # hnswlib holds the new vectors; now the bookkeeping, which cannot fail.
        self.free, self.next_slot = free, next_slot
        self.vectors[slots] = matrix
        for doc, slot, vector in zip(documents, slots, matrix, strict=True):
            old = self.documents[slot]
            old_labels = old.labels if old is not None else frozenset()
            for label in old_labels - doc.labels:
                self._unpost(label, slot)
            for label in doc.labels - old_labels:
                self.postings.setdefault(label, _Posting()).add(slot)
                if (block := self._blocks.get(label)) is not None:
                    block.append(slot, vector)
            for label in old_labels & doc.labels:
                if (block := self._blocks.get(label)) is not None:
                    block.update(slot, vector)
            self.documents[slot] = doc
            if old is None:
                self.slot_of[doc.id] = slot
                self._by_base.setdefault(chunk_base(doc.id), set()).add(doc.id)
        self.generation += 1

    def delete(self, ids: Sequence[str]) -> int:
        deleted = 0
        for doc_id in ids:
            slot = self.slot_of.pop(doc_id, None)
            if slot is None:
                continue
            siblings = self._by_base[chunk_base(doc_id)]
            siblings.discard(doc_id)
            if not siblings:
                del self._by_base[chunk_base(doc_id)]
            self.index.mark_deleted(slot)
            doc = self.documents[slot]
            for label in doc.labels if doc is not None else ():
                self._unpost(label, slot)
            self.documents[slot] = None
            self.vectors[slot] = 0.0
            self.free.append(slot)
            deleted += 1
        self.generation += 1
        return deleted

    def live_items(self) -> tuple[list[D], Matrix]:
        """Copies of the live documents and their vectors (for a rebuild)."""
        slots = sorted(self.slot_of.values())
        docs = [d for d in (self.documents[s] for s in slots) if d is not None]
        return docs, self.vectors[slots].copy()

    def search(
        self,
        labels: frozenset[str],
        query: Scores,
        top_k: int,
        config: PlannerConfig,
        force: SearchPlan | None = None,
    ) -> SearchOutcome:
        """The best `top_k` documents carrying any of `labels`; no other slot can come back."""
        live = len(self.slot_of)
        held = sorted((label, p) for label in labels if (p := self.postings.get(label)) is not None)
        arrays = [p.array() for _, p in held]
        scan_rows = sum(len(a) for a in arrays)
        if scan_rows == 0:
            return SearchOutcome(np.empty(0, np.int64), np.empty(0, np.float32), SearchPlan.EMPTY, 0, live, None)
        mask: npt.NDArray[np.bool_] | None = None  # visible slots, for counting and for the graph filter
        if len(arrays) == 1:
            visible = len(arrays[0])
        else:
            mask = np.zeros(self.next_slot, dtype=np.bool_)
            for array in arrays:
                mask[array] = True
            visible = int(np.count_nonzero(mask))
        if visible >= live:
            scan_rows = self.next_slot  # one pass over the whole matrix beats one per label
        plan = choose_plan(visible, live, scan_rows, config)
        if force == SearchPlan.EXACT:
            plan = SearchPlan.EXACT
        elif force in (SearchPlan.HNSW, SearchPlan.HNSW_FILTERED):
            # A forced graph search still filters unless everything is visible.
            plan = SearchPlan.HNSW if force == SearchPlan.HNSW and visible >= live else SearchPlan.HNSW_FILTERED
        k = min(top_k, visible)
        if plan != SearchPlan.EXACT:
            ef = search_ef(visible, live, k, config)
            if plan == SearchPlan.HNSW_FILTERED and mask is None:
                mask = np.zeros(self.next_slot, dtype=np.bool_)
                mask[arrays[0]] = True
            found = self._graph_search(query, k, ef, mask if plan == SearchPlan.HNSW_FILTERED else None)
            if found is not None:
                return SearchOutcome(found[0], found[1], plan, visible, live, ef)
            plan = SearchPlan.EXACT  # hnswlib reached fewer than k: answer exactly instead
        if visible >= live:
            top, scores = self._scan_all(query, k)
        else:
            top, scores = merge_top_k([self._scan_label(label, p, query, k, config) for label, p in held], k)
        return SearchOutcome(top, scores, plan, visible, live, None)

    def _scan_all(self, query: Scores, k: int) -> tuple[Slots, Scores]:
        """Every live document: one pass over the contiguous matrix, deleted slots masked out."""
        scores = dot(self.vectors[: self.next_slot], query)
        if self.free:
            scores[self.free] = -np.inf
        top, best = top_k_of(np.arange(self.next_slot, dtype=np.int64), scores, k)
        return top, best

    def _scan_label(
        self, label: str, posting: _Posting, query: Scores, k: int, config: PlannerConfig
    ) -> tuple[Slots, Scores]:
        slots = posting.array()
        if len(slots) < config.block_min_rows:
            return exact_top_k(self.vectors, slots, query, k)  # a small gather is cheap
        block = self._blocks.get(label)
        if block is None:
            block = _Block(slots, self.vectors[slots])
            budget = config.block_budget * len(self.slot_of) - len(slots)
            while self._blocks and sum(b.size for b in self._blocks.values()) > budget:
                self._blocks.popitem(last=False)
            if budget >= 0:
                self._blocks[label] = block
        else:
            self._blocks.move_to_end(label)
        return top_k_of(block.slots[: block.size], dot(block.rows[: block.size], query), k)

    def _graph_search(
        self, query: npt.NDArray[np.float32], k: int, ef: int, mask: npt.NDArray[np.bool_] | None
    ) -> tuple[Slots, npt.NDArray[np.float32]] | None:
        self.index.set_ef(ef)
        try:
            if mask is None:
                found, distances = self.index.knn_query(query, k=k, num_threads=1)
            else:
                found, distances = self.index.knn_query(query, k=k, num_threads=1, filter=mask_filter(mask))
        except RuntimeError:  # "Cannot return the results in a contiguous 2D array": fewer than k reached
            return None
        return found[0].astype(np.int64), (1.0 - distances[0]).astype(np.float32)

    def save(self, folder: Path, encode: Callable[[D], dict[str, Any]]) -> None:
        folder.mkdir(parents=True)
        self.index.save_index(str(folder / INDEX_FILE))
        np.save(folder / VECTORS_FILE, self.vectors[: self.next_slot])
        docs = [None if d is None else encode(d) for d in self.documents[: self.next_slot]]
        (folder / DOCUMENTS_FILE).write_text(json.dumps(docs, ensure_ascii=False))
        state = {"next_slot": self.next_slot, "capacity": self.capacity, "live": len(self.slot_of)}
        (folder / STATE_FILE).write_text(json.dumps(state))

    @classmethod
    def load(cls, folder: Path, decode: Callable[[dict[str, Any]], D], dimensions: int) -> IndexState[D]:
        state = json.loads((folder / STATE_FILE).read_text())
        next_slot, capacity = int(state["next_slot"]), max(1, int(state["capacity"]), int(state["next_slot"]))
        index = hnswlib.Index(space="ip", dim=dimensions)
        index.load_index(str(folder / INDEX_FILE), max_elements=capacity)
        vectors = np.load(folder / VECTORS_FILE)
        docs = json.loads((folder / DOCUMENTS_FILE).read_text())
        if index.element_count != next_slot or len(docs) != next_slot or vectors.shape != (next_slot, dimensions):
            raise ValueError(f"{folder}: index, vectors and documents disagree")
        loaded: IndexState[D] = cls(dimensions, index.M, index.ef_construction, capacity, index=index)
        loaded.next_slot = next_slot
        loaded.vectors[:next_slot] = vectors
        for slot, raw in enumerate(docs):
            if raw is None:
                loaded.free.append(slot)
                continue
            doc = decode(raw)
            loaded.documents[slot] = doc
            loaded.slot_of[doc.id] = slot
            loaded._by_base.setdefault(chunk_base(doc.id), set()).add(doc.id)
            for label in doc.labels:
                loaded.postings.setdefault(label, _Posting()).add(slot)
        if len(loaded.slot_of) != int(state["live"]):
            raise ValueError(f"{folder}: {len(loaded.slot_of)} documents, state says {state['live']}")
        return loaded

    def _grow(self, capacity: int) -> None:
        self.index.resize_index(capacity)
        vectors = np.zeros((capacity, self.dimensions), dtype=np.float32)
        vectors[: self.next_slot] = self.vectors[: self.next_slot]
        self.vectors = vectors
        self.documents.extend([None] * (capacity - len(self.documents)))

    def _unpost(self, label: str, slot: int) -> None:
        posting = self.postings[label]
        posting.remove(slot)
        if (block := self._blocks.get(label)) is not None:
            block.remove(slot)
        if not posting.members:
            del self.postings[label]
            self._blocks.pop(label, None)
