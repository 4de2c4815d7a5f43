"""Streaming 2x upsampling of PCM16 from 8 kHz (telephony) to 16 kHz.

``Upsampler2x()``: ``process(pcm16) -> bytes`` turns each chunk of s16le
samples at 8 kHz into exactly twice as many at 16 kHz, keeping the filter
history between calls, so chunked output equals one-shot output; ``reset()``
starts a new stream (as if after silence); ``delay_samples`` is the group
delay in 16 kHz samples (23, i.e. 1.4375 ms). There is no flush(): output is
always exactly twice the input, so the end of a stream stays in the filter
until more input pushes it out (11 samples of silence bring out the last one).

The filter is a 47-tap half-band low-pass (Kaiser-windowed sinc, beta 5.25,
cut-off 4 kHz), run in polyphase form: odd output samples are input samples
copied through, even ones a 24-tap symmetric FIR in Q14 fixed point, rounded
and clipped to int16. It passes 0-3.4 kHz flat to within 0.02 dB and puts the
images (at 8 kHz - f) from 4.6 kHz up at least 56 dB down: ample for a VAD or
Whisper on telephone speech, at a fraction of a microsecond per 20 ms chunk
and a 1.4 ms delay (soxr's streaming resampler: ~4.5 us and 24-96 ms).

The Cython extension is used when built; ANTIPHON_NO_EXTENSIONS=1 forces the
pure-Python twin, which gives identical output, only slower. The choice is
made once, at import: reload the module after changing the environment.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["IMPLEMENTATION", "Upsampler2x", "Upsampler2xLike"]

_EXTENSION = "antiphon.native._upsample"


class Upsampler2xLike(Protocol):
    """What both implementations' Upsampler2x provide (mypy checks each against it); use it in annotations."""

    def __init__(self) -> None: ...
    @property
    def delay_samples(self) -> int: ...
    def reset(self) -> None: ...
    def process(self, pcm16: ReadableBuffer) -> bytes: ...


def _load() -> tuple[type[Upsampler2xLike], Literal["cython", "python"]]:
    if os.environ.get("ANTIPHON_NO_EXTENSIONS") != "1":
        try:
            from antiphon.native import _upsample
        except ModuleNotFoundError as exc:
            # Only "not built" falls back; a built but broken extension must fail loudly.
            if exc.name != _EXTENSION:
                raise
        else:
            return _upsample.Upsampler2x, "cython"
    from antiphon.native import _upsample_py

    return _upsample_py.Upsampler2x, "python"


IMPLEMENTATION: Literal["cython", "python"]
Upsampler2x: type[Upsampler2xLike]
Upsampler2x, IMPLEMENTATION = _load()
