"""Test doubles for the voice path: a VAD that hears loudness, a recogniser and a synthesiser
that script their answers. The real models have their own tests (tests/integration)."""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import numpy.typing as npt

from antiphon.voice.engines import VoiceEngines
from antiphon.voice.phrase_cache import PhraseCache
from antiphon.voice.silero import VadStream
from antiphon.voice.stt import SpeechToText, Transcription
from antiphon.voice.tts import TextToSpeech

RATE = 16_000


def tone(ms: int, rate: int = RATE, amplitude: float = 0.3) -> npt.NDArray[np.int16]:
    """A voiced-sounding tone burst (a few harmonics of 150 Hz)."""
    t = np.arange(rate * ms // 1000) / rate
    x = np.zeros_like(t)
    for k in range(1, 8):
        x += np.sin(2 * np.pi * 150 * k * t) / k
    return (x / 2.6 * amplitude * 32767).astype(np.int16)


def silence(ms: int, rate: int = RATE) -> npt.NDArray[np.int16]:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


def chunks(audio: npt.NDArray[np.int16], ms: int = 20, rate: int = RATE) -> list[bytes]:
    step = rate * ms // 1000
    return [audio[i : i + step].astype("<i2").tobytes() for i in range(0, len(audio), step)]


class LoudnessVad(VadStream):
    """Probability 0.95 for a window with RMS above -40 dBFS, else 0.02."""

    def __init__(self) -> None:
        self.calls = 0

    def probability(self, window: npt.NDArray[np.float32]) -> float:
        self.calls += 1
        rms = float(np.sqrt(np.mean(window.astype(np.float64) ** 2)))
        return 0.95 if rms > 0.01 else 0.02

    def reset(self) -> None:
        return None


class LoudnessVadModel:
    def open_stream(self) -> VadStream:
        return LoudnessVad()


class ScriptedSTT(SpeechToText):
    """Answers `text` for any audio with sound in it, "" for silence."""

    def __init__(self, text: str = "what time is it") -> None:
        self.text = text
        self.calls: list[int] = []
        self.gate: threading.Event | None = None
        self.fail = False

    def transcribe(self, samples: npt.NDArray[np.int16], *, words: bool = False) -> Transcription:
        self.calls.append(len(samples))
        if self.gate is not None:
            self.gate.wait(60)  # bounded only for a test that fails before it opens the gate
        if self.fail:
            raise RuntimeError("recogniser exploded")
        audio_ms = len(samples) / 16
        if not len(samples) or np.abs(samples).max() < 100:
            return Transcription("", (), audio_ms, 1.0)
        return Transcription(self.text, (), audio_ms, 1.0)

    def close(self) -> None:
        return None


class ToneTTS(TextToSpeech):
    """100 ms of tone per word at 22.05 kHz."""

    sample_rate = 22_050
    voice_id = "tone"

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail = False

    def synthesize(self, text: str) -> npt.NDArray[np.int16]:
        self.calls.append(text)
        if self.fail:
            raise RuntimeError("synthesis exploded")
        return tone(100 * len(text.split()), rate=self.sample_rate)

    def close(self) -> None:
        return None


def fake_engines(stt: SpeechToText | None = None, tts: TextToSpeech | None = None) -> VoiceEngines:
    return VoiceEngines(
        vad=LoudnessVadModel(),
        stt=stt or ScriptedSTT(),
        tts=tts or ToneTTS(),
        cache=PhraseCache(max_bytes=1 << 20),
        stt_pool=concurrent.futures.ThreadPoolExecutor(1),
        tts_pool=concurrent.futures.ThreadPoolExecutor(1),
    )
