"""Frame ring: int16 PCM chunks of any size -> fixed frames of N samples.

``FrameRing(frame_samples, capacity_frames)``: push() PCM16 (s16le) chunks of
any even byte length, pop() one frame of ``frame_samples`` samples as ``bytes``
(or None). Each sample is copied once in the extension (into its frame's
bytes object, which pop() hands out as is). Capacity is bounded: a push that
would hold more than ``capacity_frames * frame_samples`` samples raises
OverflowError and consumes nothing. At 16 kHz, 10/20/30 ms are 160/320/480
samples.

The Cython extension is used when built; ANTIPHON_NO_EXTENSIONS=1 forces the
pure-Python twin, which behaves identically, only slower. The choice is made
once, at import: reload the module after changing the environment.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["IMPLEMENTATION", "FrameRing", "FrameRingLike", "frame_samples_for"]

_EXTENSION = "antiphon.native._framing"


class FrameRingLike(Protocol):
    """What both implementations' FrameRing provide (mypy checks each against it); use it in annotations."""

    def __init__(self, frame_samples: int, capacity_frames: int) -> None: ...

    @property
    def frame_samples(self) -> int: ...
    @property
    def capacity_frames(self) -> int: ...
    @property
    def available_frames(self) -> int: ...
    @property
    def pending_samples(self) -> int: ...
    def __len__(self) -> int: ...
    def push(self, pcm16: ReadableBuffer) -> None: ...
    def pop(self) -> bytes | None: ...
    def clear(self) -> None: ...


def _load() -> tuple[type[FrameRingLike], Literal["cython", "python"]]:
    if os.environ.get("ANTIPHON_NO_EXTENSIONS") != "1":
        try:
            from antiphon.native import _framing
        except ModuleNotFoundError as exc:
            # Only "not built" falls back; a built but broken extension must fail loudly.
            if exc.name != _EXTENSION:
                raise
        else:
            return _framing.FrameRing, "cython"
    from antiphon.native import _framing_py

    return _framing_py.FrameRing, "python"


def frame_samples_for(frame_ms: int, sample_rate_hz: int = 16000) -> int:
    """Samples in a frame of ``frame_ms`` (10, 20 or 30 ms: 160/320/480 at 16 kHz)."""
    if frame_ms not in (10, 20, 30):
        raise ValueError(f"frame_ms must be 10, 20 or 30, got {frame_ms}")
    samples, rest = divmod(sample_rate_hz * frame_ms, 1000)
    if rest or samples <= 0:
        raise ValueError(f"sample_rate_hz={sample_rate_hz} has no whole number of samples in {frame_ms} ms")
    return samples


IMPLEMENTATION: Literal["cython", "python"]
FrameRing: type[FrameRingLike]
FrameRing, IMPLEMENTATION = _load()
