# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Streaming 2x upsampler, 8 kHz -> 16 kHz PCM16, with a half-band FIR (Cython).

The interpolation filter is a 47-tap half-band low-pass at 16 kHz (cut-off
4 kHz, gain 2): a Kaiser-windowed sinc (beta 5.25). Every other tap of a
half-band filter is zero and its centre tap is 1, so in polyphase form

    out[2m + 1] = x[m - 11]                       (a copy: no arithmetic at all)
    out[2m]     = sum(TAPS[i] * x[m - 23 + i]) / 2**14, i = 0..23

and the group delay is 23 output samples (1.4375 ms). TAPS is that 24-tap
symmetric phase in Q14, summing to exactly 16384, so DC passes unchanged.
Passband (0-3.4 kHz) ripple is under 0.02 dB and images from 4.6 kHz up are
at least 56 dB down. Arithmetic is exact int32 (worst case 32768 * sum(|TAPS|)
= 1.24e9 < 2**31), rounded half up by (acc + 2**13) >> 14 and clipped to
int16, so antiphon/native/_upsample_py.py, the numpy twin, matches bit for bit.
The last 23 input samples are kept between calls: chunked output equals
one-shot output, 2 output samples per input sample.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memmove, memset

# Q14 taps of the even output phase; the derivation is checked by tests/native/test_upsample.py.
TAPS = (
    -13, 37, -76, 137, -227, 355, -536, 797, -1192, 1864, -3339, 10385,
    10385, -3339, 1864, -1192, 797, -536, 355, -227, 137, -76, 37, -13,
)

cdef enum:
    TAP_SHIFT = 14
    ROUND_HALF = 1 << (TAP_SHIFT - 1)
    # out[2m + 1] is x[m - (UPSAMPLE_TAPS // 2 - 1)], at this index of the window x[m - 23 .. m].
    COPY_INDEX = UPSAMPLE_TAPS // 2

cdef short _TAPS[UPSAMPLE_TAPS]
_TAPS[:] = TAPS


# Little-endian 16-bit block load and pair store at any address (see _g711.pyx):
# on little-endian hosts both are plain memcpy, which gcc turns into moves.
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline void antiphon_ups_load_s16le(int16_t *dst, const unsigned char *src, Py_ssize_t n) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (Py_ssize_t i = 0; i < n; i++)
            dst[i] = (int16_t)(uint16_t)(src[2 * i] | (src[2 * i + 1] << 8));
    #else
        memcpy(dst, src, (size_t)n * 2);
    #endif
    }
    static inline void antiphon_ups_store_pair(unsigned char *dst, int a, int b) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        dst[0] = (unsigned char)(a & 0xFF); dst[1] = (unsigned char)((a >> 8) & 0xFF);
        dst[2] = (unsigned char)(b & 0xFF); dst[3] = (unsigned char)((b >> 8) & 0xFF);
    #else
        int16_t pair[2] = {(int16_t)a, (int16_t)b};
        memcpy(dst, pair, 4);
    #endif
    }
    """
    void _load_block "antiphon_ups_load_s16le"(short* dst, const unsigned char* src,
                                               Py_ssize_t n) noexcept nogil
    void _store_pair "antiphon_ups_store_pair"(unsigned char* dst, int a, int b) noexcept nogil


cdef class Upsampler2x:
    """Upsample a PCM16 mono stream from 8 kHz to 16 kHz, chunk by chunk (2 samples out per sample in)."""

    def __cinit__(self):
        memset(self._buf, 0, sizeof(self._buf))

    @property
    def delay_samples(self):
        """Group delay in output (16 kHz) samples: 23, i.e. 1.4375 ms."""
        return UPSAMPLE_HISTORY

    cpdef void reset(self):
        """Forget the filter history (a new stream): as if preceded by silence."""
        memset(self._buf, 0, sizeof(self._buf))

    cdef void process_ptr(self, const unsigned char* pcm16, Py_ssize_t nsamples,
                          unsigned char* out) noexcept nogil:
        cdef short* buf = self._buf
        cdef const short* win
        cdef Py_ssize_t n, m, i
        cdef int acc
        while nsamples > 0:
            n = nsamples if nsamples < UPSAMPLE_BLOCK else UPSAMPLE_BLOCK
            _load_block(buf + UPSAMPLE_HISTORY, pcm16, n)
            for m in range(n):
                win = buf + m  # x[m - 23 .. m]
                acc = ROUND_HALF
                # A fixed-length int16 x int16 -> int32 dot product: gcc -O3
                # vectorises it with pmaddwd (8 products per instruction).
                for i in range(UPSAMPLE_TAPS):
                    acc += <int>_TAPS[i] * <int>win[i]
                acc >>= TAP_SHIFT  # arithmetic shift (gcc, clang, MSVC): floor, like numpy
                if acc > 32767:
                    acc = 32767
                elif acc < -32768:
                    acc = -32768
                _store_pair(out, acc, win[COPY_INDEX])
                out += 4
            memmove(buf, buf + n, UPSAMPLE_HISTORY * sizeof(short))
            pcm16 += 2 * n
            nsamples -= n

    cpdef bytes process(self, object pcm16):
        """Upsample one chunk of PCM16 (s16le at 8 kHz, even byte length) to twice as many samples at 16 kHz.

        Raises ValueError on an odd byte length, and then consumes nothing.
        """
        cdef Py_buffer view
        cdef Py_ssize_t n
        cdef bytes out
        PyObject_GetBuffer(pcm16, &view, PyBUF_SIMPLE)
        try:
            if view.len & 1:
                raise ValueError(
                    f"PCM16 input must have an even number of bytes (2 per sample), got {view.len} bytes"
                )
            n = view.len >> 1
            out = PyBytes_FromStringAndSize(NULL, 4 * n)
            # The GIL stays held: a 20 ms chunk is well under a microsecond, and
            # releasing it would let two threads race on the filter history.
            self.process_ptr(<const unsigned char*>view.buf, n, <unsigned char*>PyBytes_AS_STRING(out))
        finally:
            PyBuffer_Release(&view)
        return out
