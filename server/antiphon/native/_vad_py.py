"""Pure-Python (numpy) twin of the Cython module ``antiphon.native._vad``.

Same class, same scores, same errors; used when the extension is not built or
ANTIPHON_NO_EXTENSIONS=1. The sums are exact integers and the scalar math is
the same sequence of double operations and libm calls as the extension, so the
two agree to the last bit on ordinary builds (tests require equal decisions).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Final

import numpy as np

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["EnergyVad"]

_PCM16: Final = np.dtype("<i2")
_SILENCE_DBFS: Final = -100.0
_FULL_SCALE_SQ: Final = 1073741824.0  # 32768 ** 2


class EnergyVad:
    """Energy + zero-crossing stage-1 VAD; process() returns a speech score in [0, 1].

    See antiphon.native.vad for the algorithm and the meaning of each parameter.
    """

    def __init__(
        self,
        sample_rate_hz: int = 16000,
        *,
        threshold_db: float = 5.0,
        voiced_bonus_db: float = 3.0,
        ramp_db: float = 10.0,
        floor_rise_s: float = 3.0,
        floor_fall_s: float = 0.02,
        initial_floor_dbfs: float = -50.0,
        min_floor_dbfs: float = -75.0,
        zcr_voiced_min: float = 0.01,
        zcr_voiced_max: float = 0.35,
    ) -> None:
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        if not threshold_db >= 0.0:
            raise ValueError(f"threshold_db must be >= 0, got {threshold_db}")
        if not voiced_bonus_db >= 0.0:
            raise ValueError(f"voiced_bonus_db must be >= 0, got {voiced_bonus_db}")
        if not ramp_db > 0.0:
            raise ValueError(f"ramp_db must be positive, got {ramp_db}")
        if not floor_rise_s > 0.0:
            raise ValueError(f"floor_rise_s must be positive, got {floor_rise_s}")
        if not floor_fall_s > 0.0:
            raise ValueError(f"floor_fall_s must be positive, got {floor_fall_s}")
        if not -100.0 <= min_floor_dbfs <= initial_floor_dbfs <= 0.0:
            raise ValueError(
                f"need -100 <= min_floor_dbfs <= initial_floor_dbfs <= 0, "
                f"got min_floor_dbfs={min_floor_dbfs}, initial_floor_dbfs={initial_floor_dbfs}"
            )
        if not 0.0 <= zcr_voiced_min <= zcr_voiced_max <= 1.0:
            raise ValueError(
                f"need 0 <= zcr_voiced_min <= zcr_voiced_max <= 1, "
                f"got zcr_voiced_min={zcr_voiced_min}, zcr_voiced_max={zcr_voiced_max}"
            )
        self.sample_rate_hz = int(sample_rate_hz)
        self.threshold_db = float(threshold_db)
        self.voiced_bonus_db = float(voiced_bonus_db)
        self.ramp_db = float(ramp_db)
        self.floor_rise_s = float(floor_rise_s)
        self.floor_fall_s = float(floor_fall_s)
        self.initial_floor_dbfs = float(initial_floor_dbfs)
        self.min_floor_dbfs = float(min_floor_dbfs)
        self.zcr_voiced_min = float(zcr_voiced_min)
        self.zcr_voiced_max = float(zcr_voiced_max)
        self._alpha_n = 0
        self._alpha_rise = 0.0
        self._alpha_fall = 0.0
        self.noise_floor_dbfs = self.initial_floor_dbfs
        self.energy_dbfs = _SILENCE_DBFS
        self.zcr = 0.0
        self.score = 0.0

    @property
    def is_speech(self) -> bool:
        """The last frame's decision: score >= 0.5."""
        return self.score >= 0.5

    def reset(self) -> None:
        """Forget the noise floor and the last frame (a new stream)."""
        self.noise_floor_dbfs = self.initial_floor_dbfs
        self.energy_dbfs = _SILENCE_DBFS
        self.zcr = 0.0
        self.score = 0.0

    def process(self, frame_pcm16: ReadableBuffer) -> float:
        """Score one frame of PCM16 (s16le, at least 2 samples): speech likelihood in [0, 1].

        Raises ValueError on an odd byte length or a frame under 2 samples.
        """
        raw = np.frombuffer(memoryview(frame_pcm16), dtype=np.uint8)
        if raw.size & 1:
            raise ValueError(f"PCM16 input must have an even number of bytes (2 per sample), got {raw.size} bytes")
        n = raw.size >> 1
        if n < 2:
            raise ValueError(f"a VAD frame needs at least 2 samples, got {n}")
        x = raw.view(_PCM16).astype(np.int64)
        total = int(x.sum())
        sumsq = int(np.dot(x, x))
        neg = (x * n - total) < 0  # sign of (x - mean), exact
        crossings = int(np.count_nonzero(neg[1:] != neg[:-1]))
        e = (float(sumsq) - float(total) * float(total) / float(n)) / float(n)
        db = max(10.0 * math.log10(e / _FULL_SCALE_SQ), _SILENCE_DBFS) if e > 0.0 else _SILENCE_DBFS
        self.energy_dbfs = db
        self.zcr = crossings / (n - 1)
        thr = self.threshold_db
        if self.zcr_voiced_min <= self.zcr <= self.zcr_voiced_max:
            thr = thr - self.voiced_bonus_db
        s = min(max(0.5 + (db - self.noise_floor_dbfs - thr) / self.ramp_db, 0.0), 1.0)
        self.score = s
        if n != self._alpha_n:
            frame_s = n / self.sample_rate_hz
            self._alpha_rise = 1.0 - math.exp(-frame_s / self.floor_rise_s)
            self._alpha_fall = 1.0 - math.exp(-frame_s / self.floor_fall_s)
            self._alpha_n = n
        if db < self.noise_floor_dbfs:
            self.noise_floor_dbfs += self._alpha_fall * (db - self.noise_floor_dbfs)
        else:
            self.noise_floor_dbfs += self._alpha_rise * (db - self.noise_floor_dbfs)
        self.noise_floor_dbfs = max(self.noise_floor_dbfs, self.min_floor_dbfs)
        return s
