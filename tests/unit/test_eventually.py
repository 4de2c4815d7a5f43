"""The waiting helper: returns as soon as the condition holds, fails with its message after the bound."""

from __future__ import annotations

import asyncio

import pytest

from tests.eventually import eventually, eventually_sync


async def test_returns_once_a_background_effect_is_seen() -> None:
    done = asyncio.Event()
    asyncio.get_running_loop().call_soon(done.set)
    await eventually(done.is_set)


async def test_an_async_condition_is_awaited() -> None:
    checks = 0

    async def third_time() -> bool:
        nonlocal checks
        checks += 1
        return checks == 3

    await eventually(third_time, interval_s=0)
    assert checks == 3


async def test_fails_with_the_message_after_the_bound_and_checks_once_past_it() -> None:
    loop = asyncio.get_running_loop()
    checked_at: list[float] = []

    def never() -> bool:
        checked_at.append(loop.time())
        return False

    started = loop.time()
    with pytest.raises(AssertionError, match="nothing happened"):
        await eventually(never, timeout_s=0.05, message=lambda: "nothing happened")
    assert checked_at[-1] >= started + 0.05


async def test_an_exception_in_the_condition_fails_at_once() -> None:
    def broken() -> bool:
        raise ValueError("bad probe")

    with pytest.raises(ValueError, match="bad probe"):
        await eventually(broken, timeout_s=60)


def test_sync_twin() -> None:
    checks = iter([False, False, True])
    eventually_sync(lambda: next(checks), interval_s=0)
    with pytest.raises(AssertionError, match="never"):
        eventually_sync(lambda: False, timeout_s=0.02, message="never")
