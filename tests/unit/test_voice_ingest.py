"""The ingest path (codec, resampling, framing, both VAD stages, endpointer) on synthetic audio.

Stage 2 is a loudness double here, so the timings are exact; the real Silero runs
in tests/integration/test_voice_pipeline.py.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from antiphon.errors import InvalidArgument
from antiphon.native import g711
from antiphon.voice.endpointer import BargeIn, BargeInMode, BargeInSettings, SpeechStarted, VadSettings
from antiphon.voice.formats import AudioSpec, Encoding, parse_spec
from antiphon.voice.ingest import Idle, IngestEvent, PartialDue, Pause, Utterance, VoiceIngest, check_seq
from tests.voice_fakes import LoudnessVad, chunks, silence, tone

PCM16K = AudioSpec(Encoding.PCM16, 16_000)
VAD = VadSettings(threshold=0.5, prefix_ms=200, silence_ms=400, min_speech_ms=200, max_turn_ms=5_000)


def _ingest(spec: AudioSpec = PCM16K, **kw: object) -> tuple[VoiceIngest, LoudnessVad]:
    vad = LoudnessVad()
    options: dict[str, object] = {"partial_interval_ms": 0, "early_decode_silence_ms": 160}
    options.update(kw)
    barge = options.pop("barge_in", BargeInSettings())
    return VoiceIngest(spec, vad, VAD, barge, **options), vad  # type: ignore[arg-type]


def _feed(ingest: VoiceIngest, audio: np.ndarray, ms: int = 20) -> list[IngestEvent]:
    events: list[IngestEvent] = []
    for chunk in chunks(audio, ms):
        events += ingest.feed(chunk)
    return events


def test_one_utterance_gives_start_pause_and_utterance_at_audio_times() -> None:
    ingest, _ = _ingest()
    audio = np.concatenate([silence(1000), tone(1200), silence(1000)])
    events = _feed(ingest, audio)
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStarted, Pause, Utterance]
    started, pause, utt = events
    assert isinstance(started, SpeechStarted)
    assert isinstance(pause, Pause)
    assert isinstance(utt, Utterance)
    assert abs(started.audio_ms - 1000) <= 32
    assert abs(utt.stopped.audio_ms - 2200) <= 64
    assert utt.stopped.detected_ms - utt.stopped.audio_ms >= VAD.silence_ms
    # The pause covers exactly the utterance the endpointer cut: the early decode can be reused.
    assert (pause.start_sample, pause.end_sample) == (utt.stopped.start_sample, utt.stopped.end_sample)
    # The audio handed over is the tone plus the prefix.
    assert len(utt.audio) == utt.stopped.end_sample - utt.stopped.start_sample
    assert abs(len(utt.audio) / 16 - (1200 + VAD.prefix_ms)) <= 80


def test_stage_two_runs_only_near_stage_one_speech() -> None:
    ingest, vad = _ingest()
    _feed(ingest, np.concatenate([silence(5000), tone(500), silence(5000)]))
    assert ingest.windows > 300
    assert vad.calls == ingest.stage2_windows
    assert vad.calls < ingest.windows / 5


def test_short_burst_is_not_speech() -> None:
    ingest, _ = _ingest()
    assert _feed(ingest, np.concatenate([silence(500), tone(100), silence(1000)])) == []


@pytest.mark.parametrize("chunk_ms", [10, 20, 60, 200])
@pytest.mark.parametrize(
    ("encoding", "rate"),
    [
        (Encoding.PCM16, 8000),
        (Encoding.PCM16, 24000),
        (Encoding.PCM16, 48000),
        (Encoding.MULAW, 8000),
        (Encoding.ALAW, 8000),
    ],
)
def test_every_format_and_chunk_size_finds_the_same_utterance(encoding: Encoding, rate: int, chunk_ms: int) -> None:
    spec = AudioSpec(encoding, rate)
    ingest, _ = _ingest(spec)
    audio = np.concatenate([silence(600, rate), tone(1000, rate), silence(800, rate)])
    events: list[IngestEvent] = []
    step = rate * chunk_ms // 1000
    for i in range(0, len(audio), step):
        pcm = audio[i : i + step].astype("<i2").tobytes()
        data = (
            pcm
            if encoding is Encoding.PCM16
            else (g711.ulaw_encode(pcm) if encoding is Encoding.MULAW else g711.alaw_encode(pcm))
        )
        events += ingest.feed(data)
    utts = [e for e in events if isinstance(e, Utterance)]
    assert len(utts) == 1
    assert abs(utts[0].stopped.audio_ms - 1600) <= 96


def test_partials_come_every_interval_while_speaking() -> None:
    ingest, _ = _ingest(partial_interval_ms=400)
    events = _feed(ingest, np.concatenate([silence(300), tone(2000), silence(600)]))
    partials = [e for e in events if isinstance(e, PartialDue)]
    assert 3 <= len(partials) <= 5
    assert all(b.end_sample - a.end_sample >= 400 * 16 for a, b in itertools.pairwise(partials))


def test_barge_in_fires_only_when_armed_and_after_min_speech() -> None:
    ingest, _ = _ingest(barge_in=BargeInSettings(BargeInMode.VAD, min_speech_ms=300))
    assert not [e for e in _feed(ingest, np.concatenate([tone(600), silence(600)])) if isinstance(e, BargeIn)]
    ingest.arm_barge_in(True)
    short = _feed(ingest, np.concatenate([tone(150), silence(600)]))
    assert not [e for e in short if isinstance(e, BargeIn)]  # a cough does not interrupt
    long = _feed(ingest, np.concatenate([tone(600), silence(600)]))
    barges = [e for e in long if isinstance(e, BargeIn)]
    assert len(barges) == 1
    assert barges[0].detected_ms - barges[0].audio_ms >= 300


def test_idle_after_max_idle() -> None:
    ingest, _ = _ingest(max_idle_ms=2000)
    events = _feed(ingest, silence(5000), ms=200)
    assert [type(e) for e in events] == [Idle, Idle]


def test_memory_stays_bounded_over_long_silence_and_long_speech() -> None:
    ingest, _ = _ingest()
    _feed(ingest, silence(60_000), ms=200)
    assert ingest.history_bytes() <= (VAD.prefix_ms + 64) * 32 + 640
    events = _feed(ingest, tone(8000), ms=200)  # longer than max_turn_ms: cut at 5 s
    utts = [e for e in events if isinstance(e, Utterance)]
    assert utts
    assert utts[0].stopped.reason == "max_turn"
    assert ingest.history_bytes() <= (VAD.max_turn_ms + VAD.prefix_ms + 1000) * 32


def test_bad_chunks_are_invalid_argument() -> None:
    ingest, _ = _ingest()
    with pytest.raises(InvalidArgument, match="even number"):
        ingest.feed(b"\x00\x01\x02")
    with pytest.raises(InvalidArgument, match="at most"):
        ingest.feed(bytes(16_000 * 2))  # 500 ms in one chunk
    with pytest.raises(InvalidArgument, match="must increase"):
        check_seq(5, 5)
    check_seq(0, 1)
    check_seq(1, 0)  # seq unset: not checked


@pytest.mark.parametrize(
    ("encoding", "rate", "channels", "match"),
    [
        (None, 16000, 1, "encoding"),
        (Encoding.PCM16, 22050, 1, "sample_rate_hz"),
        (Encoding.PCM16, 16000, 2, "channels"),
        (Encoding.MULAW, 16000, 1, "8000"),
    ],
)
def test_unsupported_formats(encoding: Encoding | None, rate: int, channels: int, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        parse_spec("input_audio", encoding, rate, channels)
    assert parse_spec("x", Encoding.ALAW, 0, 0) == AudioSpec(Encoding.ALAW, 8000)


def test_partial_stability_is_the_share_of_words_that_held() -> None:
    from antiphon.api.voice_channel import partial_stability

    assert partial_stability("", "what time") == 0.0
    assert partial_stability("What time", "what time is it?") == 0.5
    assert partial_stability("what tie", "what time is") == pytest.approx(1 / 3)
    assert partial_stability("what time is it", "what time is it") == 1.0
    assert partial_stability("anything", "") == 0.0
