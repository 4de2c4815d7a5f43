"""How a memory search runs, chosen by how many documents the caller may see.

hnswlib's `filter=` calls back into Python for every candidate it visits, and
when few documents are visible it visits a large part of the graph before it
has found k of them (measured at 100k documents: 1.1 ms at 50% visible, 27 ms
at 1%, 100 ms at 0.1%). An exact NumPy scan costs time proportional to the
number of visible vectors (8 µs at 100, 0.7 ms at 10k). So, as vector
databases do, small visible sets are scanned exactly and large ones go through
the graph with the access-control filter inside the search, with ef raised
as the visible fraction falls so that recall holds.

`IndexState` is one tenant's index: the hnswlib graph, a contiguous float32
matrix of the same vectors (row = hnswlib label = slot, so a visible subset
is gathered with one fancy index) and label -> slots postings. It knows
documents only by their id and labels; memory.py owns the rest and the locks.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar, cast

import hnswlib  # type: ignore[import-untyped]  # ships no type information
import numpy as np
import numpy.typing as npt

Matrix = npt.NDArray[np.float32]
Slots = npt.NDArray[np.int64]
INDEX_FILE, VECTORS_FILE, DOCUMENTS_FILE, STATE_FILE = "index.bin", "vectors.npy", "documents.json", "state.json"


class SearchPlan(enum.StrEnum):
    """Which algorithm answered a search (reported in traces as `SearchResult.plan`)."""

    EMPTY = "empty"  # nothing visible to the caller: no index touched
    EXACT = "exact"  # NumPy dot products over exactly the visible vectors
    HNSW = "hnsw"  # every live document is visible: the plain graph search
    HNSW_FILTERED = "hnsw_filtered"  # graph search that skips invisible documents as it walks


@dataclass(frozen=True, slots=True)
class PlannerConfig:
    # At or below this many visible vectors, scan exactly. Chosen with
    # bench/bench_memory.py (see its docstring for the numbers).
    exact_max_visible: int = 12_000
    ef_search: int = 64  # hnswlib ef when everything is visible
    # Filtered search: ef grows to ~top_k * ef_per_result / visible_fraction, at most ef_max.
    ef_per_result: float = 4.0
    ef_max: int = 800

    def __post_init__(self) -> None:
        if self.exact_max_visible < 0:
            raise ValueError("exact_max_visible: must be >= 0")
        if not 1 <= self.ef_search <= self.ef_max:
            raise ValueError("ef_search: must be 1..ef_max")
        if self.ef_per_result <= 0:
            raise ValueError("ef_per_result: must be > 0")


def choose_plan(visible: int, live: int, config: PlannerConfig) -> SearchPlan:
    """The cheapest plan that keeps recall: exact for small visible sets, the graph otherwise."""
    if visible == 0:
        return SearchPlan.EMPTY
    if visible <= config.exact_max_visible:
        return SearchPlan.EXACT
    return SearchPlan.HNSW if visible >= live else SearchPlan.HNSW_FILTERED


def search_ef(visible: int, live: int, top_k: int, config: PlannerConfig) -> int:
    """hnswlib's ef for a graph search: the base value, raised when few documents are visible.

    With a fraction f visible, about ef/f nodes are visited to collect ef
    visible candidates, so ef is scaled by 1/f only as far as recall needs.
    """
    base = max(config.ef_search, top_k)
    if visible >= live or live == 0:
        return base
    fraction = max(visible, 1) / live
    return int(min(config.ef_max, max(base, math.ceil(top_k * config.ef_per_result / fraction))))


def exact_top_k(
    vectors: Matrix, slots: Slots, query: npt.NDArray[np.float32], k: int
) -> tuple[Slots, npt.NDArray[np.float32]]:
    """Best k of `slots` by dot product with `query`, best first (slots, scores)."""
    if len(slots) == 0 or k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    scores = _gather_dot(vectors, slots, query)
    top = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    order = top[np.argsort(-scores[top], kind="stable")]
    return slots[order], scores[order]


# Rows per gather: 2,048 x 384 float32 = 3 MiB, stays in cache between the copy and the product.
_GATHER_ROWS = 2048


def _gather_dot(vectors: Matrix, slots: Slots, query: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    if len(slots) <= _GATHER_ROWS:
        return vectors[slots] @ query
    out = np.empty(len(slots), dtype=np.float32)
    for start in range(0, len(slots), _GATHER_ROWS):
        chunk = slots[start : start + _GATHER_ROWS]
        np.matmul(vectors[chunk], query, out=out[start : start + len(chunk)])
    return out


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
        self.free: list[int] = []  # deleted slots, marked deleted in hnswlib, reused first
        self.next_slot = 0  # slots below this exist in hnswlib
        self.postings: dict[str, _Posting] = {}
        self.generation = 0  # bumped by every change (compaction checks it)

    @property
    def capacity(self) -> int:
        return len(self.documents)

    def document(self, doc_id: str) -> D | None:
        slot = self.slot_of.get(doc_id)
        return None if slot is None else self.documents[slot]

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
            if slot is None:
                slot = free.pop() if free else next_slot
                next_slot += slot == next_slot
            slots.append(slot)
        if next_slot > self.capacity:
            self._grow(max(next_slot, 2 * self.capacity))
        self.index.add_items(matrix, np.asarray(slots, dtype=np.int64), num_threads=threads)
        # hnswlib holds the new vectors; now the bookkeeping, which cannot fail.
        self.free, self.next_slot = free, next_slot
        self.vectors[slots] = matrix
        for doc, slot in zip(documents, slots, strict=True):
            old = self.documents[slot]
            old_labels = old.labels if old is not None else frozenset()
            for label in old_labels - doc.labels:
                self._unpost(label, slot)
            for label in doc.labels - old_labels:
                self.postings.setdefault(label, _Posting()).add(slot)
            self.documents[slot] = doc
            self.slot_of[doc.id] = slot
        self.generation += 1

    def delete(self, ids: Sequence[str]) -> int:
        deleted = 0
        for doc_id in ids:
            slot = self.slot_of.pop(doc_id, None)
            if slot is None:
                continue
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
        query: npt.NDArray[np.float32],
        top_k: int,
        config: PlannerConfig,
        force: SearchPlan | None = None,
    ) -> SearchOutcome:
        """The best `top_k` documents carrying any of `labels`; no other slot can come back."""
        live = len(self.slot_of)
        arrays = [p.array() for label in labels if (p := self.postings.get(label)) is not None]
        upper = sum(len(a) for a in arrays)
        if upper == 0:
            return SearchOutcome(np.empty(0, np.int64), np.empty(0, np.float32), SearchPlan.EMPTY, 0, live, None)
        # The visible slots, as a list when few (or one label) and as a mask when many.
        slots: Slots | None = None
        mask: npt.NDArray[np.bool_] | None = None
        if len(arrays) == 1:
            slots = arrays[0]
            visible = len(slots)
        elif upper <= config.exact_max_visible:
            slots = np.unique(np.concatenate(arrays))
            visible = len(slots)
        else:
            mask = np.zeros(self.next_slot, dtype=np.bool_)
            for array in arrays:
                mask[array] = True
            visible = int(np.count_nonzero(mask))
        plan = choose_plan(visible, live, config)
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
                mask[slots] = True
            found = self._graph_search(query, k, ef, mask if plan == SearchPlan.HNSW_FILTERED else None)
            if found is not None:
                return SearchOutcome(found[0], found[1], plan, visible, live, ef)
            plan = SearchPlan.EXACT  # hnswlib found fewer than k: answer exactly instead
        if slots is None:
            slots = np.flatnonzero(cast(npt.NDArray[np.bool_], mask)).astype(np.int64)
        top, scores = exact_top_k(self.vectors, slots, query, k)
        return SearchOutcome(top, scores, plan, visible, live, None)

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
        if not posting.members:
            del self.postings[label]
