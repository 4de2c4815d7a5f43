"""The spoken answer: clause pieces, pacing against a clock, what was played and heard."""

from __future__ import annotations

import asyncio

import numpy as np
import numpy.typing as npt
import pytest

from antiphon.voice.formats import AudioSpec, Encoding
from antiphon.voice.speaker import CHUNK_MS, Speaker
from tests.voice_fakes import tone


class _Out:
    def __init__(self) -> None:
        self.chunks: list[tuple[bytes, int, float]] = []

    async def emit(self, data: bytes, duration_ms: int) -> None:
        self.chunks.append((data, duration_ms, asyncio.get_running_loop().time()))


async def _words_tone(text: str) -> npt.NDArray[np.int16]:
    return tone(100 * len(text.split()), rate=22_050)


class _AudioClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _speaker(out: _Out, spec: AudioSpec, lead_ms: int = 100) -> Speaker:
    loop = asyncio.get_running_loop()
    return Speaker(_words_tone, 22_050, spec, out.emit, lead_ms=lead_ms, clock=loop.time)


async def test_chunks_are_at_most_40_ms_in_the_output_format() -> None:
    out = _Out()
    spec = AudioSpec(Encoding.MULAW, 8000)
    speaker = _speaker(out, spec, lead_ms=10_000)  # no pacing waits
    speaker.start()
    speaker.feed("One two three. Four five six seven.")
    await speaker.wait_played()
    assert out.chunks
    assert all(len(data) <= spec.bytes_for_ms(CHUNK_MS) for data, _, _ in out.chunks)
    total_ms = sum(spec.duration_ms(len(data)) for data, _, _ in out.chunks)
    assert abs(total_ms - 700) < 5  # 7 words x 100 ms
    assert abs(speaker.sent_ms - total_ms) < 1e-6
    assert speaker.heard_text(total_ms) == "One two three. Four five six seven."


async def test_pacing_keeps_sent_audio_within_the_lead_of_real_time() -> None:
    out = _Out()
    speaker = _speaker(out, AudioSpec(Encoding.PCM16, 16_000), lead_ms=100)
    loop = asyncio.get_running_loop()
    started = loop.time()
    speaker.start()
    speaker.feed("a b c d e f")
    speaker.finish()
    await speaker.wait_played()
    sent = 0.0
    for _data, duration_ms, at in out.chunks:
        # audio sent before this chunk never ran more than the lead (plus a scheduling slack) ahead
        assert sent - (at - started) * 1000 <= 100 + 40
        sent += duration_ms
    assert loop.time() - started >= 0.55  # 600 ms of audio took about real time


async def test_barge_in_mid_answer_reports_what_was_heard() -> None:
    # The client's clock runs with the audio it gets (each chunk plays for its duration), and the
    # user barges in while the chunk that takes the answer past 360 ms is being delivered.
    out = _Out()
    clock = _AudioClock()
    barged_in = asyncio.Event()
    held = asyncio.Event()  # never set: the sender waits inside that delivery until it is cancelled

    async def deliver(data: bytes, duration_ms: int) -> None:
        clock.now += duration_ms / 1000
        out.chunks.append((data, duration_ms, clock.now))
        if sum(d for _, d, _ in out.chunks) >= 360:
            barged_in.set()
            await held.wait()

    speaker = Speaker(_words_tone, 22_050, AudioSpec(Encoding.PCM16, 16_000), deliver, lead_ms=40, clock=clock)
    speaker.start()
    speaker.feed("one two three four five. six seven eight nine ten.")
    speaker.finish()
    async with asyncio.timeout(10):
        await barged_in.wait()
    played = speaker.played_ms()
    speaker.cancel()
    await speaker.aclose()
    assert played == pytest.approx(320)  # the chunk being delivered has not played yet
    assert speaker.heard_text(played).split() == ["one", "two", "three"]
    assert speaker.task is not None
    assert speaker.task.done()  # the sender is gone: nothing more can be sent
    assert sum(d for _, d, _ in out.chunks) == 360  # the chunk in flight was the last


async def test_synthesis_failure_is_kept_not_raised() -> None:
    async def broken(_text: str) -> npt.NDArray[np.int16]:
        raise RuntimeError("no voice")

    out = _Out()
    speaker = Speaker(broken, 22_050, AudioSpec(Encoding.PCM16, 16_000), out.emit)
    speaker.start()
    speaker.feed("Hello there, friend.")
    await speaker.wait_played()
    assert isinstance(speaker.error, RuntimeError)
    assert out.chunks == []
