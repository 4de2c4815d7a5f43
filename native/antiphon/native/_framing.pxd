# C-level declaration of antiphon.native._framing.FrameRing, for other Cython
# modules to cimport (e.g. a future ingest stage that pushes decoded PCM16
# straight from a C buffer with push_ptr, without a bytes round trip).
# PCM16 is signed 16-bit little-endian; `nbytes` counts bytes.

cdef class FrameRing:
    cdef readonly Py_ssize_t frame_samples
    cdef readonly Py_ssize_t capacity_frames
    cdef Py_ssize_t _frame_bytes
    cdef list _frames          # circular buffer of completed frames (bytes)
    cdef Py_ssize_t _head      # index of the oldest completed frame
    cdef Py_ssize_t _count     # completed frames held
    cdef bytes _filling        # the frame being filled, not yet visible to Python code
    cdef Py_ssize_t _fill      # bytes written into _filling

    cdef int push_ptr(self, const unsigned char* data, Py_ssize_t nbytes) except -1
    cpdef void push(self, object pcm16) except *
    cpdef object pop(self)
    cpdef void clear(self)
