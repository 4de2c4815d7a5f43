"""The teardown helpers every stream relies on when its client goes away."""

from __future__ import annotations

import asyncio

import pytest

from antiphon.aio import cancel_and_wait, unwind


async def test_a_teardown_finishes_though_its_caller_is_cancelled_twice() -> None:
    started, proceed, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def teardown() -> None:
        started.set()
        await proceed.wait()  # a Redis round trip, say
        finished.set()

    async def handler() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await unwind(teardown())

    task = asyncio.create_task(handler())
    await asyncio.sleep(0)
    task.cancel()
    await started.wait()
    task.cancel()  # grpc cancels a stream's task again while it unwinds
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not finished.is_set()
    proceed.set()
    await asyncio.wait_for(finished.wait(), 5)


async def test_a_teardown_error_reaches_a_caller_that_was_not_cancelled() -> None:
    async def teardown() -> None:
        raise ValueError("release failed")

    with pytest.raises(ValueError, match="release failed"):
        await unwind(teardown())


async def test_cancel_and_wait_unwinds_every_task() -> None:
    cleaned: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.append(name)

    tasks = [asyncio.create_task(worker(n)) for n in ("a", "b")]
    await asyncio.sleep(0)
    await cancel_and_wait(*tasks, None)
    assert sorted(cleaned) == ["a", "b"]
    assert all(t.cancelled() for t in tasks)
