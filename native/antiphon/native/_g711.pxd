# C-level API of antiphon.native._g711, for other Cython modules to cimport
# (e.g. a future resampler/mixer that transcodes without a bytes round trip).
# PCM16 buffers are signed 16-bit little-endian; `nsamples` counts samples.
# The kernels never touch Python objects, so they are safe inside `with nogil`.

cdef unsigned char ulaw_encode_sample(int sample) noexcept nogil
cdef short ulaw_decode_sample(unsigned char code) noexcept nogil
cdef unsigned char alaw_encode_sample(int sample) noexcept nogil
cdef short alaw_decode_sample(unsigned char code) noexcept nogil

cdef void ulaw_encode_into(const unsigned char* pcm16, unsigned char* out,
                           Py_ssize_t nsamples) noexcept nogil
cdef void ulaw_decode_into(const unsigned char* codes, unsigned char* pcm16,
                           Py_ssize_t nsamples) noexcept nogil
cdef void alaw_encode_into(const unsigned char* pcm16, unsigned char* out,
                           Py_ssize_t nsamples) noexcept nogil
cdef void alaw_decode_into(const unsigned char* codes, unsigned char* pcm16,
                           Py_ssize_t nsamples) noexcept nogil
cdef void pcm16_to_float32_into(const unsigned char* pcm16, float* out,
                                Py_ssize_t nsamples) noexcept nogil
cdef void float32_to_pcm16_into(const float* samples, unsigned char* pcm16,
                                Py_ssize_t nsamples) noexcept nogil
