"""API keys: format, digests, the JSON file store (atomic, shared with other processes) and the Redis store."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from antiphon.errors import InvalidArgument
from antiphon.gateway.keys import KEY_RE, FileKeyStore, Quota, digest_of, key_id_of, new_key
from antiphon.gateway.redis_keys import RedisKeyStore
from antiphon.redis_support import redis_client
from tests.eventually import eventually
from tests.redis_server import RedisServer


def test_new_key_format_and_digest() -> None:
    text, record = new_key("acme", ["member"], [], description="ci")
    m = KEY_RE.fullmatch(text)
    assert m is not None
    assert m.group(1) == record.key_id == key_id_of(text)
    assert record.digest == digest_of(text)
    assert text not in json.dumps(record.to_json())  # the secret is never stored
    assert record.labels == {"public"}
    assert record.subject == f"key:{record.key_id}"
    assert key_id_of("ak_nothex_" + "A" * 43) is None
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: new_key("a b", ["member"]), "tenant"),
        (lambda: new_key("acme", []), "roles"),
        (lambda: new_key("acme", ["member"], ["bad label"]), "acl_labels"),
    ]
    for bad, field in cases:
        with pytest.raises(InvalidArgument, match=f"^{field}:"):
            bad()


async def test_verify_accepts_only_the_exact_active_key(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    text, record = new_key("acme", ["member"])
    await store.add(record)
    assert await store.verify(text) == record
    forged = text[:-1] + ("A" if text[-1] != "A" else "B")
    assert await store.verify(forged) is None
    assert await store.verify("ak_" + "0" * 16 + "_" + "A" * 43) is None
    assert await store.verify("nonsense") is None
    revoked = await store.revoke(record.key_id)
    assert revoked is not None
    assert revoked.revoked
    assert await store.verify(text) is None
    again = await store.revoke(record.key_id)  # idempotent: keeps the first revocation time
    assert again is not None
    assert again.revoked_us == revoked.revoked_us
    assert await store.revoke("f" * 16) is None


async def test_file_store_is_atomic_private_and_shared(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "keys.json"
    a, b = FileKeyStore(path), FileKeyStore(path)
    text, record = new_key("acme", ["reader"])
    await a.add(record)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["keys.json", "keys.json.lock"]  # no temporaries
    assert await b.verify(text) == record  # written by "another process"
    await b.revoke(record.key_id)
    assert await a.verify(text) is None  # a sees b's change on its next lookup
    # Concurrent writers (threads, like two processes holding the lock in turn) lose nothing.
    records = [new_key("acme", ["reader"])[1] for _ in range(20)]
    await asyncio.gather(*(s.add(r) for s, r in zip([a, b] * 10, records, strict=True)))
    assert len(await FileKeyStore(path).list("acme")) == 21
    assert await a.list("globex") == []
    # A corrupt file (a bad manual edit) does not lock everyone out: the last good state stays.
    path.write_text("{not json")
    assert len(await a.list(None)) == 21


async def test_file_store_quotas_merge_and_reset(tmp_path: Path) -> None:
    store = FileKeyStore(tmp_path / "keys.json")
    assert await store.quota("acme") == Quota()
    await store.set_quota("acme", Quota(requests_per_s=5, monthly_budget=12.5))
    merged = await store.set_quota("acme", Quota(streams=2))
    assert merged == Quota(monthly_budget=12.5, requests_per_s=5, streams=2)
    assert FileKeyStore(tmp_path / "keys.json").quota_now("acme") == merged
    assert await store.set_quota("acme", Quota(llm_tokens_per_min=100), reset=True) == Quota(llm_tokens_per_min=100)


@pytest.fixture
async def redis_stores(redis_server: RedisServer) -> AsyncIterator[tuple[RedisKeyStore, RedisKeyStore]]:
    client = redis_client(redis_server.url)
    prefix = f"k{uuid.uuid4().hex[:8]}"  # tests share one Redis
    a = RedisKeyStore(redis_server.url, prefix=prefix, cache_ms=1000)
    b = RedisKeyStore(redis_server.url, prefix=prefix, cache_ms=1000)
    await a.start()
    await b.start()
    try:
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()
        await client.aclose()
        await client.connection_pool.aclose()


async def test_redis_store_revocation_reaches_other_workers_at_once(
    redis_stores: tuple[RedisKeyStore, RedisKeyStore],
) -> None:
    a, b = redis_stores
    text, record = new_key("acme", ["member"])
    assert await b.verify(text) is None  # cached as unknown on b...
    await a.add(record)
    await _eventually(lambda: b.verify(text), record)  # ...until a's announcement evicts it
    assert await b.verify(text) == record  # now cached on b
    await a.revoke(record.key_id)
    await _eventually(lambda: b.verify(text), None)
    assert [k.key_id for k in await b.list("acme")] == [record.key_id]
    await a.set_quota("acme", Quota(requests_per_s=9))
    assert (await b.quota("acme")).requests_per_s == 9
    await b.set_quota("acme", Quota(requests_per_s=2))
    await _eventually(lambda: a.quota("acme"), Quota(requests_per_s=2))


async def _eventually(probe: Callable[[], Awaitable[object]], expected: object, timeout_s: float = 1.0) -> None:
    """Pub/sub delivery is asynchronous: wait (bounded, well under the 1 s cache) for the change."""
    seen: list[object] = []

    async def changed() -> bool:
        seen.append(await probe())
        return seen[-1] == expected

    await eventually(changed, timeout_s=timeout_s, interval_s=0.005, message=lambda: f"still {seen[-1]!r}")
