from __future__ import annotations

from antiphon.context.sessions import MemorySessionStore, TurnRecord


async def test_turns_and_leases() -> None:
    store = MemorySessionStore()
    assert await store.get("a") is None
    await store.create("a", "assistant")
    await store.append_turns("a", [TurnRecord("user", "hi"), TurnRecord("assistant", "hello")])
    record = await store.get("a")
    assert record is not None
    assert [t.content for t in record.turns] == ["hi", "hello"]
    record.turns.clear()  # callers get a copy
    assert len((await store.get("a") or record).turns) == 2
    assert await store.acquire("a", "one")
    assert not await store.acquire("a", "two")
    await store.release("a", "two")  # not the holder: no effect
    assert not await store.acquire("a", "two")
    await store.release("a", "one")
    assert await store.acquire("a", "two")
    assert await store.delete("a")
    assert await store.get("a") is None


async def test_expiry_and_capacity() -> None:
    store = MemorySessionStore(ttl_s=-1)
    await store.create("old", "assistant")
    assert await store.get("old") is None
    small = MemorySessionStore(max_sessions=2)
    for sid in ("a", "b", "c"):
        await small.create(sid, "assistant")
    assert await small.get("a") is None
    assert await small.get("c") is not None
