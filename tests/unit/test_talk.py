"""`antiphon talk` against a real loopback server with the scripted recogniser and synthesiser."""

from __future__ import annotations

import asyncio
import json
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from antiphon.app import App
from antiphon.cli import main
from antiphon.voice.engines import VoiceEngines
from antiphon_client.talk import TalkOptions, latency_line, read_wav, talk, write_wav
from tests.conftest import RunningServer, test_settings
from tests.fakes import FakeLLM
from tests.voice_fakes import ScriptedSTT, ToneTTS, fake_engines, silence, tone

UTTERANCE = np.concatenate([silence(400), tone(900), silence(300)])  # 16 kHz


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


def _wav(path: Path, audio: npt.NDArray[np.int16], rate: int = 16000, channels: int = 1) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.repeat(audio, channels).astype("<i2").tobytes())
    return path


def _cli(*argv: str) -> int:
    return main(["talk", *argv])


@pytest.mark.parametrize(("encoding", "rate"), [("pcm16", 16000), ("mulaw", 8000)])
async def test_one_spoken_turn(voice_server: RunningServer, encoding: str, rate: int) -> None:
    options = TalkOptions(encoding=encoding, pace=False)
    result = await talk(voice_server.channel, UTTERANCE, 16000, options)
    assert result.session_id
    [turn] = result.turns
    assert turn.transcript == "what time is it"
    assert turn.answer == "Hello, world."
    assert turn.reason == "completed"
    assert turn.interrupted_ms is None
    assert turn.latency["voice_to_voice_ms"] > 0
    assert turn.latency["endpoint_ms"] >= 300
    assert turn.latency["audio_out_ms"] == pytest.approx(200, abs=10)
    assert result.rate == rate
    assert result.duration_ms == pytest.approx(200, abs=10)  # 2 words, 100 ms each
    assert result.unanswered == 0
    # The answer is the synthesiser's tone, not silence, after the round trip through the codec.
    assert np.abs(np.frombuffer(result.audio, "<i2")).max() > 1000


async def test_two_utterances_two_turns_in_order(voice_server: RunningServer, fake_llm: FakeLLM) -> None:
    audio = np.concatenate([UTTERANCE, silence(600), tone(700), silence(200)])
    result = await talk(voice_server.channel, audio, 16000, TalkOptions(pace=False, barge_in=False))
    assert [t.transcript for t in result.turns] == ["what time is it"] * 2
    assert [t.reason for t in result.turns] == ["completed"] * 2
    assert result.duration_ms == pytest.approx(400, abs=20)
    assert len(fake_llm.prompts) == 2


async def test_barge_in_keeps_only_the_audio_that_was_heard(voice_server: RunningServer, fake_llm: FakeLLM) -> None:
    long = [f" word{i}" + ("." if i % 5 == 4 else "") for i in range(30)]  # 3 s of speech, then "Hello, world."
    fake_llm.responder = lambda messages, options: long if len(fake_llm.prompts) == 1 else None
    audio = np.concatenate([tone(800), silence(1200), tone(500), silence(300)])  # talks over the answer
    loop = asyncio.get_running_loop()
    start = loop.time()
    result = await talk(voice_server.channel, audio, 16000, TalkOptions(chunk_ms=50, tail_ms=600, barge_in=True))
    assert loop.time() - start >= 2.8 + 0.6  # sent in real time, the trailing silence too
    first, second = result.turns
    assert first.reason == "interrupted"
    assert first.interrupted_ms is not None
    assert 200 <= first.interrupted_ms <= 1500
    assert first.heard_text.split() == first.answer.split()[: len(first.heard_text.split())]
    assert second.reason == "completed"
    assert second.answer == "Hello, world."
    assert result.duration_ms == pytest.approx(first.interrupted_ms + 200, abs=20)


async def test_failed_synthesis_keeps_the_text(voice_server: RunningServer, engines: VoiceEngines) -> None:
    assert isinstance(engines.tts, ToneTTS)
    engines.tts.fail = True
    result = await talk(voice_server.channel, UTTERANCE, 16000, TalkOptions(pace=False))
    assert [(t.answer, t.reason) for t in result.turns] == [("Hello, world.", "completed")]
    assert result.errors
    assert result.errors[0].startswith("UNAVAILABLE: speech synthesis failed")
    assert result.audio == b""


