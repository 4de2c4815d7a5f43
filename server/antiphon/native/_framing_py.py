"""Pure-Python twin of the Cython module ``antiphon.native._framing``.

Same class, same behaviour and errors (frames are ``bytes``; an odd byte length
raises ValueError, a push past capacity raises OverflowError and consumes
nothing); used when the extension is not built or ANTIPHON_NO_EXTENSIONS=1.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = ["FrameRing"]


class FrameRing:
    """Turn int16 PCM chunks of any size into frames of ``frame_samples`` samples."""

    __slots__ = ("_fill", "_frame_bytes", "_frames", "capacity_frames", "frame_samples")

    def __init__(self, frame_samples: int, capacity_frames: int) -> None:
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        if capacity_frames <= 0:
            raise ValueError(f"capacity_frames must be positive, got {capacity_frames}")
        self.frame_samples = frame_samples
        self.capacity_frames = capacity_frames
        self._frame_bytes = 2 * frame_samples
        self._frames: deque[bytes] = deque()
        self._fill = bytearray()

    @property
    def available_frames(self) -> int:
        """Complete frames ready to pop."""
        return len(self._frames)

    @property
    def pending_samples(self) -> int:
        """Samples of the partial frame still waiting for the rest of it."""
        return len(self._fill) >> 1

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, pcm16: ReadableBuffer) -> None:
        """Append PCM16 (s16le, any C-contiguous bytes-like, even length).

        Raises ValueError on an odd byte length and OverflowError when the ring
        would exceed its capacity; in both cases nothing is consumed.
        """
        with memoryview(pcm16) as view:
            if not view.c_contiguous:
                raise BufferError("PCM16 input must be a C-contiguous buffer")
            with view.cast("B") as raw:
                self._push_bytes(raw)

    def _push_bytes(self, raw: memoryview) -> None:
        nbytes = raw.nbytes
        fb = self._frame_bytes
        if nbytes & 1:
            raise ValueError(f"PCM16 input must have an even number of bytes (2 per sample), got {nbytes} bytes")
        held = len(self._frames) * fb + len(self._fill)
        if nbytes > self.capacity_frames * fb - held:
            raise OverflowError(
                f"frame ring full: pushing {nbytes >> 1} samples onto {held >> 1} held would exceed "
                f"capacity_frames={self.capacity_frames} x frame_samples={self.frame_samples}; pop() first"
            )
        pos = 0
        if self._fill:
            take = min(fb - len(self._fill), nbytes)
            self._fill += raw[:take]
            pos = take
            if len(self._fill) == fb:
                self._frames.append(bytes(self._fill))
                self._fill.clear()
        while nbytes - pos >= fb:
            self._frames.append(raw[pos : pos + fb].tobytes())
            pos += fb
        if pos < nbytes:
            self._fill += raw[pos:]

    def pop(self) -> bytes | None:
        """The oldest complete frame (bytes of 2 * frame_samples), or None."""
        return self._frames.popleft() if self._frames else None

    def clear(self) -> None:
        """Drop every complete frame and the partial one."""
        self._frames.clear()
        self._fill.clear()
