"""Pure-Python (numpy) twin of the Cython module ``antiphon.native._upsample``.

Same class, same output bit for bit, same errors; used when the extension is
not built or ANTIPHON_NO_EXTENSIONS=1. The filter sums are exact integers
(int64 here, int32 there: neither can overflow), rounded and clipped the same
way, so the two cannot drift apart. See antiphon.native.upsample for the filter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["TAPS", "Upsampler2x"]

# Q14 taps of the even output phase (the same table as the extension's).
# fmt: off
TAPS: Final = (
    -13, 37, -76, 137, -227, 355, -536, 797, -1192, 1864, -3339, 10385,
    10385, -3339, 1864, -1192, 797, -536, 355, -227, 137, -76, 37, -13,
)
# fmt: on
_TAP_SHIFT: Final = 14
_ROUND_HALF: Final = 1 << (_TAP_SHIFT - 1)
_HISTORY: Final = len(TAPS) - 1  # input samples carried between calls; also the delay in output samples
_COPY_INDEX: Final = len(TAPS) // 2  # out[2m + 1] = x[m - 11], at this index of the window x[m - 23 .. m]
_TAPS: Final = np.array(TAPS, dtype=np.int64)
_PCM16: Final = np.dtype("<i2")


class Upsampler2x:
    """Upsample a PCM16 mono stream from 8 kHz to 16 kHz, chunk by chunk (2 samples out per sample in)."""

    __slots__ = ("_history",)

    def __init__(self) -> None:
        self._history: npt.NDArray[np.int64] = np.zeros(_HISTORY, dtype=np.int64)

    @property
    def delay_samples(self) -> int:
        """Group delay in output (16 kHz) samples: 23, i.e. 1.4375 ms."""
        return _HISTORY

    def reset(self) -> None:
        """Forget the filter history (a new stream): as if preceded by silence."""
        self._history = np.zeros(_HISTORY, dtype=np.int64)

    def process(self, pcm16: ReadableBuffer) -> bytes:
        """Upsample one chunk of PCM16 (s16le at 8 kHz, even byte length) to twice as many samples at 16 kHz.

        Raises ValueError on an odd byte length, and then consumes nothing.
        """
        raw = np.frombuffer(memoryview(pcm16), dtype=np.uint8)
        if raw.size & 1:
            raise ValueError(f"PCM16 input must have an even number of bytes (2 per sample), got {raw.size} bytes")
        n = raw.size >> 1
        if n == 0:  # np.convolve's "valid" would swap its operands when the taps are the longer one
            return b""
        buf = np.concatenate((self._history, raw.view(_PCM16)), dtype=np.int64)
        # The taps are symmetric, so convolution is the extension's dot product over x[m - 23 .. m].
        acc = np.convolve(buf, _TAPS, mode="valid")
        out = np.empty(2 * n, dtype=_PCM16)
        out[0::2] = np.clip((acc + _ROUND_HALF) >> _TAP_SHIFT, -32768, 32767)
        out[1::2] = buf[_COPY_INDEX : _COPY_INDEX + n]
        self._history = buf[n:].copy()
        return out.tobytes()
