"""G.711 codecs and PCM16/float32 helpers: Cython extension and Python twin.

CPython 3.11's audioop (Sun g711.c algorithm, deprecated, gone in 3.13) is the
bit-exact oracle for the codecs.
"""

from __future__ import annotations

import array
import importlib
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from .conftest import load_extension

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_PCM16 = np.arange(-32768, 32768, dtype="<i2").tobytes()  # every int16 value
ALL_CODES = bytes(range(256))
LAWS = ["ulaw", "alaw"]
ORACLE_ENCODE = {"ulaw": audioop.lin2ulaw, "alaw": audioop.lin2alaw}
ORACLE_DECODE = {"ulaw": audioop.ulaw2lin, "alaw": audioop.alaw2lin}
# Sizes around the extension's GIL-release threshold (4096 samples), a 20 ms frame,
# and lengths that leave a tail after its 4-samples-at-a-time decode loop.
SIZES = [1, 2, 159, 160, 161, 4095, 4096, 4097, 8000]


def encoder(impl: ModuleType, law: str) -> Callable[[Any], bytes]:
    fn: Callable[[Any], bytes] = getattr(impl, f"{law}_encode")
    return fn


def decoder(impl: ModuleType, law: str) -> Callable[[Any], bytes]:
    fn: Callable[[Any], bytes] = getattr(impl, f"{law}_decode")
    return fn


def pcm16(values: Any) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


def ints(data: bytes) -> list[int]:
    return [int(v) for v in np.frombuffer(data, dtype="<i2")]


def speech_like(n: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 8000.0
    x = 9000 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 3000, n)
    return pcm16(np.clip(x, -32768, 32767))


# ---- codecs: bit-exact with the reference -------------------------------------


@pytest.mark.parametrize("law", LAWS)
def test_encode_every_int16_matches_audioop(impl: ModuleType, law: str) -> None:
    assert encoder(impl, law)(ALL_PCM16) == ORACLE_ENCODE[law](ALL_PCM16, 2)


@pytest.mark.parametrize("law", LAWS)
def test_decode_every_code_matches_audioop(impl: ModuleType, law: str) -> None:
    assert decoder(impl, law)(ALL_CODES) == ORACLE_DECODE[law](ALL_CODES, 2)


