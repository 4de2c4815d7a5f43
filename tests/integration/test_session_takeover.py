"""Session leases on a real Redis when a worker dies: taken over within the heartbeat TTL, never by
two streams at once, the turn in flight reported as lost, and the dead stream unable to write."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from antiphon.context.redis_sessions import RedisSessionStore
from antiphon.context.sessions import Lease, TurnRecord
from antiphon.errors import FailedPrecondition
from antiphon.redis_support import close_redis
from tests.eventually import eventually
from tests.redis_server import RedisServer

HEARTBEAT_MS = 400
TURNS = [TurnRecord("user", "what time is it"), TurnRecord("assistant", "ten past three")]


class Workers:
    """Session stores that stand for separate workers on one Redis (one prefix)."""

    def __init__(self, url: str) -> None:
        self.url, self.prefix = url, f"t{uuid.uuid4().hex[:8]}"
        self.open: list[RedisSessionStore] = []

    def start(self) -> RedisSessionStore:
        store = RedisSessionStore(self.url, prefix=self.prefix, heartbeat_ms=HEARTBEAT_MS)
        self.open.append(store)
        return store

    async def crash(self, store: RedisSessionStore) -> None:
        """SIGKILL as Redis sees it: the heartbeat stops, nothing is released or deleted."""
        self.open.remove(store)
        assert store._keeper is not None
        await store._stop_keeper()
        await close_redis(store._redis)


@pytest.fixture
async def workers(redis_server: RedisServer) -> AsyncIterator[Workers]:
    w = Workers(redis_server.url)
    try:
        yield w
    finally:
        for store in w.open:
            await store.aclose()


async def _take_over(store: RedisSessionStore, owner: str, session: str = "s") -> Lease:
    """The lease, once the holder's heartbeat has lapsed (bounded: a few heartbeat TTLs)."""
    taken: list[Lease] = []

    async def acquired() -> bool:
        lease = await store.acquire("t", session, owner)
        if lease is not None:
            taken.append(lease)
        return lease is not None

    await eventually(acquired, timeout_s=HEARTBEAT_MS / 1000 * 5, interval_s=0.02)
    return taken[0]


async def test_a_dead_workers_session_is_taken_over_and_its_turn_reported_lost(workers: Workers) -> None:
    dead, alive = workers.start(), workers.start()
    assert await dead.acquire("t", "s", "stream-1")
    await dead.begin_turn("t", "s", "stream-1", "what time is it")
    assert await alive.acquire("t", "s", "stream-2") is None  # its worker is alive: the lease holds
    await workers.crash(dead)
    lease = await _take_over(alive, "stream-2")
    assert lease.lost_turn == "what time is it"
    record = await alive.create("t", "s", "default", "me")
    assert record.turns == []  # not recorded, not half recorded
    # Reported once: the next stream on the session finds nothing lost.
    await alive.release("t", "s", "stream-2")
    again = await alive.acquire("t", "s", "stream-3")
    assert again is not None
    assert again.lost_turn == ""


async def test_a_recorded_or_ended_turn_is_not_reported_lost(workers: Workers) -> None:
    for recorded in (True, False):
        dead, alive = workers.start(), workers.start()
        session = f"s-{recorded}"
        assert await dead.acquire("t", session, "a")
        await dead.create("t", session, "default", "me")
        await dead.begin_turn("t", session, "a", "hello")
        if recorded:
            await dead.append_turns("t", session, TURNS, "me", lease="a")
        else:
            await dead.end_turn("t", session, "a")
        await workers.crash(dead)
        lease = await _take_over(alive, "b", session)
        assert lease.lost_turn == ""
        record = await alive.get("t", session)
        assert record is not None
        assert len(record.turns) == (2 if recorded else 0)


async def test_only_one_of_many_takes_over_a_dead_lease(workers: Workers) -> None:
    contenders = [workers.start() for _ in range(6)]
    for round_ in range(10):
        session = f"race-{round_}"
        dead = workers.start()
        assert await dead.acquire("t", session, "dead")
        await dead.begin_turn("t", session, "dead", "lost words")
        await workers.crash(dead)
        winners: list[tuple[int, Lease]] = []

        async def attempt(
            i: int, store: RedisSessionStore, session: str = session, winners: list[tuple[int, Lease]] = winners
        ) -> None:
            while True:  # every contender keeps trying until one has it: then all others must lose
                lease = await store.acquire("t", session, f"c{i}")
                if lease is not None:
                    winners.append((i, lease))
                    return
                if winners:
                    return
                await asyncio.sleep(0.005)

        await asyncio.wait_for(asyncio.gather(*(attempt(i, s) for i, s in enumerate(contenders))), 10)
        assert len(winners) == 1, winners
        assert winners[0][1].lost_turn == "lost words"


async def test_a_free_lease_goes_to_exactly_one_stream(workers: Workers) -> None:
    stores = [workers.start() for _ in range(6)]
    for round_ in range(20):
        leases = await asyncio.gather(*(s.acquire("t", f"free-{round_}", f"o{i}") for i, s in enumerate(stores)))
        assert sum(lease is not None for lease in leases) == 1


async def test_a_stalled_worker_finds_its_session_taken_and_cannot_write(workers: Workers) -> None:
    stalled, other = workers.start(), workers.start()
    lost = asyncio.Event()
    assert await stalled.acquire("t", "s", "old", on_lost=lost.set)
    assert stalled._keeper is not None
    stalled._keeper.cancel()  # its event loop stops refreshing: the heartbeat lapses
    await asyncio.gather(stalled._keeper, return_exceptions=True)
    await _take_over(other, "new")
    stalled._keeper = asyncio.create_task(stalled._keep())  # it wakes up
    await asyncio.wait_for(lost.wait(), 5)
    with pytest.raises(FailedPrecondition, match="resumed on another stream"):
        await stalled.append_turns("t", "s", TURNS, "me", lease="old")
    await other.append_turns("t", "s", TURNS, "me", lease="new")
    record = await other.get("t", "s")
    assert record is not None
    assert [t.content for t in record.turns] == [t.content for t in TURNS]
    # The stalled worker's release cannot free the new holder's lease.
    await stalled.release("t", "s", "old")
    assert await workers.start().acquire("t", "s", "third") is None


async def test_a_clean_stop_frees_its_sessions_at_once(workers: Workers) -> None:
    leaving, staying = workers.start(), workers.start()
    assert await leaving.acquire("t", "s", "a")
    workers.open.remove(leaving)
    await leaving.aclose()  # its heartbeat goes with it
    assert await staying.acquire("t", "s", "b") is not None
