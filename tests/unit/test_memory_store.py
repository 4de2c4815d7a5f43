"""The memory store: put/search/delete, upserts, both search plans, compaction, persistence."""

from __future__ import annotations

import dataclasses
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from antiphon.context.memory import (
    Document,
    MemoryConfig,
    MemoryStore,
    SearchResult,
    chunk_text,
)
from antiphon.context.search_plan import PlannerConfig, SearchPlan, choose_plan, exact_top_k, search_ef
from antiphon.errors import InvalidArgument, PermissionDenied, Unavailable
from antiphon.gateway.principal import Principal

DIM = 16
LABELS = ("a", "b", "c", "d")


def unit(rng: np.random.Generator, n: int) -> npt.NDArray[np.float32]:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    out: npt.NDArray[np.float32] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def who(*labels: str, tenant: str = "t1") -> Principal:
    return Principal(tenant, "tester", frozenset(), frozenset(labels))


OWNER = who(*LABELS)


def make_store(exact_max_rows: int = 50, **overrides: Any) -> MemoryStore:
    config = MemoryConfig(dimensions=DIM, initial_capacity=8, planner=PlannerConfig(exact_max_rows=exact_max_rows))
    return MemoryStore(dataclasses.replace(config, **overrides))


def corpus(n: int, seed: int = 0) -> tuple[list[Document], npt.NDArray[np.float32]]:
    """n documents with 1-2 labels each (label i % 4, plus b on every 7th)."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        labels = {LABELS[i % 4]} | ({"b"} if i % 7 == 0 else set())
        docs.append(Document(f"doc-{i}", f"text {i}", frozenset(labels), {"n": str(i)}, "unit"))
    return docs, unit(rng, n)


def ids(result: SearchResult) -> list[str]:
    return [h.document.id for h in result.hits]


def brute_force(
    docs: list[Document], vectors: npt.NDArray[np.float32], principal: Principal, query: npt.NDArray[np.float32], k: int
) -> list[str]:
    visible = [i for i, d in enumerate(docs) if principal.can_read(d.labels)]
    scores = vectors[visible] @ query
    return [docs[visible[j]].id for j in np.argsort(-scores, kind="stable")[:k]]


Filled = tuple[MemoryStore, list[Document], npt.NDArray[np.float32]]


@pytest.fixture
def filled() -> Filled:
    store = make_store()
    docs, vectors = corpus(600)
    for i in range(0, 600, 200):
        store.put_sync(OWNER, docs[i : i + 200], vectors[i : i + 200])
    return store, docs, vectors


def test_search_returns_the_nearest_visible_documents_best_first(filled: Filled) -> None:
    store, _, vectors = filled
    result = store.search_sync(who("a"), vectors[4], top_k=5)
    assert ids(result)[0] == "doc-4"
    assert result.hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
    assert all("a" in h.document.labels for h in result.hits)
    assert result.hits[0].document.metadata == {"n": "4"}
    assert result.hits[0].document.source == "unit"


@pytest.mark.parametrize("labels", [("a",), ("a", "c"), ("b",), LABELS, ("d",)])
def test_both_plans_agree_with_brute_force(filled: Filled, labels: tuple[str, ...]) -> None:
    store, docs, vectors = filled
    principal = who(*labels)
    queries = unit(np.random.default_rng(7), 20)
    recall = []
    for q in queries:
        want = brute_force(docs, vectors, principal, q, 10)
        exact = store.search_sync(principal, q, top_k=10, force_plan=SearchPlan.EXACT)
        graph = store.search_sync(principal, q, top_k=10, force_plan=SearchPlan.HNSW_FILTERED)
        assert exact.plan == SearchPlan.EXACT
        assert graph.plan in (SearchPlan.HNSW, SearchPlan.HNSW_FILTERED)
        assert ids(exact) == want
        recall.append(len(set(ids(graph)) & set(want)) / len(want))
        assert all(principal.can_read(h.document.labels) for h in exact.hits + graph.hits)
    assert np.mean(recall) >= 0.95


def test_planner_picks_by_visible_count(filled: Filled) -> None:
    store, _, vectors = filled
    q = vectors[0]
    assert store.search_sync(who(*LABELS), q).plan == SearchPlan.HNSW  # all 600 visible
    assert store.search_sync(who("a"), q).plan == SearchPlan.HNSW_FILTERED  # 150 > 50
    assert store.search_sync(who("zz"), q).plan == SearchPlan.EMPTY
    assert store.search_sync(who("a", tenant="other"), q).plan == SearchPlan.EMPTY
    small = make_store(exact_max_rows=200)
    docs, vectors = corpus(600)
    small.put_sync(OWNER, docs, vectors)
    result = small.search_sync(who("a"), q)
    assert (result.plan, result.visible, result.live, result.ef) == (SearchPlan.EXACT, 150, 600, None)


def test_multi_label_visibility_counts_each_document_once(filled: Filled) -> None:
    store, docs, _ = filled
    principal = who("a", "b")
    expected = sum(1 for d in docs if principal.can_read(d.labels))
    for force in (SearchPlan.EXACT, SearchPlan.HNSW_FILTERED, None):
        result = store.search_sync(principal, unit(np.random.default_rng(1), 1)[0], force_plan=force)
        assert result.visible == expected


def test_planner_functions() -> None:
    config = PlannerConfig(exact_max_rows=100, exact_max_fraction=0.05, ef_search=64, ef_per_result=2.0, ef_max=500)
    assert choose_plan(0, 10, 0, config) == SearchPlan.EMPTY
    assert choose_plan(100, 1000, 100, config) == SearchPlan.EXACT
    assert choose_plan(101, 1000, 101, config) == SearchPlan.HNSW_FILTERED
    assert choose_plan(90, 1000, 150, config) == SearchPlan.HNSW_FILTERED  # two overlapping labels: 150 rows
    assert choose_plan(4000, 100_000, 4000, config) == SearchPlan.EXACT  # 4% visible: the walk would crawl
    assert choose_plan(1000, 1000, 1000, config) == SearchPlan.HNSW
    assert search_ef(1000, 1000, 10, config) == 64
    assert search_ef(500, 1000, 10, config) == 64  # 10 * 2 / 0.5 = 40
    assert search_ef(100, 1000, 10, config) == 200
    assert search_ef(1, 1000, 10, config) == 500  # capped
    with pytest.raises(ValueError, match="ef_search"):
        PlannerConfig(ef_search=0)


def test_exact_top_k_orders_and_limits() -> None:
    vectors = np.eye(4, dtype=np.float32)
    query = np.array([0.1, 0.9, 0.5, 0.0], dtype=np.float32)
    slots, scores = exact_top_k(vectors, np.array([0, 1, 2, 3]), query, 2)
    assert slots.tolist() == [1, 2]
    assert scores.tolist() == pytest.approx([0.9, 0.5])
    assert exact_top_k(vectors, np.array([], dtype=np.int64), query, 3)[0].size == 0
    big = unit(np.random.default_rng(3), 5000)  # more rows than one gather chunk
    slots, _ = exact_top_k(big, np.arange(5000), big[4321], 1)
    assert slots.tolist() == [4321]


def test_upsert_replaces_the_vector_and_the_labels() -> None:
    store = make_store()
    docs, vectors = corpus(100)
    store.put_sync(OWNER, docs, vectors)
    old, new = vectors[3], unit(np.random.default_rng(9), 1)[0]
    store.put_sync(OWNER, [Document("doc-3", "replaced", frozenset({"b"}))], new[None, :])
    assert store.stats("t1").live == 100
    for force in (SearchPlan.EXACT, SearchPlan.HNSW_FILTERED):
        # The old vector is gone: querying with it finds other documents first.
        assert ids(store.search_sync(OWNER, old, top_k=1, force_plan=force)) != ["doc-3"]
        hit = store.search_sync(who("b"), new, top_k=1, force_plan=force).hits[0]
        assert (hit.document.id, hit.document.text) == ("doc-3", "replaced")
        assert hit.score == pytest.approx(1.0, abs=1e-5)
        # Its old label ("d", as 3 % 4 == 3) no longer shows it.
        assert "doc-3" not in ids(store.search_sync(who("d"), new, top_k=100, force_plan=force))


def test_label_blocks_follow_writes_in_place() -> None:
    store = MemoryStore(
        MemoryConfig(dimensions=DIM, planner=PlannerConfig(exact_max_rows=1000, block_min_rows=2, block_budget=4.0))
    )
    docs, vectors = corpus(40)
    store.put_sync(OWNER, docs, vectors)
    a_docs = [i for i, d in enumerate(docs) if "a" in d.labels]
    store.search_sync(who("a"), vectors[0], force_plan=SearchPlan.EXACT)  # builds a's block
    state = store._tenants["t1"].state
    assert "a" in state._blocks
    moved, fresh = unit(np.random.default_rng(5), 2)
    store.put_sync(OWNER, [Document("doc-4", "moved", frozenset({"a"}))], moved[None, :])  # same label, new vector
    store.put_sync(OWNER, [Document("new", "new", frozenset({"a"}))], fresh[None, :])  # appended
    store.put_sync(OWNER, [Document("doc-8", "relabelled", frozenset({"c"}))], vectors[8][None, :])  # leaves a
    store.delete_sync(OWNER, ["doc-12"])  # removed
    assert "a" in state._blocks  # kept current, not rebuilt
    for query, expected in ((moved, "doc-4"), (fresh, "new")):
        hit = store.search_sync(who("a"), query, top_k=1, force_plan=SearchPlan.EXACT).hits[0]
        assert (hit.document.id, round(hit.score, 4)) == (expected, 1.0)
    found = ids(store.search_sync(who("a"), vectors[8], top_k=100, force_plan=SearchPlan.EXACT))
    assert sorted(found) == sorted({f"doc-{i}" for i in a_docs} - {"doc-8", "doc-12"} | {"new"})


def test_delete_removes_from_every_plan_and_frees_the_slot() -> None:
    store = make_store(exact_max_rows=10)
    docs, vectors = corpus(64)
    store.put_sync(OWNER, docs, vectors)
    assert store.delete_sync(OWNER, ["doc-5", "doc-6", "missing"]) == 2
    for force in (SearchPlan.EXACT, SearchPlan.HNSW_FILTERED, SearchPlan.HNSW, None):
        found = ids(store.search_sync(OWNER, vectors[5], top_k=100, force_plan=force))
        assert "doc-5" not in found
        assert "doc-6" not in found
        assert len(found) == 62
    state = store._tenants["t1"].state
    assert (state.counts().live, state.counts().deleted) == (62, 2)
    assert not state.vectors[sorted(state.free)].any()  # the rows are wiped
    capacity = state.capacity
    store.put_sync(OWNER, [Document("new", "x", frozenset({"a"}))], vectors[5][None, :])
    assert (state.counts().deleted, state.capacity) == (1, capacity)  # a deleted slot was reused
    assert ids(store.search_sync(OWNER, vectors[5], top_k=1)) == ["new"]


def test_deleting_what_the_caller_cannot_see_or_fully_own() -> None:
    store = make_store()
    store.put_sync(OWNER, [Document("x", "t", frozenset({"a", "b"}))], unit(np.random.default_rng(0), 1))
    assert store.delete_sync(who("c"), ["x"]) == 0  # invisible: counts as absent
    with pytest.raises(PermissionDenied, match=r"ids\[0\]"):
        store.delete_sync(who("a"), ["x"])  # visible, but "b" is not the caller's
    assert store.delete_sync(who("a", "b"), ["x"]) == 1
    assert store.delete_sync(OWNER, ["x"]) == 0


def test_writes_need_every_label_held() -> None:
    store = make_store()
    vector = unit(np.random.default_rng(0), 1)
    with pytest.raises(PermissionDenied, match=r"documents\[0\]\.acl_labels"):
        store.put_sync(who("a"), [Document("x", "t", frozenset({"a", "b"}))], vector)
    store.put_sync(OWNER, [Document("x", "t", frozenset({"b"}))], vector)
    with pytest.raises(PermissionDenied, match=r"documents\[0\]\.id"):
        store.put_sync(who("a"), [Document("x", "t", frozenset({"a"}))], vector)  # would relabel b's document
    assert store.search_sync(who("b"), vector[0]).hits[0].document.labels == {"b"}


DOC = Document("ok", "fine", frozenset({"a"}))


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (Document("x", "", frozenset({"a"})), "documents[1].text"),
        (Document("x", "   ", frozenset({"a"})), "documents[1].text"),
        (Document("x", "é" * 40_000, frozenset({"a"})), "documents[1].text"),  # 80,000 bytes
        (Document("x", "t", frozenset()), "documents[1].acl_labels"),
        (Document("x", "t", frozenset({"Upper"})), "documents[1].acl_labels"),
        (Document("x", "t", frozenset({"a b"})), "documents[1].acl_labels"),
        (Document("x", "t", frozenset({"x" * 65})), "documents[1].acl_labels"),
        (Document("", "t", frozenset({"a"})), "documents[1].id"),
        (Document("ok", "t", frozenset({"a"})), "documents[1].id"),  # duplicate in the call
    ],
)
def test_put_validation_names_the_field(document: Document, field: str) -> None:
    store = make_store()
    with pytest.raises(InvalidArgument, match="^" + re.escape(field) + ": "):
        store.put_sync(OWNER, [DOC, document], unit(np.random.default_rng(0), 2))
    assert store.stats("t1").live == 0  # nothing was written


@pytest.mark.parametrize(
    ("vectors", "field"),
    [
        (np.zeros((1, DIM)), "vectors: a zero vector"),
        (np.full((1, DIM), np.nan), "vectors: contains NaN"),
        (np.ones((1, DIM + 1)), "vectors: shape"),
        (np.ones((2, DIM)), "vectors: shape"),
        ([["x"] * DIM], "vectors: not a numeric array"),
    ],
)
def test_vector_validation(vectors: object, field: str) -> None:
    with pytest.raises(InvalidArgument, match=f"^{field}"):
        make_store().put_sync(OWNER, [DOC], vectors)  # type: ignore[arg-type]  # bad on purpose


@pytest.mark.parametrize(("top_k", "min_score"), [(0, 0.0), (101, 0.0), (5, 1.5)])
def test_search_validation(top_k: int, min_score: float) -> None:
    with pytest.raises(InvalidArgument, match=r"^(top_k|min_score):"):
        make_store().search_sync(OWNER, np.ones(DIM), top_k=top_k, min_score=min_score)
    with pytest.raises(InvalidArgument, match="query_vector"):
        make_store().search_sync(OWNER, np.ones(DIM + 1))
    with pytest.raises(InvalidArgument, match="tenant"):
        make_store().search_sync(who("a", tenant=""), np.ones(DIM))


def test_text_size_limit_is_configurable() -> None:
    store = make_store(max_text_bytes=10)
    with pytest.raises(InvalidArgument, match="at most 10"):
        store.put_sync(OWNER, [Document("x", "eleven byte", frozenset({"a"}))], np.ones((1, DIM)))


def test_min_score_cuts_the_tail(filled: Filled) -> None:
    store, _, vectors = filled
    result = store.search_sync(OWNER, vectors[0], top_k=100, min_score=0.5)
    assert result.hits
    assert all(h.score >= 0.5 for h in result.hits)
    assert ids(result)[0] == "doc-0"


def test_tenants_are_walls() -> None:
    store = make_store()
    docs, vectors = corpus(50)
    store.put_sync(who(*LABELS, tenant="t1"), docs[:25], vectors[:25])
    store.put_sync(who(*LABELS, tenant="t2"), docs[25:], vectors[25:])
    for force in (SearchPlan.EXACT, SearchPlan.HNSW_FILTERED, None):
        found = ids(store.search_sync(who(*LABELS, tenant="t1"), vectors[30], top_k=100, force_plan=force))
        assert found
        assert all(int(i.split("-")[1]) < 25 for i in found)
    assert store.delete_sync(who(*LABELS, tenant="t1"), ["doc-30"]) == 0
    assert store.stats("t2").live == 25


def test_compaction_rebuilds_without_the_deleted() -> None:
    store = make_store(exact_max_rows=10)
    docs, vectors = corpus(200)
    store.put_sync(OWNER, docs, vectors)
    store.delete_sync(OWNER, [f"doc-{i}" for i in range(0, 200, 3)])  # 67 of 200
    assert store.needs_compaction("t1")
    before = [ids(store.search_sync(OWNER, q, top_k=10, force_plan=SearchPlan.EXACT)) for q in vectors[:20]]
    assert store.compact_sync() == ["t1"]
    state = store._tenants["t1"].state
    assert (state.counts().live, state.counts().deleted, state.index.element_count) == (133, 0, 133)
    assert not store.needs_compaction("t1")
    assert store.compact_sync("t1") == []
    after = [ids(store.search_sync(OWNER, q, top_k=10, force_plan=SearchPlan.EXACT)) for q in vectors[:20]]
    assert after == before
    graph = store.search_sync(OWNER, vectors[1], top_k=1, force_plan=SearchPlan.HNSW)
    assert ids(graph) == ["doc-1"]


def test_compaction_keeps_a_write_that_lands_while_it_builds() -> None:
    store = make_store()
    docs, vectors = corpus(40)
    store.put_sync(OWNER, docs, vectors)
    store.delete_sync(OWNER, [f"doc-{i}" for i in range(20)])
    build = store._build
    late = Document("late", "written during the rebuild", frozenset({"a"}))

    def build_with_a_concurrent_put(items):  # type: ignore[no-untyped-def]
        if not any(d.id == "late" for d in items[0]):
            store.put_sync(OWNER, [late], vectors[:1])  # the tenant lock is free during the build
        return build(items)

    store._build = build_with_a_concurrent_put  # type: ignore[method-assign]
    assert store.compact_sync("t1") == ["t1"]
    assert store.stats("t1") == store._tenants["t1"].state.counts()
    assert (store.stats("t1").live, store.stats("t1").deleted) == (21, 0)
    assert "late" in ids(store.search_sync(OWNER, vectors[0], top_k=3))


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    store = make_store(exact_max_rows=10)
    docs, vectors = corpus(120)
    tenants = ("t1", "../escape", "ünïcode tenant")
    for t in tenants:
        store.put_sync(who(*LABELS, tenant=t), docs, vectors)
    store.delete_sync(who(*LABELS, tenant="t1"), ["doc-1", "doc-2"])
    store.save(tmp_path / "memory")
    store.save(tmp_path / "memory")  # replacing an earlier save
    assert all(p.name.startswith(("t-", "memory.json")) for p in (tmp_path / "memory").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory"]  # no temporary folders left

    loaded = make_store(exact_max_rows=10)
    loaded.load(tmp_path / "memory")
    assert loaded.tenants() == sorted(tenants)
    for t in tenants:
        assert loaded.stats(t) == store.stats(t)
        principal = who("a", "c", tenant=t)
        for q in vectors[:10]:
            for force in (SearchPlan.EXACT, SearchPlan.HNSW_FILTERED):
                assert ids(loaded.search_sync(principal, q, top_k=5, force_plan=force)) == ids(
                    store.search_sync(principal, q, top_k=5, force_plan=force)
                )
    # Loaded state keeps working: deleted slots are reused, new documents are found.
    loaded.put_sync(OWNER, [Document("fresh", "new", frozenset({"a"}))], vectors[:1])
    assert loaded.stats("t1").deleted == 1
    assert ids(loaded.search_sync(who("a"), vectors[0], top_k=1)) in (["fresh"], ["doc-0"])


def test_load_rejects_another_dimension(tmp_path: Path) -> None:
    store = make_store()
    store.put_sync(OWNER, [DOC], np.ones((1, DIM)))
    store.save(tmp_path / "m")
    with pytest.raises(InvalidArgument, match="dimensions"):
        MemoryStore(MemoryConfig(dimensions=DIM * 2)).load(tmp_path / "m")
    with pytest.raises(InvalidArgument, match=r"memory\.json"):
        make_store().load(tmp_path / "nothing-here")


def test_rebuild_replaces_a_tenant() -> None:
    store = make_store()
    docs, vectors = corpus(30)
    store.put_sync(OWNER, docs, vectors)
    store.rebuild("t1", zip(docs[:10], vectors[:10], strict=True))
    assert store.stats("t1").live == 10
    assert ids(store.search_sync(OWNER, vectors[20], top_k=20)) == ids(
        store.search_sync(OWNER, vectors[20], top_k=20, force_plan=SearchPlan.EXACT)
    )
    assert "doc-20" not in ids(store.search_sync(OWNER, vectors[20], top_k=20))
    with pytest.raises(InvalidArgument, match="unique"):
        store.rebuild("t1", [(docs[0], vectors[0]), (docs[0], vectors[1])])


def test_growth_beyond_the_initial_capacity() -> None:
    store = make_store()  # capacity 8
    docs, vectors = corpus(100)
    for i in range(0, 100, 7):
        store.put_sync(OWNER, docs[i : i + 7], vectors[i : i + 7])
    assert store.stats("t1").capacity >= 100
    for i in (0, 50, 99):
        assert ids(store.search_sync(OWNER, vectors[i], top_k=1, force_plan=SearchPlan.HNSW)) == [f"doc-{i}"]


def test_searches_and_writes_from_many_threads() -> None:
    store = make_store(exact_max_rows=30)
    docs, vectors = corpus(400)
    store.put_sync(OWNER, docs[:200], vectors[:200])
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(200, 400, 10):
                store.put_sync(OWNER, docs[i : i + 10], vectors[i : i + 10])
                store.delete_sync(OWNER, [f"doc-{i - 150}"])
        except BaseException as exc:  # collected and re-raised by the test
            errors.append(exc)

    def reader(labels: tuple[str, ...]) -> None:
        try:
            for q in vectors[:100]:
                for hit in store.search_sync(who(*labels), q, top_k=10).hits:
                    assert set(labels) & hit.document.labels
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(held,)) for held in (("a",), LABELS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.stats("t1").live == 380


async def test_async_api_runs_in_the_executor() -> None:
    store = make_store()
    docs, vectors = corpus(20)
    await store.put(OWNER, docs, vectors)
    result = await store.search(who("a"), vectors[4], top_k=2)
    assert ids(result)[0] == "doc-4"
    assert await store.delete(OWNER, ["doc-4"]) == 1
    assert await store.compact("t1", force=True) == ["t1"]
    await store.aclose()
    with pytest.raises(Unavailable):
        await store.search(OWNER, vectors[0])


def test_chunk_text() -> None:
    words = [f"w{i}" for i in range(400)]
    text = "  ".join(words)
    chunks = chunk_text(text, doc_id="doc", max_words=180, overlap_words=30)
    assert [c.id for c in chunks] == ["doc#0", "doc#1", "doc#2"]
    assert [len(c.text.split()) for c in chunks] == [180, 180, 100]
    assert chunks[1].text.split()[:30] == chunks[0].text.split()[-30:]  # the overlap
    assert all(text[c.start : c.end] == c.text for c in chunks)
    assert chunks[-1].text.split()[-1] == "w399"
    assert [c.text for c in chunk_text("one two", doc_id="s")] == ["one two"]
    assert chunk_text("   ", doc_id="e") == []
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("x", doc_id="d", max_words=10, overlap_words=10)
