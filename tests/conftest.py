"""Shared fixtures: a real server on a free loopback port, and leaked-task detection."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from antiphon.app import App
from antiphon.config import Settings, load_settings
from tests.eventually import eventually
from tests.fakes import FakeLLM
from tests.redis_server import RedisServer


def _grpc_internal(task: asyncio.Task[object]) -> bool:
    coro = task.get_coro()
    code = getattr(coro, "cr_code", None)
    return "grpc" in repr(coro) or (code is not None and "/grpc/" in code.co_filename)


LEAK_GRACE_S = 0.5


@pytest.fixture(autouse=True)
async def fail_on_leaked_tasks() -> AsyncIterator[None]:
    """A test that leaves tasks running fails: dropped tasks hide cancellation bugs."""
    before = asyncio.all_tasks()
    yield

    def running() -> list[asyncio.Task[object]]:
        tasks = [t for t in asyncio.all_tasks() - before if not t.done() and t is not asyncio.current_task()]
        # grpc.aio keeps internal tasks alive briefly after a channel or server closes.
        return [t for t in tasks if not _grpc_internal(t)]

    # A task cancelled during teardown (redis-py wraps each send in a task of its own) may need a
    # few loop turns to unwind; one still running after LEAK_GRACE_S was left behind.
    await asyncio.sleep(0)
    with contextlib.suppress(AssertionError):
        await eventually(lambda: not running(), timeout_s=LEAK_GRACE_S)
    if leaked := running():
        for task in leaked:
            task.cancel()
        pytest.fail(f"leaked tasks: {[t.get_name() + ' ' + repr(t.get_coro()) for t in leaked]}")


_SCRATCH = Path(tempfile.mkdtemp(prefix="antiphon-tests-"))


def test_settings(**sections: dict[str, object]) -> Settings:
    # No models directory by default: unit tests inject fakes and never load a real model.
    env = {
        "ANTIPHON_SERVER_PORT": "0",
        "ANTIPHON_TELEMETRY_METRICS_PORT": "0",
        "ANTIPHON_MODELS_DIR": "/nonexistent",
        # No built-in tools, and registrations kept out of the checkout.
        "ANTIPHON_TOOLS_DIR": "",
        "ANTIPHON_TOOLS_STORAGE_DIR": str(_SCRATCH / "tools"),
        "ANTIPHON_TOOLS_CACHE_DIR": str(_SCRATCH / "tools-cache"),
        "ANTIPHON_CONTEXT_MEMORY_DIR": "",
        "ANTIPHON_AUTH_KEYS_FILE": str(_SCRATCH / "keys.json"),
        # Voice models load only where a test injects them (App(voice=...)).
        "ANTIPHON_VOICE_ENABLED": "off",
    }
    for section, values in sections.items():
        for key, value in values.items():
            env[f"ANTIPHON_{section.upper()}_{key.upper()}"] = str(value)
    return load_settings(None, env)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


class RunningServer:
    def __init__(self, app: App, channel: grpc.aio.Channel) -> None:
        self.app = app
        self.channel = channel

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.app.port}"


@pytest.fixture
def fake_llm() -> FakeLLM:
    return FakeLLM()


@pytest.fixture
async def server(fake_llm: FakeLLM) -> AsyncIterator[RunningServer]:
    app = App(test_settings(), llm=fake_llm)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield RunningServer(app, channel)
    finally:
        await channel.close()
        await app.stop(grace_s=1.0)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
