"""8 kHz -> 16 kHz half-band upsampler: Cython extension and Python twin, every test on both."""

from __future__ import annotations

import array
import importlib
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ._impls import load_extension, pick

EXTENSION = "antiphon.native._upsample"
TWIN = "antiphon.native._upsample_py"
IN_RATE = 8000
OUT_RATE = 16000


@pytest.fixture(params=["cython", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return pick(request, EXTENSION, TWIN)


@pytest.fixture
def cython_impl() -> ModuleType:
    return load_extension(EXTENSION)


@pytest.fixture
def python_impl() -> ModuleType:
    return importlib.import_module(TWIN)


def pcm16(values: npt.ArrayLike) -> bytes:
    return np.clip(np.rint(np.asarray(values, dtype=np.float64)), -32768, 32767).astype("<i2").tobytes()


def samples(data: bytes) -> npt.NDArray[np.float64]:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def noise(n: int, std: float, seed: int) -> bytes:
    return pcm16(np.random.default_rng(seed).normal(0.0, std, n))


def tone(freq_hz: float, n: int, amplitude: float = 16000.0) -> bytes:
    return pcm16(amplitude * np.sin(2 * np.pi * freq_hz * np.arange(n) / IN_RATE))


def chunked(up: Any, data: bytes, sizes: list[int]) -> bytes:
    """Feed data in chunks of the given sample counts (cycled), concatenating the output."""
    out = bytearray()
    pos, k = 0, 0
    while pos < len(data):
        step = 2 * sizes[k % len(sizes)]
        out += up.process(data[pos : pos + step])
        pos += step
        k += 1
    return bytes(out)


def level_db(y: npt.NDArray[np.float64], freq_hz: int) -> float:
    """Level of the freq_hz component of one second of 16 kHz output (1 Hz bins: integer tones do not leak)."""
    assert y.size == OUT_RATE
    spectrum = np.abs(np.fft.rfft(y)) / (OUT_RATE / 2)
    return float(20 * np.log10(max(spectrum[freq_hz], 1e-9)))


def steady_second(up: Any, freq_hz: int) -> npt.NDArray[np.float64]:
    """One second of output for a steady tone, after the filter has filled."""
    y = samples(up.process(tone(freq_hz, IN_RATE + 100)))
    return y[200 : 200 + OUT_RATE]


# ---- the filter -------------------------------------------------------------------


def test_taps_follow_the_documented_design(impl: ModuleType) -> None:
    """sinc(n/2) x Kaiser(47, beta 5.25), even phase in Q14; the centre pair takes the rounding remainder."""
    n = np.arange(47) - 23
    even = (np.sinc(n / 2) * np.kaiser(47, 5.25))[0::2]
    taps = np.rint(even * 16384).astype(np.int64)
    taps[11:13] += (16384 - taps.sum()) // 2
    assert tuple(int(t) for t in taps) == tuple(impl.TAPS)
    assert sum(impl.TAPS) == 16384  # DC gain exactly 1
    assert tuple(impl.TAPS) == tuple(reversed(impl.TAPS))  # linear phase
    assert 32768 * sum(abs(t) for t in impl.TAPS) + 8192 < 2**31  # the int32 sum cannot overflow


def test_output_is_twice_the_input(impl: ModuleType) -> None:
    up = impl.Upsampler2x()
    for n in (0, 1, 2, 23, 24, 160, 1023, 1024, 1025, 5000):
        assert len(up.process(noise(n, 3000, seed=n))) == 4 * n


def test_impulse_response_is_the_half_band_filter(impl: ModuleType) -> None:
    """An impulse comes out as the 47-tap filter: the taps on one phase, the copied sample on the other."""
    x = np.zeros(60)
    x[5] = 16384  # 1.0 in Q14, so the output shows the taps themselves
    y = np.frombuffer(impl.Upsampler2x().process(pcm16(x)), dtype="<i2")
    start = 2 * 5
    assert not y[:start].any()
    assert y[start : start + 47 : 2].tolist() == list(impl.TAPS)
    assert y[start + 1 : start + 47 : 2].tolist() == [0] * 11 + [16384] + [0] * 11
    assert not y[start + 47 :].any()


@pytest.mark.parametrize("freq_hz", [*range(300, 3401, 100), 3450])
def test_passband_is_flat(impl: ModuleType, freq_hz: int) -> None:
    gain = level_db(steady_second(impl.Upsampler2x(), freq_hz), freq_hz) - 20 * np.log10(16000)
    assert abs(gain) <= 0.5, f"{freq_hz} Hz: {gain:+.3f} dB"
    assert abs(gain) <= 0.05  # the design's ripple is under 0.02 dB


@pytest.mark.parametrize("freq_hz", [*range(300, 3401, 100), 1000])
def test_images_are_rejected(impl: ModuleType, freq_hz: int) -> None:
    """A tone at f also appears at 8 kHz - f (1 kHz -> 7 kHz, 3.4 kHz -> 4.6 kHz): at least 40 dB down."""
    y = steady_second(impl.Upsampler2x(), freq_hz)
    rejection = level_db(y, freq_hz) - level_db(y, OUT_RATE // 2 - freq_hz)
    assert rejection >= 40.0, f"{freq_hz} Hz: image only {rejection:.1f} dB down"
    assert rejection >= 50.0  # the design gives 56 dB; int16 rounding costs a little


def test_delay_matches_cross_correlation(impl: ModuleType) -> None:
    """Band-limited noise at 16 kHz, decimated to 8 kHz and upsampled back, lines up after delay_samples."""
    rng = np.random.default_rng(3)
    spectrum = np.fft.rfft(rng.normal(0.0, 1.0, 4 * OUT_RATE))
    spectrum[np.fft.rfftfreq(4 * OUT_RATE, 1 / OUT_RATE) > 3400] = 0
    reference = np.fft.irfft(spectrum)
    reference *= 8000 / np.max(np.abs(reference))
    up = impl.Upsampler2x()
    y = samples(up.process(pcm16(reference[0::2])))
    lags = np.arange(-5, 60)
    core = slice(100, reference.size - 100)
    corr = [np.dot(y[core], reference[core.start - lag : core.stop - lag]) for lag in lags]
    measured = int(lags[int(np.argmax(corr))])
    assert abs(measured - up.delay_samples) <= 1
    assert up.delay_samples == 23
    # Aligned, the output is the original to within the residual imaging and rounding.
    d = up.delay_samples
    error = y[core] - reference[core.start - d : core.stop - d]
    assert np.sqrt(np.mean(error**2)) < 0.01 * np.sqrt(np.mean(reference**2))


def test_dc_passes_unchanged(impl: ModuleType) -> None:
    for level in (-32768, -1, 1, 12345, 32767):
        y = np.frombuffer(impl.Upsampler2x().process(pcm16(np.full(100, level))), dtype="<i2")
        assert (y[48:] == level).all(), level


def test_full_scale_clips_without_wrapping(impl: ModuleType) -> None:
    # A full-scale square wave overshoots (Gibbs); the worst case drives every tap's product one way.
    square = np.where(np.arange(4000) % 8 < 4, 32767, -32768)
    worst = np.where(np.array(impl.TAPS) < 0, 32767, -32768)  # x[m - 23 .. m] against the taps: sum -1.24e9
    for x in (square, np.tile(worst, 50), -np.tile(worst, 50) - 1):
        y = samples(impl.Upsampler2x().process(pcm16(x)))
        # The exact result, in float64, clipped: a wrapped int32 or int16 would show as a jump of 65536.
        exact = np.convolve(np.concatenate((np.zeros(23), x)), np.array(impl.TAPS) / 16384, mode="valid")
        assert np.max(np.abs(y[0::2] - np.clip(exact, -32768, 32767))) <= 0.5
        assert y.max() <= 32767
        assert y.min() >= -32768
    y = samples(impl.Upsampler2x().process(pcm16(np.tile(worst, 50))))
    assert y[0::2][23::24].max() == -32768  # the aligned windows: clipped at the bottom, not wrapped


# ---- streaming --------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [[1], [2, 3], [160], [7, 0, 1, 300, 13], [1023, 1, 1025, 2048]])
def test_chunked_equals_one_shot(impl: ModuleType, sizes: list[int]) -> None:
    data = noise(6000, 6000, seed=11)
    assert chunked(impl.Upsampler2x(), data, sizes) == impl.Upsampler2x().process(data)


def test_random_chunking_equals_one_shot(impl: ModuleType) -> None:
    rng = np.random.default_rng(12)
    data = noise(20000, 9000, seed=12)
    sizes = [int(s) for s in rng.integers(0, 700, 200)]
    assert chunked(impl.Upsampler2x(), data, sizes) == impl.Upsampler2x().process(data)


def test_reset_restores_the_initial_state(impl: ModuleType) -> None:
    data = noise(500, 5000, seed=13)
    up = impl.Upsampler2x()
    first = up.process(data)
    assert up.process(data) != first  # the history of the first call shows
    up.reset()
    assert up.process(data) == first
    assert up.process(data) == impl.Upsampler2x().process(data + data)[len(first) :]


@pytest.mark.parametrize("data", [b"\x01", b"\x00" * 321, memoryview(b"abcde")[1:4]])
def test_odd_length_raises_and_consumes_nothing(impl: ModuleType, data: Any) -> None:
    good = noise(300, 5000, seed=14)
    up = impl.Upsampler2x()
    head = up.process(good[:200])
    with pytest.raises(ValueError, match=r"even number of bytes .* got \d+ bytes"):
        up.process(data)
    assert head + up.process(good[200:]) == impl.Upsampler2x().process(good)


def test_bytes_like_inputs(impl: ModuleType) -> None:
    data = noise(320, 5000, seed=15)
    expected = impl.Upsampler2x().process(data)
    for name, variant in (
        ("bytearray", bytearray(data)),
        ("memoryview", memoryview(data)),
        ("unaligned memoryview", memoryview(b"\x00" + data)[1:]),
        ("int16 array", np.frombuffer(data, dtype="<i2").copy()),
        ("2-D int16 array", np.frombuffer(data, dtype="<i2").reshape(2, -1).copy()),
        ("array('h')", array.array("h", data)),
    ):
        out = impl.Upsampler2x().process(variant)
        assert type(out) is bytes, name
        assert out == expected, name


def test_rejects_non_buffers_and_non_contiguous_buffers(impl: ModuleType) -> None:
    up = impl.Upsampler2x()
    with pytest.raises(TypeError):
        up.process(None)
    with pytest.raises(TypeError):
        up.process("abcd")
    with pytest.raises(BufferError):
        up.process(memoryview(b"abcdefgh")[::2])


# ---- the two implementations ------------------------------------------------------


def test_implementations_are_bit_exact(cython_impl: ModuleType, python_impl: ModuleType) -> None:
    assert tuple(cython_impl.TAPS) == tuple(python_impl.TAPS)
    rng = np.random.default_rng(16)
    cy, py = cython_impl.Upsampler2x(), python_impl.Upsampler2x()
    assert cy.delay_samples == py.delay_samples
    for k in range(300):
        # Quiet to far past full scale (clipped), so rounding and clipping are both exercised.
        std = float(10 ** rng.uniform(1, 5))
        chunk = noise(int(rng.integers(0, 1500)), std, seed=1000 + k)
        assert cy.process(chunk) == py.process(chunk), k
        if k % 97 == 96:
            cy.reset()
            py.reset()


def test_extension_is_built() -> None:
    """Skips when not built, but fails in CI (ANTIPHON_REQUIRE_EXTENSIONS=1)."""
    load_extension(EXTENSION)


def test_public_module_picks_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    from antiphon.native import _upsample_py, upsample

    try:
        monkeypatch.setenv("ANTIPHON_NO_EXTENSIONS", "1")
        upsample = importlib.reload(upsample)
        assert upsample.IMPLEMENTATION == "python"
        assert upsample.Upsampler2x is _upsample_py.Upsampler2x

        monkeypatch.delenv("ANTIPHON_NO_EXTENSIONS")
        upsample = importlib.reload(upsample)
        ext = load_extension(EXTENSION)
        assert upsample.IMPLEMENTATION == "cython"
        assert upsample.Upsampler2x is ext.Upsampler2x
    finally:
        monkeypatch.undo()
        importlib.reload(upsample)