@pytest.mark.parametrize(
    "case", [("pcm16", 16000, 1, 16000), ("mulaw", 44100, 2, 8000), ("alaw", 16000, 1, 8000)], ids=str
)
async def test_cli_writes_the_answer_wav(
    voice_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: tuple[str, int, int, int]
) -> None:
    fmt, file_rate, channels, out_rate = case  # the file's rate and channels are converted for the wire
    audio = UTTERANCE if file_rate == 16000 else np.concatenate([silence(400, file_rate), tone(900, file_rate)])
    source = _wav(tmp_path / "in.wav", audio, file_rate, channels)
    out = tmp_path / "answer.wav"
    argv = [str(source), "-o", str(out), "--address", voice_server.address, "--format", fmt, "--no-pace"]
    assert await asyncio.to_thread(_cli, *argv) == 0
    stdout = capsys.readouterr().out
    assert "you: what time is it" in stdout
    assert "agent: Hello, world." in stdout
    assert "latency: voice-to-voice " in stdout
    assert "= endpoint " in stdout
    with wave.open(str(out), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, out_rate)
        assert w.getnframes() / out_rate == pytest.approx(0.2, abs=0.01)


async def test_cli_json_prints_one_object_per_turn(
    voice_server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _wav(tmp_path / "in.wav", UTTERANCE)
    argv = [str(source), "--json", "--no-pace", "--address", voice_server.address, "--barge-in", "off"]
    assert await asyncio.to_thread(_cli, *argv) == 0
    [line] = capsys.readouterr().out.splitlines()
    turn = json.loads(line)
    assert turn["transcript"] == "what time is it"
    assert turn["answer"] == "Hello, world."
    assert turn["reason"] == "completed"
    assert turn["latency"]["voice_to_voice_ms"] > 0
    assert set(turn["latency"]) >= {"endpoint_ms", "transcript_ms", "llm_first_token_ms", "first_audio_ms"}


async def test_cli_reports_grpc_errors(
    server: RunningServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _wav(tmp_path / "in.wav", UTTERANCE)
    assert await asyncio.to_thread(_cli, str(source), "--no-pace", "--address", server.address) == 1
    assert capsys.readouterr().err.startswith("error: UNIMPLEMENTED: ")  # a server without voice models


def test_missing_or_invalid_wav_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(str(tmp_path / "nope.wav")) == 2
    assert "nope.wav: No such file" in capsys.readouterr().err
    (tmp_path / "junk.wav").write_bytes(b"not a wav file at all")
    assert _cli(str(tmp_path / "junk.wav")) == 2
    assert "not a PCM WAV file" in capsys.readouterr().err
    with wave.open(str(tmp_path / "8bit.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(8000)
        w.writeframes(bytes(800))
    assert _cli(str(tmp_path / "8bit.wav")) == 2
    assert "only 16-bit" in capsys.readouterr().err
    assert _cli() == 2
    assert "--mic" in capsys.readouterr().err


def test_rate_and_format_are_checked(tmp_path: Path) -> None:
    assert TalkOptions().wire_rate(22050) == 16000
    assert TalkOptions().wire_rate(48000) == 48000
    assert TalkOptions(encoding="alaw").wire_rate(44100) == 8000
    with pytest.raises(ValueError, match="mulaw supports 8000 Hz"):
        TalkOptions(encoding="mulaw", rate=16000).wire_rate(16000)
    with pytest.raises(ValueError, match="chunk-ms"):
        TalkOptions(chunk_ms=5)
    source = _wav(tmp_path / "in.wav", tone(100))
    assert _cli(str(source), "--format", "mulaw", "--rate", "16000") == 2


def test_wav_round_trip_and_stereo_mix(tmp_path: Path) -> None:
    left = tone(50)
    with wave.open(str(tmp_path / "st.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.stack([left, np.zeros_like(left)], axis=1).astype("<i2").tobytes())
    mono, rate = read_wav(tmp_path / "st.wav")
    assert rate == 16000
    assert np.abs(mono.astype(np.int32) - left // 2).max() <= 1
    write_wav(tmp_path / "out.wav", mono.tobytes(), 16000)
    again, _ = read_wav(tmp_path / "out.wav")
    assert np.array_equal(again, mono)


def test_latency_line() -> None:
    latency = {
        "voice_to_voice_ms": 742.4,
        "endpoint_ms": 400.0,
        "transcript_ms": 35.2,
        "llm_first_token_ms": 180.0,
        "first_audio_ms": 127.0,
        "stt_ms": 95.0,
        "tts_ms": 140.0,
    }
    assert latency_line(latency) == (
        "latency: voice-to-voice 742 ms = endpoint 400 + transcript 35 + llm first token 180"
        " + first audio 127 (stt 95 ms, tts 140 ms)"
    )
    assert latency_line({"voice_to_voice_ms": 0, "first_token_ms": 12, "total_ms": 30}) == (
        "latency: first token 12 ms, total 30 ms"
    )
