"""Property: no search ever returns a document outside the caller's tenant and labels.

Random tenants, documents (with upserts and deletes) and principals; every
search runs on each plan (exact scan, filtered graph, and the planner's own
choice, whose threshold is set low so it picks both). The exact plan must also
return precisely the best visible documents, so "returns nothing" cannot pass.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from antiphon.context.memory import Document, MemoryConfig, MemoryStore
from antiphon.context.search_plan import PlannerConfig, SearchPlan
from antiphon.gateway.principal import Principal

DIM = 8
TENANTS = ("t1", "t2", "t3")
LABELS = ("public", "hr", "eng", "exec", "user:ann", "user:bob")

label_sets = st.frozensets(st.sampled_from(LABELS), min_size=1, max_size=3)
documents = st.lists(
    st.tuples(st.sampled_from(TENANTS), st.integers(0, 40), label_sets),  # (tenant, id number, labels)
    min_size=1,
    max_size=60,
)
principals = st.tuples(st.sampled_from((*TENANTS, "nobody")), st.frozensets(st.sampled_from(LABELS), max_size=3))


@settings(derandomize=True, max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    docs=documents,
    deletes=st.lists(st.tuples(st.sampled_from(TENANTS), st.integers(0, 40)), max_size=15),
    callers=st.lists(principals, min_size=1, max_size=6),
    top_k=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_no_search_returns_a_document_outside_the_callers_tenant_and_labels(
    docs: list[tuple[str, int, frozenset[str]]],
    deletes: list[tuple[str, int]],
    callers: list[tuple[str, frozenset[str]]],
    top_k: int,
    seed: int,
) -> None:
    rng = np.random.default_rng(seed)
    store = MemoryStore(MemoryConfig(dimensions=DIM, initial_capacity=4, planner=PlannerConfig(exact_max_visible=3)))
    truth: dict[tuple[str, str], tuple[frozenset[str], np.ndarray]] = {}  # (tenant, id) -> labels, vector
    for tenant, number, labels in docs:  # one put per document: later ones are upserts
        doc_id = f"{tenant}-doc-{number}"  # the tenant in the id makes a leak visible in the result
        vector = rng.standard_normal(DIM).astype(np.float32)
        vector /= np.linalg.norm(vector)
        owner = Principal(tenant, "owner", frozenset(), frozenset(LABELS))
        store.put_sync(owner, [Document(doc_id, f"text of {doc_id}", labels)], vector[None, :])
        truth[(tenant, doc_id)] = (labels, vector)
    for tenant, number in deletes:
        owner = Principal(tenant, "owner", frozenset(), frozenset(LABELS))
        store.delete_sync(owner, [f"{tenant}-doc-{number}"])
        truth.pop((tenant, f"{tenant}-doc-{number}"), None)

    for tenant, held in callers:
        principal = Principal(tenant, "caller", frozenset(), held)
        allowed = {doc_id: v for (t, doc_id), (labels, v) in truth.items() if t == tenant and labels & held}
        query = rng.standard_normal(DIM).astype(np.float32)
        for force in (SearchPlan.EXACT, SearchPlan.HNSW_FILTERED, None):
            result = store.search_sync(principal, query, top_k=top_k, force_plan=force)
            found = [hit.document.id for hit in result.hits]
            assert set(found) <= set(allowed), (force, result.plan, set(found) - set(allowed))
            assert len(found) == len(set(found))
            assert result.visible == len(allowed)
            assert len(found) == min(top_k, len(allowed))  # the filter is inside: no short pages
            if force == SearchPlan.EXACT:
                want = sorted(allowed, key=lambda i: -float(allowed[i] @ (query / np.linalg.norm(query))))[:top_k]
                assert sorted(found) == sorted(want)
