"""Deterministic synthetic test signals (PCM16 at 16 kHz) for the ingest tests."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

RATE = 16000
FRAME = 320  # 20 ms at 16 kHz
# Formant centres and bandwidths (Hz) of a neutral vowel, roughly /ə/.
_FORMANTS = ((500.0, 80.0), (1500.0, 100.0), (2500.0, 120.0))


def to_pcm16(x: npt.ArrayLike) -> bytes:
    return np.clip(np.rint(np.asarray(x, dtype=np.float64)), -32768, 32767).astype("<i2").tobytes()


def white_noise(seconds: float, std: float, seed: int) -> npt.NDArray[np.float64]:
    return np.random.default_rng(seed).normal(0.0, std, round(seconds * RATE))


def syllable_envelope(n: int, rate_hz: float = 4.0) -> npt.NDArray[np.float64]:
    """0..1, like syllables: raised cosine at ``rate_hz``, silent between syllables."""
    t = np.arange(n) / RATE
    return np.asarray((0.5 - 0.5 * np.cos(2 * np.pi * rate_hz * t)) ** 2, dtype=np.float64)


def voiced(seconds: float, f0_hz: float, peak: float, seed: int, modulate: bool = True) -> npt.NDArray[np.float64]:
    """A harmonic series on ``f0_hz`` (with a little jitter in pitch) shaped by three formants.

    Amplitude-modulated at 4 Hz like syllables when ``modulate``; ``peak`` is the
    largest absolute sample value.
    """
    rng = np.random.default_rng(seed)
    n = round(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = f0_hz * (1.0 + 0.03 * np.sin(2 * np.pi * 0.7 * t + rng.uniform(0, 2 * np.pi)))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = np.zeros(n)
    for k in range(1, int(3800 // f0_hz) + 1):
        freq = k * f0_hz
        gain = sum(1.0 / (1.0 + ((freq - fc) / bw) ** 2) for fc, bw in _FORMANTS) / k**0.5
        x += gain * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    if modulate:
        x *= syllable_envelope(n)
    return np.asarray(x * (peak / np.max(np.abs(x))), dtype=np.float64)


def frames(pcm16: bytes, frame_samples: int = FRAME) -> list[bytes]:
    step = 2 * frame_samples
    return [pcm16[i : i + step] for i in range(0, len(pcm16) - step + 1, step)]