@pytest.mark.parametrize("law", LAWS)
def test_round_trip_error_is_bounded(impl: ModuleType, law: str) -> None:
    x = np.arange(-32768, 32768, dtype=np.int64)
    y = np.frombuffer(decoder(impl, law)(encoder(impl, law)(ALL_PCM16)), dtype="<i2").astype(np.int64)
    # About half a quantisation step: steps double per segment (at most ~|x|/16
    # wide, 16 at the smallest); the worst case is the clipped extreme -32768,
    # decoded as -32124 (mu-law) or -32256 (A-law).
    assert np.all(np.abs(y - x) <= 8 + np.abs(x) // 16)
    assert int(np.abs(y - x).max()) <= {"ulaw": 644, "alaw": 512}[law]


@pytest.mark.parametrize("law", LAWS)
def test_decoded_values_are_fixed_points(impl: ModuleType, law: str) -> None:
    decoded = decoder(impl, law)(ALL_CODES)
    assert decoder(impl, law)(encoder(impl, law)(decoded)) == decoded


@pytest.mark.parametrize("law", LAWS)
@pytest.mark.parametrize("nsamples", SIZES)
def test_sizes_around_gil_threshold_match_audioop(impl: ModuleType, law: str, nsamples: int) -> None:
    data = speech_like(nsamples, seed=nsamples)
    encoded = encoder(impl, law)(data)
    assert encoded == ORACLE_ENCODE[law](data, 2)
    assert decoder(impl, law)(encoded) == ORACLE_DECODE[law](encoded, 2)


def test_implementations_agree(cython_impl: ModuleType, python_impl: ModuleType) -> None:
    data = speech_like(8000)
    for law in LAWS:
        assert encoder(cython_impl, law)(ALL_PCM16) == encoder(python_impl, law)(ALL_PCM16)
        assert encoder(cython_impl, law)(data) == encoder(python_impl, law)(data)
        assert decoder(cython_impl, law)(ALL_CODES) == decoder(python_impl, law)(ALL_CODES)
    rng = np.random.default_rng(1)
    floats = np.concatenate(
        [
            rng.normal(0, 0.7, 20000),
            (np.arange(-32768, 32768) + 0.5) / 32768,  # every tie, exact in float32
            np.sign(rng.normal(size=20000)) * 10.0 ** rng.uniform(-40, 3, 20000),  # tiny to huge
        ]
    ).astype(np.float32)
    assert cython_impl.float32_to_pcm16(floats) == python_impl.float32_to_pcm16(floats)
    np.testing.assert_array_equal(
        cython_impl.pcm16_to_float32(ALL_PCM16), python_impl.pcm16_to_float32(ALL_PCM16), strict=True
    )


def test_concurrent_calls_release_gil_safely(impl: ModuleType) -> None:
    # Big buffers run with the GIL released in the extension: results must not
    # depend on what other threads do meanwhile.
    data = speech_like(40000)
    expected = {law: encoder(impl, law)(data) for law in LAWS}
    floats = impl.pcm16_to_float32(data)
    with ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [pool.submit(encoder(impl, law), data) for law in LAWS * 4]
        jobs_float = [pool.submit(impl.float32_to_pcm16, floats) for _ in range(4)]
        assert [job.result() for job in jobs] == [expected[law] for law in LAWS * 4]
        assert all(job.result() == data for job in jobs_float)


# ---- input handling -------------------------------------------------------------


@pytest.mark.parametrize("law", LAWS)
def test_empty_input(impl: ModuleType, law: str) -> None:
    assert encoder(impl, law)(b"") == b""
    assert decoder(impl, law)(b"") == b""
    assert encoder(impl, law)(memoryview(b"")) == b""


@pytest.mark.parametrize("fn", ["ulaw_encode", "alaw_encode", "pcm16_to_float32"])
@pytest.mark.parametrize("data", [b"\x01", b"\x00" * 321, bytearray(3), memoryview(b"abcde")[1:4]])
def test_odd_length_pcm16_raises(impl: ModuleType, fn: str, data: Any) -> None:
    with pytest.raises(ValueError, match=r"even number of bytes .* got \d+ bytes"):
        getattr(impl, fn)(data)


def _pcm16_variants(data: bytes) -> Iterator[tuple[str, Any]]:
    yield "bytearray", bytearray(data)
    yield "memoryview", memoryview(data)
    # Odd start address: the extension must not assume 2-byte alignment.
    yield "unaligned memoryview", memoryview(b"\x00" + data)[1:]
    yield "int16 array", np.frombuffer(data, dtype="<i2").copy()
    yield "2-D int16 array", np.frombuffer(data, dtype="<i2").reshape(2, -1).copy()
    yield "array('h')", array.array("h", data)


@pytest.mark.parametrize("law", LAWS)
def test_bytes_like_inputs(impl: ModuleType, law: str) -> None:
    data = speech_like(320)
    expected = encoder(impl, law)(data)
    for name, variant in _pcm16_variants(data):
        out = encoder(impl, law)(variant)
        assert type(out) is bytes, name
        assert out == expected, name
    np.testing.assert_array_equal(impl.pcm16_to_float32(memoryview(b"\x00" + data)[1:]), impl.pcm16_to_float32(data))
    decoded = decoder(impl, law)(expected)
    for variant in (bytearray(expected), memoryview(expected), np.frombuffer(expected, dtype=np.uint8)):
        out = decoder(impl, law)(variant)
        assert type(out) is bytes
        assert out == decoded


@pytest.mark.parametrize("fn", ["ulaw_encode", "ulaw_decode", "alaw_encode", "alaw_decode", "pcm16_to_float32"])
def test_rejects_non_buffers_and_non_contiguous_buffers(impl: ModuleType, fn: str) -> None:
    with pytest.raises(TypeError):
        getattr(impl, fn)(None)
    with pytest.raises(TypeError):
        getattr(impl, fn)("abcd")
    with pytest.raises(BufferError):
        getattr(impl, fn)(memoryview(b"abcdefgh")[::2])


# ---- float conversion ------------------------------------------------------------


def test_pcm16_to_float32_every_value(impl: ModuleType) -> None:
    out = impl.pcm16_to_float32(ALL_PCM16)
    assert out.dtype == np.float32
    assert out.shape == (65536,)
    np.testing.assert_array_equal(out, np.arange(-32768, 32768) / 32768.0)
    assert out.min() == -1.0
    assert out.max() < 1.0
    # A fresh writable array, not a view into the caller's buffer.
    assert out.flags.writeable
    assert out.flags.c_contiguous
    source = bytearray(b"\x00\x40")
    fresh = impl.pcm16_to_float32(source)
    source[1] = 0
    assert fresh[0] == 0.5


def test_pcm16_to_float32_empty(impl: ModuleType) -> None:
    out = impl.pcm16_to_float32(b"")
    assert out.dtype == np.float32
    assert out.shape == (0,)


def test_float_round_trip_is_exact(impl: ModuleType) -> None:
    assert impl.float32_to_pcm16(impl.pcm16_to_float32(ALL_PCM16)) == ALL_PCM16


@pytest.mark.filterwarnings("error")
def test_float32_to_pcm16_clips(impl: ModuleType) -> None:
    x = np.array([1.0, 1.5, 1e30, np.inf, 3.4e38, -1.0, -1.5, -1e30, -np.inf, 32767 / 32768, -1 + 2**-16])
    out = ints(impl.float32_to_pcm16(x.astype(np.float32)))
    assert out == [32767] * 5 + [-32768] * 4 + [32767, -32768]


@pytest.mark.filterwarnings("error")
def test_float32_to_pcm16_nan_is_silence(impl: ModuleType) -> None:
    nans = np.array([np.nan, -np.nan, 0.5, np.nan], dtype=np.float32)
    nans[3:] = np.frombuffer(np.uint32(0x7FC0_1234).tobytes(), dtype=np.float32)  # NaN with payload
    assert ints(impl.float32_to_pcm16(nans)) == [0, 0, 16384, 0]


def test_float32_to_pcm16_rounds_half_to_even(impl: ModuleType) -> None:
    steps = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49, 0.51, -0.51, 32766.5, -32767.5])
    out = ints(impl.float32_to_pcm16((steps / 32768).astype(np.float32)))
    assert out == [0, 2, 2, 0, -2, -2, 0, 1, -1, 32766, -32768]


