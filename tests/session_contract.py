"""The SessionStore contract, run against every implementation (memory here, Redis in integration)."""

from __future__ import annotations

import asyncio

import pytest

from antiphon.context.sessions import SessionStore, TurnRecord, VersionConflict


async def turns_leases_and_delete(store: SessionStore) -> None:
    assert await store.get("t1", "a") is None
    created = await store.create("t1", "a", "assistant", "local")
    assert (created.session_id, created.agent_profile, created.turns) == ("a", "assistant", [])
    v1 = await store.append_turns("t1", "a", [TurnRecord("user", "hi"), TurnRecord("assistant", "hello")], "local")
    record = await store.get("t1", "a")
    assert record is not None
    assert [(t.role, t.content) for t in record.turns] == [("user", "hi"), ("assistant", "hello")]
    assert record.version == v1
    record.turns.clear()  # callers get a copy
    again = await store.get("t1", "a")
    assert again is not None
    assert len(again.turns) == 2
    assert (await store.create("t1", "a", "other", "local")).agent_profile == "assistant"  # create keeps what exists
    assert await store.acquire("t1", "a", "one")
    assert await store.acquire("t1", "a", "one")  # re-entrant for its owner
    assert not await store.acquire("t1", "a", "two")
    await store.release("t1", "a", "two")  # not the holder: no effect
    assert not await store.acquire("t1", "a", "two")
    await store.release("t1", "a", "one")
    assert await store.acquire("t1", "a", "two")
    await store.release("t1", "a", "two")
    assert await store.delete("t1", "a")
    assert await store.get("t1", "a") is None
    assert not await store.delete("t1", "a")


async def tenants_are_separate(store: SessionStore) -> None:
    await store.create("t1", "same", "assistant", "local")
    await store.append_turns("t1", "same", [TurnRecord("user", "secret of t1")], "local")
    assert await store.get("t2", "same") is None
    await store.create("t2", "same", "assistant", "local")
    other = await store.get("t2", "same")
    assert other is not None
    assert other.turns == []
    assert await store.acquire("t1", "same", "x")
    assert await store.acquire("t2", "same", "y")  # leases are per tenant too


async def compact_uses_optimistic_concurrency(store: SessionStore) -> None:
    await store.create("t1", "c", "assistant", "local")
    for i in range(3):
        await store.append_turns("t1", "c", [TurnRecord("user", f"q{i}"), TurnRecord("assistant", f"a{i}")], "local")
    record = await store.get("t1", "c")
    assert record is not None
    stale = record.version
    await store.append_turns("t1", "c", [TurnRecord("user", "q3"), TurnRecord("assistant", "a3")], "local")
    with pytest.raises(VersionConflict):
        await store.compact("t1", "c", "summary", 2, stale)
    fresh = await store.get("t1", "c")
    assert fresh is not None
    await store.compact("t1", "c", "they said q0 and q1", 4, fresh.version)
    after = await store.get("t1", "c")
    assert after is not None
    assert after.summary == "they said q0 and q1"
    assert [t.content for t in after.turns] == ["q2", "a2", "q3", "a3"]


async def concurrent_appends_are_all_kept(store: SessionStore) -> None:
    await store.create("t1", "busy", "assistant", "local")
    await asyncio.gather(
        *(
            store.append_turns("t1", "busy", [TurnRecord("user", f"u{i}"), TurnRecord("assistant", f"a{i}")], "local")
            for i in range(50)
        )
    )
    record = await store.get("t1", "busy")
    assert record is not None
    assert len(record.turns) == 100
    # Each pair landed together: a user turn is always followed by its own answer.
    assert all(record.turns[i].content[1:] == record.turns[i + 1].content[1:] for i in range(0, 100, 2))
    assert record.version == 50


async def owner_and_acls_are_kept(store: SessionStore) -> None:
    await store.create("t1", "owned", "assistant", "ann")
    assert (await store.create("t1", "owned", "assistant", "bob")).owner == "ann"  # the creator keeps it
    hr = (("eng", "public"), ("hr",))  # canonical: sorted
    await store.append_turns("t1", "owned", [TurnRecord("user", "q"), TurnRecord("assistant", "a", acl=hr)], "bob")
    record = await store.get("t1", "owned")
    assert record is not None
    assert record.owner == "ann"
    assert [t.acl for t in record.turns] == [(), hr]
    await store.compact("t1", "owned", "about the memo", 2, record.version, summary_acl=hr)
    after = await store.get("t1", "owned")
    assert after is not None
    assert (after.summary, after.summary_acl, after.turns) == ("about the memo", hr, [])
    # Turns appended after the session expired (or was deleted) start one owned by their writer.
    await store.append_turns("t1", "gone", [TurnRecord("user", "q"), TurnRecord("assistant", "a")], "bob")
    fresh = await store.get("t1", "gone")
    assert fresh is not None
    assert fresh.owner == "bob"


CONTRACT = [
    turns_leases_and_delete,
    owner_and_acls_are_kept,
    tenants_are_separate,
    compact_uses_optimistic_concurrency,
    concurrent_appends_are_all_kept,
]
