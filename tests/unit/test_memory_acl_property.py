"""Property: no search ever returns a document outside the caller's tenant and labels.

Random interleavings of puts (with upserts that move documents between
labels), deletes and searches across tenants. Every search runs on each plan:
the exact scan, the filtered graph walk, and the planner's own choice (its
threshold set low so it picks both). Label blocks are built from one document
on, so searches after writes also check the in-place block updates. The exact
plan must return precisely the best visible documents, so returning nothing
cannot pass, and no plan may return a short page.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from antiphon.context.memory import Document, MemoryConfig, MemoryStore
from antiphon.context.search_plan import PlannerConfig, SearchPlan
from antiphon.gateway.principal import Principal

DIM = 8
LABELS = ("public", "hr", "eng", "exec", "user:ann", "user:bob")

TENANTS = ("t1", "t2")
label_sets = st.frozensets(st.sampled_from(LABELS), min_size=1, max_size=3)
caller_labels = st.frozensets(st.sampled_from(LABELS), max_size=3)
puts = st.tuples(st.just("put"), st.sampled_from(TENANTS), st.integers(0, 25), label_sets)
deletes = st.tuples(st.just("delete"), st.sampled_from(TENANTS), st.integers(0, 25))
searches = st.tuples(st.just("search"), st.sampled_from((*TENANTS, "nobody")), caller_labels, st.integers(1, 12))
# A filled store first, then writes and searches interleaved (blocks built by a search see later writes).
operations = st.tuples(
    st.lists(puts, min_size=8, max_size=40), st.lists(st.one_of(puts, deletes, searches, searches), max_size=60)
).map(lambda parts: parts[0] + parts[1])
PLANS = (SearchPlan.EXACT, SearchPlan.HNSW_FILTERED, None)


@settings(derandomize=True, max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations, seed=st.integers(0, 2**16))
def test_no_search_returns_a_document_outside_the_callers_tenant_and_labels(
    ops: list[tuple[Any, ...]], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    planner = PlannerConfig(exact_max_rows=3, exact_max_fraction=0.0, block_min_rows=1, block_budget=10.0)
    store = MemoryStore(MemoryConfig(dimensions=DIM, initial_capacity=4, planner=planner))
    truth: dict[tuple[str, str], tuple[frozenset[str], npt.NDArray[np.float32]]] = {}  # (tenant, id) -> state
    for op in ops:
        if op[0] == "put":
            _, tenant, number, labels = op
            doc_id = f"{tenant}-doc-{number}"  # the tenant in the id makes a leak visible in the result
            vector = _unit(rng)
            owner = Principal(tenant, "owner", frozenset(), frozenset(LABELS))
            store.put_sync(owner, [Document(doc_id, f"text of {doc_id}", labels)], vector[None, :])
            truth[(tenant, doc_id)] = (labels, vector)
        elif op[0] == "delete":
            _, tenant, number = op
            owner = Principal(tenant, "owner", frozenset(), frozenset(LABELS))
            store.delete_sync(owner, [f"{tenant}-doc-{number}"])
            truth.pop((tenant, f"{tenant}-doc-{number}"), None)
        else:
            _, tenant, held, top_k = op
            allowed = {i: v for (t, i), (labels, v) in truth.items() if t == tenant and labels & held}
            _check_search(store, Principal(tenant, "caller", frozenset(), held), allowed, top_k, _unit(rng))


def _check_search(
    store: MemoryStore,
    principal: Principal,
    allowed: dict[str, npt.NDArray[np.float32]],
    top_k: int,
    query: npt.NDArray[np.float32],
) -> None:
    for force in PLANS:
        result = store.search_sync(principal, query, top_k=top_k, force_plan=force)
        found = [hit.document.id for hit in result.hits]
        assert set(found) <= set(allowed), (force, result.plan, set(found) - set(allowed))
        assert len(found) == len(set(found))
        assert result.visible == len(allowed)
        assert len(found) == min(top_k, len(allowed))  # the filter is inside the search: no short pages
        if force == SearchPlan.EXACT:
            want = sorted(allowed, key=lambda i: -float(allowed[i] @ query))[:top_k]
            assert sorted(found) == sorted(want)
            for hit in result.hits:  # scores come from the current vector, not a stale copy
                assert abs(hit.score - float(allowed[hit.document.id] @ query)) < 1e-5


def _unit(rng: np.random.Generator) -> npt.NDArray[np.float32]:
    vector = rng.standard_normal(DIM).astype(np.float32)
    out: npt.NDArray[np.float32] = vector / np.linalg.norm(vector)
    return out
