"""G.711 mu-law/A-law codecs and PCM16 <-> float32 conversion.

PCM16 is signed 16-bit little-endian mono (the wire format). The Cython
extension is used when built; ANTIPHON_NO_EXTENSIONS=1 forces the pure-Python
twin, which gives identical results, only slower. The choice is made once, at
import: reload the module after changing the environment.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from _typeshed import ReadableBuffer

__all__ = [
    "IMPLEMENTATION",
    "alaw_decode",
    "alaw_encode",
    "float32_to_pcm16",
    "pcm16_to_float32",
    "ulaw_decode",
    "ulaw_encode",
]

_EXTENSION = "antiphon.native._g711"


class _G711(Protocol):
    """What both implementation modules provide (mypy checks each against it)."""

    def ulaw_encode(self, pcm16: ReadableBuffer) -> bytes: ...
    def ulaw_decode(self, data: ReadableBuffer) -> bytes: ...
    def alaw_encode(self, pcm16: ReadableBuffer) -> bytes: ...
    def alaw_decode(self, data: ReadableBuffer) -> bytes: ...
    def pcm16_to_float32(self, pcm16: ReadableBuffer) -> npt.NDArray[np.float32]: ...
    def float32_to_pcm16(self, samples: npt.ArrayLike) -> bytes: ...


def _load() -> tuple[_G711, Literal["cython", "python"]]:
    if os.environ.get("ANTIPHON_NO_EXTENSIONS") != "1":
        try:
            from antiphon.native import _g711
        except ModuleNotFoundError as exc:
            # Only "not built" falls back; a built but broken extension (ABI
            # mismatch, missing symbol) must fail loudly, not slow us down silently.
            if exc.name != _EXTENSION:
                raise
        else:
            return _g711, "cython"
    from antiphon.native import _g711_py

    return _g711_py, "python"


_impl: _G711
IMPLEMENTATION: Literal["cython", "python"]
_impl, IMPLEMENTATION = _load()

# Bound directly (no wrapper) so a 20 ms frame pays no extra Python call.
ulaw_encode = _impl.ulaw_encode
ulaw_decode = _impl.ulaw_decode
alaw_encode = _impl.alaw_encode
alaw_decode = _impl.alaw_decode
pcm16_to_float32 = _impl.pcm16_to_float32
float32_to_pcm16 = _impl.float32_to_pcm16
