# C-level declaration of antiphon.native._upsample.Upsampler2x, for other Cython
# modules to cimport (e.g. a G.711 ingest stage that decodes into a C buffer and
# upsamples it with process_ptr, without a bytes round trip).
# PCM16 is signed 16-bit little-endian; `nsamples` counts input samples.

cdef enum:
    UPSAMPLE_TAPS = 24      # taps of the interpolating (even) output phase
    UPSAMPLE_HISTORY = 23   # input samples carried between calls: UPSAMPLE_TAPS - 1
    UPSAMPLE_BLOCK = 1024   # input samples per pass through the work buffer

cdef class Upsampler2x:
    # The last UPSAMPLE_HISTORY input samples, then the block being filtered.
    cdef short _buf[UPSAMPLE_HISTORY + UPSAMPLE_BLOCK]

    # Writes 2 * nsamples output samples (4 * nsamples bytes) to out.
    cdef void process_ptr(self, const unsigned char* pcm16, Py_ssize_t nsamples,
                          unsigned char* out) noexcept nogil
    cpdef bytes process(self, object pcm16)
    cpdef void reset(self)
