"""The shared voice engines: recognition bookkeeping across abandoned calls."""

from __future__ import annotations

import asyncio
import threading

import pytest

from antiphon.errors import Unavailable
from tests.eventually import eventually
from tests.voice_fakes import ScriptedSTT, fake_engines, tone


async def test_an_abandoned_recognition_counts_until_its_thread_is_done() -> None:
    stt = ScriptedSTT()
    stt.gate = threading.Event()
    engines = fake_engines(stt)
    try:
        task = asyncio.create_task(engines.transcribe(tone(500)))
        await eventually(lambda: bool(stt.calls), message="the recognition never reached its thread")
        assert not engines.stt_idle
        task.cancel()  # the caller gives up (the user spoke on) ...
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not engines.stt_idle  # ... but the thread still works: partials must keep waiting
        stt.gate.set()
        await eventually(lambda: engines.stt_idle, message="the recognition still counts after its thread is done")
    finally:
        stt.gate.set()
        engines.close()


async def test_a_failing_recogniser_is_unavailable() -> None:
    stt = ScriptedSTT()
    stt.fail = True
    engines = fake_engines(stt)
    try:
        with pytest.raises(Unavailable, match="speech recognition failed"):
            await engines.transcribe(tone(500))
        assert engines.stt_idle
    finally:
        engines.close()
