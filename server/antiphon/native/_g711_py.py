"""Pure-Python (numpy) twin of the Cython module ``antiphon.native._g711``.

Same functions, same results bit for bit, same errors; used when the extension
is not built or ANTIPHON_NO_EXTENSIONS=1. Tables are derived here, vectorised,
from the Sun g711.c / ITU-T G.191 reference rather than copied from the Cython
side, so the tests compare two independent derivations (and audioop).
PCM16 is signed 16-bit little-endian whatever the host byte order.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "alaw_decode",
    "alaw_encode",
    "float32_to_pcm16",
    "pcm16_to_float32",
    "ulaw_decode",
    "ulaw_encode",
]

_PCM16: Final = np.dtype("<i2")
_U16LE: Final = np.dtype("<u2")
_ULAW_BIAS: Final = 0x84
_ULAW_CLIP: Final = 8159
# Segment end points of the reference algorithm.
_SEG_UEND: Final = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_SEG_AEND: Final = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])


def _all_samples() -> npt.NDArray[np.int32]:
    # Every int16 value, ordered by its uint16 bit pattern, so the encode tables
    # are indexed by the raw sample: one gather per call, no shift/mask passes.
    return np.arange(65536, dtype=np.uint16).view(np.int16).astype(np.int32)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = _all_samples() >> 2  # the reference works on 14-bit samples
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = np.searchsorted(_SEG_UEND, mag)  # first segment whose end >= mag
    code = (seg << 4) | ((mag >> (seg + 1)) & 0xF)
    return (np.where(seg >= 8, 0x7F, code) ^ mask).astype(np.uint8)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = _all_samples() >> 3  # the reference works on 13-bit samples
    negative = pcm < 0
    mask = np.where(negative, 0x55, 0xD5)
    mag = np.where(negative, -pcm - 1, pcm)
    seg = np.searchsorted(_SEG_AEND, mag)
    code = (seg << 4) | ((mag >> np.maximum(seg, 1)) & 0xF)
    return (np.where(seg >= 8, 0x7F, code) ^ mask).astype(np.uint8)


def _ulaw_decode_table() -> npt.NDArray[np.int16]:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & 0xF) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(_PCM16)


def _alaw_decode_table() -> npt.NDArray[np.int16]:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    t = (a & 0xF) << 4
    seg = (a & 0x70) >> 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & 0x80, t, -t).astype(_PCM16)


_ULAW_ENC: Final = _ulaw_encode_table()
_ALAW_ENC: Final = _alaw_encode_table()
_ULAW_DEC: Final = _ulaw_decode_table()
_ALAW_DEC: Final = _alaw_decode_table()


def _raw_bytes(data: ReadableBuffer) -> npt.NDArray[np.uint8]:
    # np.frombuffer takes the buffer like the extension does (PyBUF_SIMPLE), so
    # both accept and reject the same objects with the same exception types;
    # memoryview() only widens the type for numpy's stubs.
    return np.frombuffer(memoryview(data), dtype=np.uint8)


def _pcm16_samples(pcm16: ReadableBuffer) -> npt.NDArray[np.uint16]:
    raw = _raw_bytes(pcm16)
    if raw.size & 1:
        raise ValueError(f"PCM16 input must have an even number of bytes (2 per sample), got {raw.size} bytes")
    return raw.view(_U16LE)


def ulaw_encode(pcm16: ReadableBuffer) -> bytes:
    """Encode PCM16 (s16le, even length) to G.711 mu-law, one byte per sample."""
    return _ULAW_ENC[_pcm16_samples(pcm16)].tobytes()


def ulaw_decode(data: ReadableBuffer) -> bytes:
    """Decode G.711 mu-law bytes to PCM16 (s16le), two bytes per code."""
    return _ULAW_DEC[_raw_bytes(data)].tobytes()


def alaw_encode(pcm16: ReadableBuffer) -> bytes:
    """Encode PCM16 (s16le, even length) to G.711 A-law, one byte per sample."""
    return _ALAW_ENC[_pcm16_samples(pcm16)].tobytes()


def alaw_decode(data: ReadableBuffer) -> bytes:
    """Decode G.711 A-law bytes to PCM16 (s16le), two bytes per code."""
    return _ALAW_DEC[_raw_bytes(data)].tobytes()


def pcm16_to_float32(pcm16: ReadableBuffer) -> npt.NDArray[np.float32]:
    """PCM16 (s16le, even length) -> new float32 array of k / 32768, in [-1, 1)."""
    out = _pcm16_samples(pcm16).view(_PCM16).astype(np.float32)
    out *= np.float32(1.0 / 32768.0)  # exact: a power of two
    return out


def float32_to_pcm16(samples: npt.ArrayLike) -> bytes:
    """Float samples (any shape, converted to float32) -> PCM16 s16le bytes.

    Scales by 32768, rounds half to even, clips to [-32768, 32767]; NaN -> 0.
    """
    x = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
    # float64 makes the scaling exact and cannot overflow (no RuntimeWarning);
    # clipping before rounding matches the extension, and clip keeps NaN as NaN.
    v = np.rint(np.clip(x.astype(np.float64) * 32768.0, -32768.0, 32767.0))
    np.nan_to_num(v, copy=False, nan=0.0)
    return v.astype(_PCM16).tobytes()
