# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Frame ring: PCM16 chunks of any size -> fixed frames of N samples (Cython).

Each sample is copied exactly once: from the pushed buffer straight into the
``bytes`` object of the frame it belongs to. That object is allocated empty
and filled in place before any Python code can see it (the way CPython's own
C code builds bytes), and pop() hands it out without another copy; frames are
immutable, so a caller may keep one as long as it likes. Capacity is bounded:
a push that would hold more than capacity_frames * frame_samples samples
(complete frames plus the partial one) raises OverflowError and consumes
nothing. antiphon/native/_framing_py.py is the pure-Python twin.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memcpy


cdef class FrameRing:
    """Turn int16 PCM chunks of any size into frames of ``frame_samples`` samples."""

    def __init__(self, Py_ssize_t frame_samples, Py_ssize_t capacity_frames):
        if frame_samples <= 0:
            raise ValueError(f"frame_samples must be positive, got {frame_samples}")
        if capacity_frames <= 0:
            raise ValueError(f"capacity_frames must be positive, got {capacity_frames}")
        self.frame_samples = frame_samples
        self.capacity_frames = capacity_frames
        self._frame_bytes = 2 * frame_samples
        self._frames = [None] * capacity_frames
        self._head = 0
        self._count = 0
        self._filling = None
        self._fill = 0

    @property
    def available_frames(self):
        """Complete frames ready to pop."""
        return self._count

    @property
    def pending_samples(self):
        """Samples of the partial frame still waiting for the rest of it."""
        return self._fill >> 1

    def __len__(self):
        return self._count

    cdef int push_ptr(self, const unsigned char* data, Py_ssize_t nbytes) except -1:
        cdef Py_ssize_t fb = self._frame_bytes
        cdef Py_ssize_t held, n, tail
        if nbytes & 1:
            raise ValueError(f"PCM16 input must have an even number of bytes (2 per sample), got {nbytes} bytes")
        held = self._count * fb + self._fill
        if nbytes > self.capacity_frames * fb - held:
            raise OverflowError(
                f"frame ring full: pushing {nbytes >> 1} samples onto {held >> 1} held would exceed "
                f"capacity_frames={self.capacity_frames} x frame_samples={self.frame_samples}; pop() first"
            )
        while nbytes > 0:
            if self._filling is None:
                self._filling = PyBytes_FromStringAndSize(NULL, fb)
                self._fill = 0
            n = fb - self._fill
            if n > nbytes:
                n = nbytes
            memcpy(<unsigned char*>PyBytes_AS_STRING(self._filling) + self._fill, data, n)
            self._fill += n
            data += n
            nbytes -= n
            if self._fill == fb:
                tail = self._head + self._count
                if tail >= self.capacity_frames:
                    tail -= self.capacity_frames
                self._frames[tail] = self._filling
                self._count += 1
                self._filling = None
                self._fill = 0
        return 0

    cpdef void push(self, object pcm16) except *:
        """Append PCM16 (s16le, any C-contiguous bytes-like, even length).

        Raises ValueError on an odd byte length and OverflowError when the ring
        would exceed its capacity; in both cases nothing is consumed.
        """
        cdef Py_buffer view
        PyObject_GetBuffer(pcm16, &view, PyBUF_SIMPLE)
        try:
            self.push_ptr(<const unsigned char*>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)

    cpdef object pop(self):
        """The oldest complete frame (bytes of 2 * frame_samples), or None."""
        if self._count == 0:
            return None
        frame = self._frames[self._head]
        self._frames[self._head] = None
        self._head += 1
        if self._head == self.capacity_frames:
            self._head = 0
        self._count -= 1
        return frame

    cpdef void clear(self):
        """Drop every complete frame and the partial one."""
        cdef Py_ssize_t i
        for i in range(self.capacity_frames):
            self._frames[i] = None
        self._head = 0
        self._count = 0
        self._filling = None
        self._fill = 0
