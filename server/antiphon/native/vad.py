"""Stage-1 voice activity detection: frame energy over an adaptive noise floor, plus ZCR.

``EnergyVad(sample_rate_hz=16000, ...)``; ``process(frame_pcm16) -> float``
returns a speech score in [0, 1] and ``is_speech`` (score >= 0.5) is the
decision; ``reset()`` starts a new stream. It costs well under a microsecond
per 20 ms frame in the extension and gates the expensive stage-2 (neural)
VAD, so it is tuned for recall: it rejects steady silence and low steady
noise once the floor has adapted, and lets other noise through for stage 2.

Algorithm, per frame (any length >= 2 samples, normally 10/20/30 ms):

- energy: mean square of the DC-free frame, in dBFS (0 dBFS = full-scale
  square wave, a full-scale sine is -3 dBFS; digital silence reads -100);
- zero-crossing rate: sign changes of the DC-free frame per sample. Voiced
  speech, even with some noise in it, sits in [zcr_voiced_min, zcr_voiced_max] (0.01-0.35), white
  noise near 0.5. In that range the threshold is lowered by voiced_bonus_db:
  the cue can only add detections, never lose one (fricatives keep the plain
  threshold);
- score = clamp(0.5 + (energy - floor - threshold) / ramp_db, 0, 1), using the
  floor from before the frame;
- the floor then moves toward the frame's energy: down with time constant
  floor_fall_s (fast), up with floor_rise_s (slow), so it tracks the minimum
  of recent energy; it starts at initial_floor_dbfs and never goes below
  min_floor_dbfs (so digital silence does not make the next hiss "speech").

The Cython extension is used when built; ANTIPHON_NO_EXTENSIONS=1 forces the
pure-Python twin, which gives the same scores, only slower. The choice is made
once, at import: reload the module after changing the environment.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["IMPLEMENTATION", "SPEECH_SCORE", "EnergyVad", "EnergyVadLike"]

_EXTENSION = "antiphon.native._vad"

SPEECH_SCORE = 0.5
"""A frame whose score reaches this is speech (``is_speech``)."""


class EnergyVadLike(Protocol):
    """What both implementations' EnergyVad provide (mypy checks each against it); use it in annotations."""

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
    ) -> None: ...
    @property
    def sample_rate_hz(self) -> int: ...
    @property
    def threshold_db(self) -> float: ...
    @property
    def noise_floor_dbfs(self) -> float: ...
    @property
    def energy_dbfs(self) -> float: ...
    @property
    def zcr(self) -> float: ...
    @property
    def score(self) -> float: ...
    @property
    def is_speech(self) -> bool: ...
    def reset(self) -> None: ...
    def process(self, frame_pcm16: ReadableBuffer) -> float: ...


def _load() -> tuple[type[EnergyVadLike], Literal["cython", "python"]]:
    if os.environ.get("ANTIPHON_NO_EXTENSIONS") != "1":
        try:
            from antiphon.native import _vad
        except ModuleNotFoundError as exc:
            # Only "not built" falls back; a built but broken extension must fail loudly.
            if exc.name != _EXTENSION:
                raise
        else:
            return _vad.EnergyVad, "cython"
    from antiphon.native import _vad_py

    return _vad_py.EnergyVad, "python"


IMPLEMENTATION: Literal["cython", "python"]
EnergyVad: type[EnergyVadLike]
EnergyVad, IMPLEMENTATION = _load()
