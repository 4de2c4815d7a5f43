"""Converse with audio over a real loopback server: scripted model, recogniser and synthesiser,
real codecs, framing, stage-1 VAD, endpointer, pacing and barge-in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import grpc
import numpy as np
import pytest

from antiphon.agent.tooling import ToolCallInfo, ToolOutcome
from antiphon.api.stream_session import StreamSession
from antiphon.app import App
from antiphon.gateway.limits import MemoryLimiter
from antiphon.inference.llm import ChatMessage, SamplingOptions
from antiphon.native import g711
from antiphon.v1 import conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from antiphon.voice.engines import VoiceEngines
from tests.conftest import RunningServer, test_settings
from tests.eventually import eventually
from tests.fakes import FakeLLM
from tests.unit.test_gateway_support import retry_delays_ms
from tests.voice_fakes import ScriptedSTT, ToneTTS, chunks, fake_engines, silence, tone

PCM16K = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=16000)
MULAW = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_MULAW, sample_rate_hz=8000)
LONG_ANSWER = tuple(f" word{i}" + ("." if i % 5 == 4 else "") for i in range(30))
WAIT_S = 30.0  # bounds waits for the server; only a bug takes that long


@pytest.fixture
def engines() -> VoiceEngines:
    return fake_engines(ScriptedSTT("what time is it"), ToneTTS())


@pytest.fixture
async def voice_server(fake_llm: FakeLLM, engines: VoiceEngines) -> AsyncIterator[RunningServer]:
    app = App(test_settings(voice={"max_idle_s": 3}), llm=fake_llm, voice=engines)
    await app.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    try:
        yield RunningServer(app, channel)
    finally:
        await channel.close()
        await app.stop(grace_s=1.0)


class _Call:
    def __init__(self, server: RunningServer, **config: object) -> None:
        self.call = conversation_pb2_grpc.ConversationStub(server.channel).Converse()
        self.config = pb.SessionConfig(**config)  # type: ignore[arg-type]
        self.events: asyncio.Queue[pb.ServerEvent | None] = asyncio.Queue()
        self.seen: list[pb.ServerEvent] = []

    async def open(self) -> pb.ServerEvent:
        await self.call.write(pb.ClientEvent(session_config=self.config))
        first = await self.call.read()
        assert isinstance(first, pb.ServerEvent)
        self._reader = asyncio.create_task(self._read())
        return first

    async def _read(self) -> None:
        while (event := await self.call.read()) is not grpc.aio.EOF:
            assert isinstance(event, pb.ServerEvent)
            self.seen.append(event)
            await self.events.put(event)
        await self.events.put(None)

    async def send(self, audio: np.ndarray, encoding: str = "pcm16", ms: int = 20, rate: int = 16000) -> None:
        for pcm in chunks(audio, ms, rate):
            data = g711.ulaw_encode(pcm) if encoding == "mulaw" else pcm
            await self.call.write(pb.ClientEvent(audio=pb.AudioChunk(data=data)))

    async def until(self, kind: str, wait_s: float = WAIT_S) -> pb.ServerEvent:
        async with asyncio.timeout(wait_s):
            while True:
                event = await self.events.get()
                assert event is not None, f"stream ended before {kind}"
                if event.WhichOneof("event") == kind:
                    return event

    def audio_ms(self, turn_id: str) -> int:
        """Answer audio received so far for a turn, in ms."""
        return sum(e.audio.duration_ms for e in self.seen if e.HasField("audio") and e.turn_id == turn_id)

    async def close(self) -> None:
        await self.call.done_writing()
        async with asyncio.timeout(WAIT_S):
            await self._reader


async def test_spoken_turn_gets_transcript_text_audio_and_latency(
    voice_server: RunningServer, fake_llm: FakeLLM
) -> None:
    c = _Call(voice_server, input_audio=PCM16K, output_audio=MULAW)
    started = await c.open()
    assert started.session_started.agent_profile == "voice"
    await c.send(np.concatenate([silence(400), tone(900), silence(700)]))
    assert (await c.until("speech_started")).speech_started.audio_ms == pytest.approx(400, abs=40)
    stopped = await c.until("speech_stopped")
    assert stopped.speech_stopped.reason == "silence"
    final = await c.until("transcript")
    assert final.transcript.is_final
    assert final.transcript.text == "what time is it"
    end = await c.until("turn_end")
    await c.close()
    audio = [e.audio for e in c.seen if e.HasField("audio")]
    assert audio
    assert all(len(a.data) <= 320 and a.duration_ms <= 40 for a in audio)
    assert [a.seq for a in audio] == list(range(1, len(audio) + 1))
    assert sum(a.duration_ms for a in audio) == pytest.approx(200, abs=10)  # "Hello, world." = 2 words
    lat = end.turn_end.latency
    assert end.turn_end.reason == pb.TurnEnd.REASON_COMPLETED
    assert lat.endpoint_ms >= 300
    assert lat.voice_to_voice_ms > 0
    assert lat.llm_first_token_ms >= 0
    assert lat.audio_out_ms == pytest.approx(200, abs=10)
    stages = lat.endpoint_ms + lat.transcript_ms + lat.llm_first_token_ms + lat.first_audio_ms
    assert stages == pytest.approx(lat.voice_to_voice_ms, abs=0.5)
    assert fake_llm.prompts[-1][-1].content == "what time is it"


async def test_barge_in_stops_audio_and_history_keeps_what_was_heard(
    voice_server: RunningServer, fake_llm: FakeLLM
) -> None:
    fake_llm.tokens = list(LONG_ANSWER)  # 3 s of speech
    c = _Call(voice_server, input_audio=PCM16K, barge_in=pb.BargeIn(mode=pb.BargeIn.MODE_VAD, min_speech_ms=200))
    await c.open()
    await c.send(np.concatenate([tone(800), silence(600)]))
    turn_id = (await c.until("audio")).turn_id
    # 600 ms received: at most the 160 ms lead of it is unplayed, so the user has heard some of it.
    await eventually(
        lambda: c.audio_ms(turn_id) >= 600, timeout_s=WAIT_S, message="the answer never reached 600 ms of audio"
    )
    await c.send(np.concatenate([tone(400), silence(600)]))  # the user talks over the answer
    interrupted = (await c.until("interrupted")).interrupted
    end = await c.until("turn_end")
    assert end.turn_end.reason == pb.TurnEnd.REASON_INTERRUPTED
    assert voice_server.app.metrics.registry.get_sample_value("antiphon_barge_ins_total") == 1
    assert 300 <= interrupted.played_ms <= 1500
    words = " ".join(t.strip() for t in LONG_ANSWER).split()
    heard = interrupted.heard_text.split()
    assert heard
    assert heard == words[: len(heard)]
    assert len(heard) < 20
    await c.until("turn_end")  # the interrupting speech is the next turn
    await c.close()
    history = fake_llm.prompts[-1]
    assert history[-2].role == "assistant"
    assert history[-2].content == interrupted.heard_text
    sent = c.audio_ms(end.turn_id)
    assert sent <= interrupted.played_ms + 200  # audio stopped within the lead


async def test_a_cough_during_the_answer_loses_nothing(voice_server: RunningServer, fake_llm: FakeLLM) -> None:
    fake_llm.tokens = list(LONG_ANSWER[:10])
    c = _Call(voice_server, input_audio=PCM16K, barge_in=pb.BargeIn(mode=pb.BargeIn.MODE_VAD, min_speech_ms=300))
    await c.open()
    await c.send(np.concatenate([tone(800), silence(600)]))
    await c.until("audio")
    await c.send(np.concatenate([tone(100), silence(300)]))
    end = await c.until("turn_end")
    await c.close()
    assert end.turn_end.reason == pb.TurnEnd.REASON_COMPLETED
    assert not [e for e in c.seen if e.HasField("interrupted")]
    assert end.turn_end.latency.audio_out_ms == pytest.approx(1000, abs=20)


async def test_barge_in_off_lets_the_answer_finish(voice_server: RunningServer, fake_llm: FakeLLM) -> None:
    fake_llm.tokens = list(LONG_ANSWER[:10])
    c = _Call(voice_server, input_audio=PCM16K, barge_in=pb.BargeIn(mode=pb.BargeIn.MODE_OFF))
    await c.open()
    await c.send(np.concatenate([tone(800), silence(600)]))
    await c.until("audio")
    await c.send(np.concatenate([tone(600), silence(600)]))
    first = await c.until("turn_end")
    second = await c.until("turn_end")
    await c.close()
    assert first.turn_end.reason == second.turn_end.reason == pb.TurnEnd.REASON_COMPLETED


async def test_idle_stream_ends_cleanly_with_a_reason(voice_server: RunningServer) -> None:
    c = _Call(voice_server, input_audio=MULAW)
    await c.open()
    await c.send(silence(3100, rate=8000), encoding="mulaw", ms=100, rate=8000)
    ended = await c.until("session_ended")
    assert ended.session_ended.reason == "idle"
    await c.close()
    assert await c.call.code() == grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("config", "audio", "match"),
    [
        ({"input_audio": pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=22050)}, None, "sample_rate"),
        (
            {"input_audio": pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=16000, channels=2)},
            None,
            "mono",
        ),
        ({"input_audio": pb.AudioFormat()}, None, "encoding"),
        ({"vad": pb.VadSettings(threshold=0.4)}, None, "input_audio"),
        ({"output_audio": PCM16K}, None, "input_audio"),  # spoken answers need a voice session
        ({"input_audio": PCM16K, "language": "fr"}, None, "English"),
        ({"input_audio": PCM16K, "voice": "nobody"}, None, "voice"),
        ({"input_audio": PCM16K, "vad": pb.VadSettings(threshold=1.5)}, None, "threshold"),
        ({"input_audio": PCM16K}, b"\x00\x01\x02", "even"),
        ({"input_audio": PCM16K}, bytes(32_000), "at most"),
        ({}, b"\x00\x00", "input_audio"),
    ],
)
async def test_bad_voice_input_is_invalid_argument(
    voice_server: RunningServer, config: dict[str, object], audio: bytes | None, match: str
) -> None:
    call = conversation_pb2_grpc.ConversationStub(voice_server.channel).Converse()
    await call.write(pb.ClientEvent(session_config=pb.SessionConfig(**config)))  # type: ignore[arg-type]
    if audio is not None:
        assert (await call.read()).HasField("session_started")
        await call.write(pb.ClientEvent(audio=pb.AudioChunk(data=audio)))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        while True:
            await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert match in (err.value.details() or "")


async def test_failing_synthesis_keeps_the_text_answer(voice_server: RunningServer, engines: VoiceEngines) -> None:
    assert isinstance(engines.tts, ToneTTS)
    engines.tts.fail = True
    c = _Call(voice_server, input_audio=PCM16K)
    await c.open()
    await c.send(np.concatenate([tone(800), silence(600)]))
    error = await c.until("error")
    end = await c.until("turn_end")
    await c.close()
    assert error.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "synthesis" in error.error.message
    assert end.turn_end.reason == pb.TurnEnd.REASON_COMPLETED
    assert "".join(e.agent_text.delta for e in c.seen if e.HasField("agent_text")) == "Hello, world."


async def test_answer_starts_during_the_pause_and_is_released_at_the_endpoint(
    voice_server: RunningServer, fake_llm: FakeLLM
) -> None:
    c = _Call(voice_server, input_audio=PCM16K)
    await c.open()
    await c.send(np.concatenate([tone(800), silence(240)]))  # past the early decode, before the endpoint
    await eventually(lambda: fake_llm.produced > 0, timeout_s=WAIT_S, message="the early answer never started")
    assert len(fake_llm.prompts) == 1  # the answer is under way...
    assert not [e for e in c.seen if e.HasField("agent_text")]  # ...and held back
    await c.send(silence(500))
    end = await c.until("turn_end")
    await c.close()
    assert end.turn_end.latency.early_start
    assert len(fake_llm.prompts) == 1  # the speculative turn was the turn
    registry = voice_server.app.metrics.registry
    assert registry.get_sample_value("antiphon_early_starts_total", {"outcome": "committed"}) == 1
    assert registry.get_sample_value("antiphon_voice_to_voice_seconds_count") == 1
    kinds = ["final" if e.HasField("transcript") and e.transcript.is_final else e.WhichOneof("event") for e in c.seen]
    assert kinds.index("speech_stopped") < kinds.index("final") < kinds.index("agent_text")
    assert [e.seq for e in c.seen] == sorted(e.seq for e in c.seen)
    assert end.turn_end.reason == pb.TurnEnd.REASON_COMPLETED


async def test_speaking_on_after_a_pause_drops_the_early_answer_without_a_trace(
    voice_server: RunningServer, fake_llm: FakeLLM
) -> None:
    c = _Call(voice_server, input_audio=PCM16K)
    await c.open()
    # A 300 ms pause: longer than the early decode (160 ms), shorter than the turn's end (400 ms).
    await c.send(np.concatenate([tone(800), silence(300)]))
    await eventually(lambda: fake_llm.produced > 0, timeout_s=WAIT_S, message="the early answer never started")
    await c.send(np.concatenate([tone(600), silence(700)]))
    await c.until("turn_end")
    await c.close()
    assert len(fake_llm.prompts) == 2  # one dropped, one answered
    registry = voice_server.app.metrics.registry
    assert registry.get_sample_value("antiphon_early_starts_total", {"outcome": "dropped"}) == 1
    turn_ids = {e.turn_id for e in c.seen if e.turn_id}
    assert len(turn_ids) == 1  # nothing of the dropped turn reached the client
    assert not [e for e in c.seen if e.HasField("interrupted")]
    finals = [e for e in c.seen if e.HasField("transcript") and e.transcript.is_final]
    assert len(finals) == 1
    history = fake_llm.prompts[-1]
    assert [m.role for m in history[1:]] == ["user"]  # the dropped turn left no history


async def test_an_early_answer_runs_no_tool_before_its_turn_is_confirmed(
    voice_server: RunningServer, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    decisions = ['{"tool": "lookup", "arguments": {}}'] * 2  # the early answer's, then the real turn's

    def respond(_messages: Sequence[ChatMessage], options: SamplingOptions) -> list[str] | None:
        if options.json_schema is not None:
            return [decisions.pop(0) if decisions else '{"tool": "answer"}']
        return ["Done", "."]

    fake_llm.responder = respond
    asked: list[str] = []
    ask_client = StreamSession.ask_client

    async def spy(self: StreamSession, call: ToolCallInfo) -> ToolOutcome:
        asked.append(call.call_id)
        return await ask_client(self, call)

    monkeypatch.setattr(StreamSession, "ask_client", spy)
    c = _Call(voice_server, input_audio=PCM16K, client_tools=[pb.ClientTool(name="lookup", description="Looks up.")])
    await c.open()
    await c.send(np.concatenate([tone(800), silence(300)]))  # a pause: the early answer starts
    await eventually(lambda: len(decisions) == 1, timeout_s=WAIT_S, message="the early answer never chose its tool")
    await c.send(np.concatenate([tone(600), silence(700)]))  # the user spoke on: it is dropped
    call = await c.until("tool_call")
    await c.call.write(pb.ClientEvent(tool_result=pb.ToolResult(call_id=call.tool_call.call_id, output_json="{}")))
    await c.until("turn_end")
    await c.close()
    assert asked == [call.tool_call.call_id]  # the dropped answer's tool was never run
    assert [e.tool_call.call_id for e in c.seen if e.HasField("tool_call")] == asked
    assert len({e.turn_id for e in c.seen if e.turn_id}) == 1


async def test_audio_is_metered_and_its_rate_limit_ends_the_stream(
    fake_llm: FakeLLM, engines: VoiceEngines, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = App(test_settings(limits={"tenant_audio_s_per_min": 2}), llm=fake_llm, voice=engines)
    await app.start()
    try:
        # A stopped clock: the bucket does not refill, so the second second of audio empties it exactly.
        limiter = app.gateway.limiter
        assert isinstance(limiter, MemoryLimiter)
        monkeypatch.setattr(limiter, "_clock", lambda: 1000.0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            c = _Call(RunningServer(app, channel), input_audio=PCM16K)
            await c.open()
            for _ in range(2):  # no more: a write racing the server's end would fail the call locally
                await c.send(silence(1000), ms=100)
            async with asyncio.timeout(WAIT_S):
                assert await c.call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            with pytest.raises(asyncio.InvalidStateError):  # writes fail once the server has ended the stream
                await c.send(silence(100), ms=100)
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                await c._reader
            # The same retry advice as a refused call's: RetryInfo and retry-after-ms.
            delay_ms, after_ms = retry_delays_ms(ended.value)
            assert delay_ms == after_ms > 0
            usage = await app.gateway.metering.report("default", app.gateway.metering._period())
            assert usage.usage.stt_seconds == pytest.approx(2)
    finally:
        await app.stop(grace_s=1)


async def test_failing_recognition_is_reported_and_the_stream_goes_on(
    voice_server: RunningServer, engines: VoiceEngines
) -> None:
    assert isinstance(engines.stt, ScriptedSTT)
    engines.stt.fail = True
    c = _Call(voice_server, input_audio=PCM16K)
    await c.open()
    await c.send(np.concatenate([tone(800), silence(700)]))
    error = await c.until("error")
    assert error.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "recognition" in error.error.message
    engines.stt.fail = False
    await c.send(np.concatenate([tone(800), silence(700)]))
    end = await c.until("turn_end")
    await c.close()
    assert end.turn_end.reason == pb.TurnEnd.REASON_COMPLETED


async def test_half_close_mid_utterance_answers_it_then_ends(voice_server: RunningServer, fake_llm: FakeLLM) -> None:
    c = _Call(voice_server, input_audio=PCM16K)
    await c.open()
    await c.send(np.concatenate([tone(800), silence(240)]))  # paused: a speculative answer is under way
    await eventually(lambda: fake_llm.produced > 0, timeout_s=WAIT_S, message="the early answer never started")
    await c.close()  # half-close: no endpoint will ever come from the audio
    kinds = [e.WhichOneof("event") for e in c.seen]
    assert "turn_end" in kinds
    stopped = next(e for e in c.seen if e.HasField("speech_stopped"))
    assert stopped.speech_stopped.reason == "end_of_input"
    assert await c.call.code() == grpc.StatusCode.OK
    assert len(fake_llm.prompts) == 1


async def test_server_stop_mid_answer_leaves_no_task_behind(fake_llm: FakeLLM, engines: VoiceEngines) -> None:
    fake_llm.tokens = list(LONG_ANSWER)
    app = App(test_settings(), llm=fake_llm, voice=engines)
    await app.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        c = _Call(RunningServer(app, channel), input_audio=PCM16K)
        await c.open()
        await c.send(np.concatenate([tone(800), silence(700)]))
        await c.until("audio")
        await app.stop(grace_s=0.2)  # the fail_on_leaked_tasks fixture checks nothing was left running
        with pytest.raises(grpc.aio.AioRpcError):
            await c._reader
