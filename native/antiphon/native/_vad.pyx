# cython: boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Stage-1 voice activity detection: energy over an adaptive floor, plus ZCR (Cython).

Per frame (any length, typically 10/20/30 ms): the DC-free energy in dBFS
(0 dBFS = a full-scale square wave; digital silence reads -100) is compared
with a noise floor that falls fast (time constant floor_fall_s) and rises
slowly (floor_rise_s), so it tracks the minimum of the recent energy. The
zero-crossing rate (crossings per sample, of the DC-free signal) is the second
cue: a frame whose ZCR lies in the voiced range gets its threshold lowered by
voiced_bonus_db, which can only add detections (recall), never remove them.

score = clamp(0.5 + (energy - floor - threshold) / ramp_db, 0, 1); a frame is
speech when score >= 0.5. The decision uses the floor from before the frame,
then the floor moves toward the frame's energy. It gates the expensive stage-2
VAD: it must miss little speech; noise it lets through, stage 2 rejects.

All sums are exact integers and the rest is the same sequence of double
operations and libm calls as the pure-Python twin (_vad_py.py), so both give
the same scores. A 20 ms frame costs well under a microsecond, with the GIL.
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from libc.math cimport exp, log10
from libc.stdint cimport int64_t


# A little-endian 16-bit load from any address (see _g711.pyx).
cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    static inline int16_t antiphon_vad_load_s16le(const unsigned char *p) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        return (int16_t)(uint16_t)(p[0] | (p[1] << 8));
    #else
        int16_t v;
        memcpy(&v, p, 2);
        return v;
    #endif
    }
    """
    short _load_s16le "antiphon_vad_load_s16le"(const unsigned char* p) noexcept nogil


cdef enum:
    SILENCE_DBFS = -100
cdef double FULL_SCALE_SQ = 1073741824.0  # 32768 ** 2


cdef class EnergyVad:
    """Energy + zero-crossing stage-1 VAD; process() returns a speech score in [0, 1]."""

    def __init__(
        self,
        int sample_rate_hz=16000,
        *,
        double threshold_db=5.0,
        double voiced_bonus_db=3.0,
        double ramp_db=10.0,
        double floor_rise_s=3.0,
        double floor_fall_s=0.02,
        double initial_floor_dbfs=-50.0,
        double min_floor_dbfs=-75.0,
        double zcr_voiced_min=0.01,
        double zcr_voiced_max=0.35,
    ):
        if sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
        if not threshold_db >= 0.0:
            raise ValueError(f"threshold_db must be >= 0, got {threshold_db}")
        if not voiced_bonus_db >= 0.0:
            raise ValueError(f"voiced_bonus_db must be >= 0, got {voiced_bonus_db}")
        if not ramp_db > 0.0:
            raise ValueError(f"ramp_db must be positive, got {ramp_db}")
        if not floor_rise_s > 0.0:
            raise ValueError(f"floor_rise_s must be positive, got {floor_rise_s}")
        if not floor_fall_s > 0.0:
            raise ValueError(f"floor_fall_s must be positive, got {floor_fall_s}")
        if not -100.0 <= min_floor_dbfs <= initial_floor_dbfs <= 0.0:
            raise ValueError(
                f"need -100 <= min_floor_dbfs <= initial_floor_dbfs <= 0, "
                f"got min_floor_dbfs={min_floor_dbfs}, initial_floor_dbfs={initial_floor_dbfs}"
            )
        if not 0.0 <= zcr_voiced_min <= zcr_voiced_max <= 1.0:
            raise ValueError(
                f"need 0 <= zcr_voiced_min <= zcr_voiced_max <= 1, "
                f"got zcr_voiced_min={zcr_voiced_min}, zcr_voiced_max={zcr_voiced_max}"
            )
        self.sample_rate_hz = sample_rate_hz
        self.threshold_db = threshold_db
        self.voiced_bonus_db = voiced_bonus_db
        self.ramp_db = ramp_db
        self.floor_rise_s = floor_rise_s
        self.floor_fall_s = floor_fall_s
        self.initial_floor_dbfs = initial_floor_dbfs
        self.min_floor_dbfs = min_floor_dbfs
        self.zcr_voiced_min = zcr_voiced_min
        self.zcr_voiced_max = zcr_voiced_max
        self._alpha_n = 0
        self.reset()

    @property
    def is_speech(self):
        """The last frame's decision: score >= 0.5."""
        return self.score >= 0.5

    cpdef void reset(self):
        """Forget the noise floor and the last frame (a new stream)."""
        self.noise_floor_dbfs = self.initial_floor_dbfs
        self.energy_dbfs = SILENCE_DBFS
        self.zcr = 0.0
        self.score = 0.0

    cdef double process_ptr(self, const unsigned char* pcm16, Py_ssize_t nsamples) noexcept nogil:
        # nsamples >= 2: the caller checks.
        cdef Py_ssize_t i
        cdef int64_t x, total = 0, sumsq = 0, d
        cdef int64_t n = nsamples
        cdef Py_ssize_t crossings = 0
        cdef bint neg, prev_neg
        cdef double e, db, thr, s, frame_s
        for i in range(nsamples):
            x = _load_s16le(pcm16 + 2 * i)
            total += x
            sumsq += x * x
        # Sign of (x - mean) without division: n * x - total, exact in int64.
        prev_neg = (n * _load_s16le(pcm16) - total) < 0
        for i in range(1, nsamples):
            d = n * _load_s16le(pcm16 + 2 * i) - total
            neg = d < 0
            crossings += neg != prev_neg
            prev_neg = neg
        e = (<double>sumsq - <double>total * <double>total / <double>n) / <double>n
        if e > 0.0:
            db = 10.0 * log10(e / FULL_SCALE_SQ)
            if db < SILENCE_DBFS:
                db = SILENCE_DBFS
        else:
            db = SILENCE_DBFS
        self.energy_dbfs = db
        self.zcr = <double>crossings / <double>(nsamples - 1)
        thr = self.threshold_db
        if self.zcr_voiced_min <= self.zcr <= self.zcr_voiced_max:
            thr = thr - self.voiced_bonus_db
        s = 0.5 + (db - self.noise_floor_dbfs - thr) / self.ramp_db
        if s < 0.0:
            s = 0.0
        elif s > 1.0:
            s = 1.0
        self.score = s
        if nsamples != self._alpha_n:
            frame_s = <double>nsamples / <double>self.sample_rate_hz
            self._alpha_rise = 1.0 - exp(-frame_s / self.floor_rise_s)
            self._alpha_fall = 1.0 - exp(-frame_s / self.floor_fall_s)
            self._alpha_n = nsamples
        if db < self.noise_floor_dbfs:
            self.noise_floor_dbfs += self._alpha_fall * (db - self.noise_floor_dbfs)
        else:
            self.noise_floor_dbfs += self._alpha_rise * (db - self.noise_floor_dbfs)
        if self.noise_floor_dbfs < self.min_floor_dbfs:
            self.noise_floor_dbfs = self.min_floor_dbfs
        return s

    cpdef double process(self, object frame_pcm16) except -1.0:
        """Score one frame of PCM16 (s16le, at least 2 samples): speech likelihood in [0, 1].

        Raises ValueError on an odd byte length or a frame under 2 samples.
        """
        cdef Py_buffer view
        cdef double s
        PyObject_GetBuffer(frame_pcm16, &view, PyBUF_SIMPLE)
        try:
            if view.len & 1:
                raise ValueError(
                    f"PCM16 input must have an even number of bytes (2 per sample), got {view.len} bytes"
                )
            if view.len < 4:
                raise ValueError(f"a VAD frame needs at least 2 samples, got {view.len >> 1}")
            s = self.process_ptr(<const unsigned char*>view.buf, view.len >> 1)
        finally:
            PyBuffer_Release(&view)
        return s