def test_float32_to_pcm16_accepts_array_likes(impl: ModuleType) -> None:
    x = np.random.default_rng(2).uniform(-1.2, 1.2, 1000).astype(np.float32)
    expected = impl.float32_to_pcm16(x)
    assert type(expected) is bytes
    assert len(expected) == 2000
    assert impl.float32_to_pcm16(x.astype(np.float64)) == expected  # converted to float32 first
    assert impl.float32_to_pcm16(x.tolist()) == expected
    assert impl.float32_to_pcm16(x.reshape(10, 100)) == expected  # flattened in C order
    strided = np.empty(2000, dtype=np.float32)
    strided[::2] = x
    assert impl.float32_to_pcm16(strided[::2]) == expected
    assert impl.float32_to_pcm16([]) == b""
    assert impl.float32_to_pcm16(np.empty(0, dtype=np.float32)) == b""


# ---- the public module and the build ----------------------------------------------


def test_extension_is_built() -> None:
    """Skips when not built, but fails in CI (ANTIPHON_REQUIRE_EXTENSIONS=1)."""
    load_extension()


def test_pxd_declarations_are_compiled_in() -> None:
    """The .pxd beside the .pyx is used: its C API is exported for other native modules to cimport."""
    ext = load_extension()
    capi = getattr(ext, "__pyx_capi__", {})
    assert {"ulaw_encode_into", "alaw_decode_into", "float32_to_pcm16_into"} <= set(capi)


def test_public_module_picks_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    from antiphon.native import _g711_py, g711

    try:
        monkeypatch.setenv("ANTIPHON_NO_EXTENSIONS", "1")
        g711 = importlib.reload(g711)
        assert g711.IMPLEMENTATION == "python"
        assert g711.ulaw_encode is _g711_py.ulaw_encode
        assert g711.float32_to_pcm16 is _g711_py.float32_to_pcm16

        monkeypatch.delenv("ANTIPHON_NO_EXTENSIONS")
        g711 = importlib.reload(g711)
        ext = load_extension()
        assert g711.IMPLEMENTATION == "cython"
        assert g711.ulaw_encode is ext.ulaw_encode
        assert g711.pcm16_to_float32 is ext.pcm16_to_float32
    finally:
        monkeypatch.undo()
        importlib.reload(g711)  # back to what the rest of the session expects


def test_public_module_round_trip() -> None:
    from antiphon.native import g711

    data = speech_like(160)
    assert g711.ulaw_decode(g711.ulaw_encode(data)) == audioop.ulaw2lin(audioop.lin2ulaw(data, 2), 2)
    assert g711.alaw_decode(g711.alaw_encode(data)) == audioop.alaw2lin(audioop.lin2alaw(data, 2), 2)
    assert g711.float32_to_pcm16(g711.pcm16_to_float32(data)) == data
