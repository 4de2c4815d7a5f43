# C-level declaration of antiphon.native._vad.EnergyVad, for other Cython
# modules to cimport (score a frame straight from a C buffer with process_ptr).
# PCM16 is signed 16-bit little-endian; `nsamples` counts samples.

cdef class EnergyVad:
    cdef readonly int sample_rate_hz
    cdef readonly double threshold_db
    cdef readonly double voiced_bonus_db
    cdef readonly double ramp_db
    cdef readonly double floor_rise_s
    cdef readonly double floor_fall_s
    cdef readonly double initial_floor_dbfs
    cdef readonly double min_floor_dbfs
    cdef readonly double zcr_voiced_min
    cdef readonly double zcr_voiced_max
    cdef readonly double noise_floor_dbfs
    cdef readonly double energy_dbfs
    cdef readonly double zcr
    cdef readonly double score
    cdef Py_ssize_t _alpha_n       # frame length the cached coefficients are for
    cdef double _alpha_rise
    cdef double _alpha_fall

    cdef double process_ptr(self, const unsigned char* pcm16, Py_ssize_t nsamples) noexcept nogil
    cpdef double process(self, object frame_pcm16) except -1.0
    cpdef void reset(self)
