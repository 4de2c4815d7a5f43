"""Streaming PCM16 resampling between the rates the voice path meets, with soxr.

``StreamResampler(in_rate, out_rate)``: ``process(pcm16) -> bytes`` for each
chunk as it arrives, ``flush() -> bytes`` once at the end of the stream for the
samples still inside the filter, ``reset()`` to start a new stream. PCM16 is
signed 16-bit little-endian mono. soxr's streaming resampler keeps its filter
state between chunks, so chunked output equals one-shot output (up to the
filter's delay being released at different points), and the total length is
``round(n_in * out_rate / in_rate)`` after flush(). Equal rates pass through.

Quality "HQ" (soxr's default, 20-bit) is the default: at 16 kHz mono it costs a
few microseconds per 20 ms chunk (bench/bench_ingest.py), so "MQ" saves too
little to be worth its lower stop-band attenuation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

import numpy as np
import soxr

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["SUPPORTED_RATES_HZ", "Quality", "StreamResampler"]

SUPPORTED_RATES_HZ: Final = (8000, 16000, 22050, 24000, 48000)
Quality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]
_QUALITIES: Final = ("QQ", "LQ", "MQ", "HQ", "VHQ")
_PCM16: Final = np.dtype("<i2")


def _check_rate(name: str, rate: int) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in SUPPORTED_RATES_HZ:
        supported = ", ".join(str(r) for r in SUPPORTED_RATES_HZ)
        raise ValueError(f"{name}={rate!r} Hz is not supported; use one of {supported}")
    return rate


class StreamResampler:
    """Resample a PCM16 mono stream chunk by chunk from ``in_rate`` to ``out_rate`` Hz."""

    __slots__ = ("_done", "_stream", "in_rate", "out_rate", "quality")

    def __init__(self, in_rate: int, out_rate: int, quality: Quality = "HQ") -> None:
        self.in_rate = _check_rate("in_rate", in_rate)
        self.out_rate = _check_rate("out_rate", out_rate)
        if quality not in _QUALITIES:
            raise ValueError(f"quality={quality!r} is not one of {', '.join(_QUALITIES)}")
        self.quality = quality
        self._stream: soxr.ResampleStream | None = None
        self._done = False
        self.reset()

    @property
    def passthrough(self) -> bool:
        """True when the rates are equal and chunks come back unchanged."""
        return self._stream is None

    def process(self, pcm16: ReadableBuffer) -> bytes:
        """Resample one chunk (s16le, even byte length); returns what the filter has ready."""
        if self._done:
            raise RuntimeError("StreamResampler.process() after flush(); call reset() to start a new stream")
        raw = np.frombuffer(memoryview(pcm16), dtype=np.uint8)
        if raw.size & 1:
            raise ValueError(f"PCM16 input must have an even number of bytes (2 per sample), got {raw.size} bytes")
        if self._stream is None:
            return raw.tobytes()
        out = self._stream.resample_chunk(raw.view(_PCM16), last=False)
        return bytes(out.astype(_PCM16, copy=False).tobytes())

    def flush(self) -> bytes:
        """End of stream: the samples still held by the filter. Call once; then reset() to reuse."""
        if self._done:
            raise RuntimeError("StreamResampler.flush() called twice; call reset() to start a new stream")
        self._done = True
        if self._stream is None:
            return b""
        out = self._stream.resample_chunk(np.empty(0, dtype=_PCM16), last=True)
        return bytes(out.astype(_PCM16, copy=False).tobytes())

    def reset(self) -> None:
        """Drop the filter state and start a new stream.

        A fresh soxr stream: after ResampleStream.clear() soxr 1.1's output differs from a new stream's.
        """
        if self.in_rate != self.out_rate:
            self._stream = soxr.ResampleStream(self.in_rate, self.out_rate, 1, dtype="int16", quality=self.quality)
        self._done = False
