"""Streaming PCM16 resampling with soxr."""

from __future__ import annotations

import numpy as np
import pytest

from antiphon.voice.resample import SUPPORTED_RATES_HZ, StreamResampler

PAIRS = [(a, b) for a in SUPPORTED_RATES_HZ for b in SUPPORTED_RATES_HZ if a != b]


def tone(rate: int, seconds: float = 0.5, hz: float = 440.0) -> bytes:
    t = np.arange(round(rate * seconds)) / rate
    noise = np.random.default_rng(rate).normal(0, 300, t.size)
    return np.clip(np.rint(8000 * np.sin(2 * np.pi * hz * t) + noise), -32768, 32767).astype("<i2").tobytes()


def samples(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.int64)


@pytest.mark.parametrize(("in_rate", "out_rate"), PAIRS)
def test_length_ratio_and_chunked_equals_one_shot(in_rate: int, out_rate: int) -> None:
    data = tone(in_rate)
    r = StreamResampler(in_rate, out_rate)
    one_shot = r.process(data) + r.flush()
    assert len(one_shot) // 2 == round(len(data) // 2 * out_rate / in_rate)
    r = StreamResampler(in_rate, out_rate)
    step = 2 * 321  # odd-sized chunks, not aligned with anything
    chunked = b"".join(r.process(data[i : i + step]) for i in range(0, len(data), step)) + r.flush()
    assert len(chunked) == len(one_shot)
    # The same filter over the same samples; int16 rounding of the internal float stages may differ by an LSB or two.
    assert np.abs(samples(chunked) - samples(one_shot)).max() <= 3


@pytest.mark.parametrize(("in_rate", "out_rate"), [(8000, 16000), (48000, 16000), (22050, 16000), (16000, 24000)])
def test_tone_survives(in_rate: int, out_rate: int) -> None:
    r = StreamResampler(in_rate, out_rate)
    out = samples(r.process(tone(in_rate)) + r.flush()).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(out[out.size // 4 : 3 * out.size // 4]))
    freqs = np.fft.rfftfreq(out.size // 2, 1 / out_rate)
    assert abs(freqs[int(np.argmax(spectrum))] - 440.0) < 5.0


def test_equal_rates_pass_through() -> None:
    r = StreamResampler(16000, 16000)
    assert r.passthrough
    data = tone(16000)
    assert r.process(bytearray(data)) == data
    assert r.flush() == b""


@pytest.mark.parametrize("rate", [0, 44100, 16001, -8000, 16000.0, True])
def test_bad_rates_name_the_rate(rate: object) -> None:
    with pytest.raises(ValueError, match=rf"in_rate={rate!r} Hz is not supported"):
        StreamResampler(rate, 16000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=rf"out_rate={rate!r} Hz"):
        StreamResampler(16000, rate)  # type: ignore[arg-type]


def test_bad_quality() -> None:
    with pytest.raises(ValueError, match="quality='XQ'"):
        StreamResampler(8000, 16000, quality="XQ")  # type: ignore[arg-type]


def test_odd_length_raises() -> None:
    with pytest.raises(ValueError, match="even number of bytes"):
        StreamResampler(8000, 16000).process(b"\x00\x00\x00")


def test_flush_ends_the_stream_until_reset() -> None:
    r = StreamResampler(48000, 16000, quality="MQ")
    data = tone(48000)
    first = r.process(data) + r.flush()
    with pytest.raises(RuntimeError, match="after flush"):
        r.process(data)
    with pytest.raises(RuntimeError, match="twice"):
        r.flush()
    r.reset()
    assert r.process(data) + r.flush() == first


def test_empty_chunks() -> None:
    r = StreamResampler(8000, 16000)
    assert r.process(b"") == b""
    assert r.flush() == b""
