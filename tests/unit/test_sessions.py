from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from antiphon.context.sessions import MemorySessionStore, SessionStore
from tests.session_contract import CONTRACT


@pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__)
async def test_memory_store_contract(check: Callable[[SessionStore], Awaitable[None]]) -> None:
    await check(MemorySessionStore())


async def test_expiry_and_capacity() -> None:
    store = MemorySessionStore(ttl_s=-1)
    await store.create("t", "old", "assistant", "local")
    assert await store.get("t", "old") is None
    small = MemorySessionStore(max_sessions=2)
    for sid in ("a", "b", "c"):
        await small.create("t", sid, "assistant", "local")
    assert await small.get("t", "a") is None
    assert await small.get("t", "c") is not None
