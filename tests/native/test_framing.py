"""Frame ring: Cython extension and Python twin, every test on both."""

from __future__ import annotations

import array
import importlib
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from ._impls import load_extension, pick

EXTENSION = "antiphon.native._framing"
TWIN = "antiphon.native._framing_py"


@pytest.fixture(params=["cython", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return pick(request, EXTENSION, TWIN)


def ramp(nsamples: int, start: int = 0) -> bytes:
    """Distinct, recognisable samples (wrapping int16), so a misplaced one shows."""
    return ((np.arange(start, start + nsamples) * 7919) % 65536 - 32768).astype("<i2").tobytes()


def drain(ring: Any) -> list[bytes]:
    out = []
    while (frame := ring.pop()) is not None:
        out.append(frame)
    return out


@pytest.mark.parametrize("frame_samples", [160, 320, 480])
def test_chunks_of_every_size_give_exact_frames(impl: ModuleType, frame_samples: int) -> None:
    for chunk in range(1, frame_samples + 2):
        data = ramp(3 * frame_samples + chunk)
        ring = impl.FrameRing(frame_samples, 8)
        frames: list[bytes] = []
        for pos in range(0, len(data), 2 * chunk):
            ring.push(data[pos : pos + 2 * chunk])
            frames += drain(ring)
        assert all(len(f) == 2 * frame_samples for f in frames), chunk
        whole = len(data) // 2 // frame_samples
        assert len(frames) == whole, chunk
        assert b"".join(frames) == data[: 2 * whole * frame_samples], chunk
        assert ring.pending_samples == len(data) // 2 - whole * frame_samples
        assert ring.available_frames == 0


def test_random_chunking_matches_input_prefix(impl: ModuleType) -> None:
    rng = np.random.default_rng(7)
    ring = impl.FrameRing(320, 4)
    sent = bytearray()
    got: list[bytes] = []
    for _ in range(500):
        chunk = ramp(int(rng.integers(0, 700)), start=len(sent) // 2)
        ring.push(chunk)
        sent += chunk
        got += drain(ring)
    assert b"".join(got) == bytes(sent[: len(got) * 640])
    assert ring.pending_samples == len(sent) // 2 - len(got) * 320


def test_counters_and_pop_order(impl: ModuleType) -> None:
    ring = impl.FrameRing(4, 3)
    assert ring.frame_samples == 4
    assert ring.capacity_frames == 3
    assert ring.pop() is None
    ring.push(ramp(10))
    assert (ring.available_frames, ring.pending_samples, len(ring)) == (2, 2, 2)
    assert ring.pop() == ramp(4)
    assert ring.pop() == ramp(4, start=4)
    assert ring.pop() is None
    ring.push(ramp(2, start=10))
    assert (ring.available_frames, ring.pending_samples) == (1, 0)
    assert ring.pop() == ramp(4, start=8)
    ring.push(b"")
    assert (ring.available_frames, ring.pending_samples) == (0, 0)


def test_wraps_around_many_times(impl: ModuleType) -> None:
    ring = impl.FrameRing(3, 2)
    for i in range(50):
        ring.push(ramp(6, start=6 * i))
        assert ring.pop() == ramp(3, start=6 * i)
        assert ring.pop() == ramp(3, start=6 * i + 3)


@pytest.mark.parametrize("data", [b"\x01", b"\x00" * 321, bytearray(3), memoryview(b"abcde")[1:4]])
def test_odd_length_raises_and_consumes_nothing(impl: ModuleType, data: Any) -> None:
    ring = impl.FrameRing(4, 2)
    ring.push(ramp(3))
    with pytest.raises(ValueError, match=r"even number of bytes .* got \d+ bytes"):
        ring.push(data)
    assert (ring.available_frames, ring.pending_samples) == (0, 3)


def test_capacity_overflow_raises_and_consumes_nothing(impl: ModuleType) -> None:
    ring = impl.FrameRing(160, 2)
    ring.push(ramp(300))
    with pytest.raises(OverflowError, match=r"frame ring full: pushing 21 samples onto 300 held .* capacity_frames=2"):
        ring.push(ramp(21))
    assert (ring.available_frames, ring.pending_samples) == (1, 140)
    ring.push(ramp(20, start=300))  # exactly full is fine
    assert (ring.available_frames, ring.pending_samples) == (2, 0)
    with pytest.raises(OverflowError):
        ring.push(ramp(1))
    assert b"".join(drain(ring)) == ramp(320)
    ring.push(ramp(320))  # room again after popping
    with pytest.raises(OverflowError):
        impl.FrameRing(160, 2).push(ramp(321))  # one push bigger than the whole ring


def test_clear(impl: ModuleType) -> None:
    ring = impl.FrameRing(4, 4)
    ring.push(ramp(11))
    ring.clear()
    assert (ring.available_frames, ring.pending_samples) == (0, 0)
    assert ring.pop() is None
    ring.push(ramp(4, start=100))
    assert ring.pop() == ramp(4, start=100)


def test_frames_are_copied_once_at_push_and_handed_out_as_is(impl: ModuleType) -> None:
    """pop() returns immutable bytes owned by the ring: later changes to the source do not show."""
    source = bytearray(ramp(10))
    ring = impl.FrameRing(4, 4)
    ring.push(source)
    source[:] = b"\x00" * len(source)
    ring.push(bytearray(ramp(2, start=10)))
    frames = drain(ring)
    assert all(type(f) is bytes for f in frames)
    assert b"".join(frames) == ramp(12)


def _pcm16_variants(data: bytes) -> list[tuple[str, Any]]:
    return [
        ("bytearray", bytearray(data)),
        ("memoryview", memoryview(data)),
        ("unaligned memoryview", memoryview(b"\x00" + data)[1:]),
        ("int16 array", np.frombuffer(data, dtype="<i2").copy()),
        ("2-D int16 array", np.frombuffer(data, dtype="<i2").reshape(2, -1).copy()),
        ("array('h')", array.array("h", data)),
    ]


def test_bytes_like_inputs(impl: ModuleType) -> None:
    data = ramp(320)
    for name, variant in _pcm16_variants(data):
        ring = impl.FrameRing(160, 2)
        ring.push(variant)
        assert b"".join(drain(ring)) == data, name


def test_rejects_non_buffers_and_non_contiguous_buffers(impl: ModuleType) -> None:
    ring = impl.FrameRing(4, 2)
    with pytest.raises(TypeError):
        ring.push(None)
    with pytest.raises(TypeError):
        ring.push("abcd")
    with pytest.raises(BufferError):
        ring.push(memoryview(b"abcdefgh")[::2])
    assert (ring.available_frames, ring.pending_samples) == (0, 0)


@pytest.mark.parametrize(("frame_samples", "capacity_frames"), [(0, 1), (-1, 1), (160, 0), (160, -5)])
def test_bad_sizes(impl: ModuleType, frame_samples: int, capacity_frames: int) -> None:
    with pytest.raises(ValueError, match="must be positive"):
        impl.FrameRing(frame_samples, capacity_frames)


def test_extension_is_built() -> None:
    """Skips when not built, but fails in CI (ANTIPHON_REQUIRE_EXTENSIONS=1)."""
    load_extension(EXTENSION)


def test_public_module_picks_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    from antiphon.native import _framing_py, framing

    try:
        monkeypatch.setenv("ANTIPHON_NO_EXTENSIONS", "1")
        framing = importlib.reload(framing)
        assert framing.IMPLEMENTATION == "python"
        assert framing.FrameRing is _framing_py.FrameRing

        monkeypatch.delenv("ANTIPHON_NO_EXTENSIONS")
        framing = importlib.reload(framing)
        ext = load_extension(EXTENSION)
        assert framing.IMPLEMENTATION == "cython"
        assert framing.FrameRing is ext.FrameRing
    finally:
        monkeypatch.undo()
        importlib.reload(framing)


@pytest.mark.parametrize(("frame_ms", "rate", "expected"), [(10, 16000, 160), (20, 16000, 320), (30, 16000, 480)])
def test_frame_samples_for(frame_ms: int, rate: int, expected: int) -> None:
    from antiphon.native.framing import frame_samples_for

    assert frame_samples_for(frame_ms, rate) == expected
    with pytest.raises(ValueError, match="frame_ms"):
        frame_samples_for(25, rate)
    with pytest.raises(ValueError, match="sample_rate_hz=11025"):
        frame_samples_for(frame_ms, 11025)
