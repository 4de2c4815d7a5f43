"""Stage-1 VAD on deterministic synthetic signals: Cython extension and Python twin, every test on both."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from ._impls import load_extension, pick
from ._signals import FRAME, RATE, frames, syllable_envelope, to_pcm16, voiced, white_noise

EXTENSION = "antiphon.native._vad"
TWIN = "antiphon.native._vad_py"


@pytest.fixture(params=["cython", "python"])
def impl(request: pytest.FixtureRequest) -> ModuleType:
    return pick(request, EXTENSION, TWIN)


def decisions(vad: Any, pcm16: bytes, frame_samples: int = FRAME) -> npt.NDArray[np.bool_]:
    return np.array([vad.process(f) >= 0.5 for f in frames(pcm16, frame_samples)], dtype=bool)


def frame_envelope(n: int) -> npt.NDArray[np.float64]:
    env = syllable_envelope(n)
    return np.array([env[i : i + FRAME].mean() for i in range(0, n - FRAME + 1, FRAME)])


def frame_snr_db(speech: npt.NDArray[np.float64], noise_std: float) -> npt.NDArray[np.float64]:
    """Per 20 ms frame: the clean speech's power over the noise's, in dB (the ground truth)."""
    n = len(speech) // FRAME * FRAME
    power = np.mean(speech[:n].reshape(-1, FRAME) ** 2, axis=1)
    return np.asarray(10 * np.log10(np.maximum(power, 1e-12) / noise_std**2), dtype=np.float64)


def test_digital_silence_is_rejected(impl: ModuleType) -> None:
    vad = impl.EnergyVad()
    assert not decisions(vad, bytes(2 * RATE * 3)).any()
    assert vad.energy_dbfs == -100.0
    assert vad.noise_floor_dbfs == vad.min_floor_dbfs
    assert not vad.is_speech


@pytest.mark.parametrize("std", [10.0, 30.0, 100.0])
def test_low_white_noise_is_rejected(impl: ModuleType, std: float) -> None:
    """Below the initial floor (-50 dBFS), low noise is rejected from the first frame."""
    assert not decisions(impl.EnergyVad(), to_pcm16(white_noise(5, std, seed=1))).any()


@pytest.mark.parametrize("std", [300.0, 1000.0, 3000.0])
def test_steady_noise_is_rejected_once_the_floor_adapts(impl: ModuleType, std: float) -> None:
    """Louder steady noise may pass at first (stage 2 removes it), then the floor catches up."""
    d = decisions(impl.EnergyVad(), to_pcm16(white_noise(12, std, seed=2)))
    assert not d[int(7.0 * 50) :].any()  # adapted within 7 s (the floor rises ~3 dB/s here)


@pytest.mark.parametrize("f0_hz", [120.0, 150.0, 200.0])
@pytest.mark.parametrize("peak", [1000.0, 8000.0, 30000.0])
def test_voiced_syllables_are_detected(impl: ModuleType, f0_hz: float, peak: float) -> None:
    """High recall on speech-like frames; the silent gaps between syllables are rejected."""
    speech = voiced(4, f0_hz, peak, seed=int(f0_hz))
    d = decisions(impl.EnergyVad(), to_pcm16(speech + white_noise(4, 30, seed=5)))
    snr = frame_snr_db(speech, 30)
    assert d[snr >= 6].mean() >= 0.95
    assert d[snr >= 12].all()
    assert not d[snr < -10].any()


def test_voiced_speech_in_steady_noise(impl: ModuleType) -> None:
    """Speech about 15 dB over the noise, after the floor has learnt the noise."""
    noise = white_noise(8, 300, seed=6)
    speech = voiced(2, 140, 6000, seed=7)
    d = decisions(impl.EnergyVad(), to_pcm16(noise + np.concatenate([np.zeros(6 * RATE), speech])))
    assert not d[250:300].any()  # 5-6 s: noise only, floor adapted
    snr, tail = frame_snr_db(speech, 300), d[300:]
    assert snr.max() > 15
    assert tail[snr >= 10].all()
    assert tail[snr >= 6].mean() >= 0.95
    assert frame_envelope(2 * RATE)[tail].min() > 0.05  # detections sit on syllables


def test_voiced_cue_only_adds_detections(impl: ModuleType) -> None:
    """The ZCR cue lowers the threshold for voiced-looking frames; white noise gets no bonus."""
    vad = impl.EnergyVad(voiced_bonus_db=0.0)
    bonus = impl.EnergyVad(voiced_bonus_db=3.0)
    speech = to_pcm16(voiced(3, 150, 1500, seed=8) + white_noise(3, 100, seed=9))
    plain, helped = decisions(vad, speech), decisions(bonus, speech)
    assert (helped >= plain).all()
    assert helped.sum() > plain.sum()
    assert 0.01 <= bonus.zcr <= 0.6
    noise = to_pcm16(white_noise(1, 1000, seed=10))
    bonus.process(frames(noise)[0])
    assert bonus.zcr > 0.4  # white noise: about 0.5 crossings per sample


@pytest.mark.parametrize("frame_samples", [160, 320, 480])
def test_loud_onset_after_long_silence_is_detected_at_once(impl: ModuleType, frame_samples: int) -> None:
    vad = impl.EnergyVad()
    quiet = to_pcm16(white_noise(10, 20, seed=11))
    assert not decisions(vad, quiet, frame_samples).any()
    onset = to_pcm16(voiced(0.5, 180, 20000, seed=12, modulate=False))
    d = decisions(vad, onset, frame_samples)
    assert d[0]  # the very first frame of speech
    assert d.all()


def test_onset_after_digital_silence_is_detected(impl: ModuleType) -> None:
    vad = impl.EnergyVad()
    decisions(vad, bytes(2 * RATE * 5))
    assert decisions(vad, to_pcm16(voiced(0.2, 130, 3000, seed=13, modulate=False)))[:2].all()


def test_score_is_a_likelihood_in_range(impl: ModuleType) -> None:
    vad = impl.EnergyVad()
    scores = [vad.process(f) for f in frames(to_pcm16(voiced(2, 150, 8000, seed=14) + white_noise(2, 30, seed=15)))]
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert min(scores) == 0.0
    assert max(scores) == 1.0
    assert vad.score == scores[-1]
    assert vad.is_speech == (scores[-1] >= 0.5)


def test_reset_forgets_the_floor(impl: ModuleType) -> None:
    vad = impl.EnergyVad()
    decisions(vad, to_pcm16(white_noise(6, 3000, seed=16)))
    assert vad.noise_floor_dbfs > -30
    vad.reset()
    assert vad.noise_floor_dbfs == vad.initial_floor_dbfs
    assert vad.score == 0.0
    assert vad.process(to_pcm16(white_noise(0.02, 3000, seed=17))) == 1.0


def test_dc_offset_is_ignored(impl: ModuleType) -> None:
    """A constant offset (cheap microphones) is neither energy nor zero crossings."""
    noise = white_noise(3, 20, seed=18)
    plain, offset = impl.EnergyVad(), impl.EnergyVad()
    a = [plain.process(f) for f in frames(to_pcm16(noise))]
    b = [offset.process(f) for f in frames(to_pcm16(noise + 5000))]
    assert b == pytest.approx(a, abs=1e-9)
    assert not any(s >= 0.5 for s in b)


def test_both_implementations_agree(python_impl: ModuleType, cython_impl: ModuleType) -> None:
    rng = np.random.default_rng(19)
    parts = [
        np.zeros(RATE),
        white_noise(2, 50, seed=20),
        voiced(2, 160, 12000, seed=21) + white_noise(2, 50, seed=22),
        white_noise(3, 2000, seed=23),
        voiced(1, 125, 30000, seed=24, modulate=False),
        rng.uniform(-32768, 32767, RATE),
    ]
    pcm16 = to_pcm16(np.concatenate(parts))
    for frame_samples in (160, 320, 480, 2):
        py, cy = python_impl.EnergyVad(), cython_impl.EnergyVad()
        for f in frames(pcm16, frame_samples):
            s_py, s_cy = py.process(f), cy.process(f)
            assert (s_py >= 0.5) == (s_cy >= 0.5)
            assert s_py == pytest.approx(s_cy, abs=1e-12)
            assert py.noise_floor_dbfs == pytest.approx(cy.noise_floor_dbfs, abs=1e-9)
            assert py.zcr == cy.zcr


@pytest.mark.parametrize("data", [b"\x01", b"\x00" * 321, memoryview(b"abcde")[1:4]])
def test_odd_length_raises(impl: ModuleType, data: Any) -> None:
    with pytest.raises(ValueError, match=r"even number of bytes .* got \d+ bytes"):
        impl.EnergyVad().process(data)


@pytest.mark.parametrize("data", [b"", b"\x00\x01"])
def test_too_short_frame_raises(impl: ModuleType, data: bytes) -> None:
    with pytest.raises(ValueError, match="at least 2 samples"):
        impl.EnergyVad().process(data)


def test_bytes_like_inputs(impl: ModuleType) -> None:
    frame = frames(to_pcm16(voiced(0.02, 150, 8000, seed=25, modulate=False)))[0]
    expected = impl.EnergyVad().process(frame)
    for variant in (
        bytearray(frame),
        memoryview(frame),
        memoryview(b"\x00" + frame)[1:],  # odd start address
        np.frombuffer(frame, dtype="<i2").copy(),
    ):
        assert impl.EnergyVad().process(variant) == expected
    with pytest.raises(TypeError):
        impl.EnergyVad().process(None)
    with pytest.raises(BufferError):
        impl.EnergyVad().process(memoryview(frame)[::2])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sample_rate_hz": 0}, "sample_rate_hz"),
        ({"threshold_db": -1.0}, "threshold_db"),
        ({"voiced_bonus_db": -1.0}, "voiced_bonus_db"),
        ({"ramp_db": 0.0}, "ramp_db"),
        ({"floor_rise_s": 0.0}, "floor_rise_s"),
        ({"floor_fall_s": -1.0}, "floor_fall_s"),
        ({"initial_floor_dbfs": -90.0}, "initial_floor_dbfs"),
        ({"min_floor_dbfs": -120.0}, "min_floor_dbfs"),
        ({"zcr_voiced_min": 0.5, "zcr_voiced_max": 0.2}, "zcr_voiced_min"),
        ({"threshold_db": float("nan")}, "threshold_db"),
    ],
)
def test_bad_parameters(impl: ModuleType, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        impl.EnergyVad(**kwargs)


@pytest.fixture
def cython_impl() -> ModuleType:
    return load_extension(EXTENSION)


@pytest.fixture
def python_impl() -> ModuleType:
    return importlib.import_module(TWIN)


def test_extension_is_built() -> None:
    """Skips when not built, but fails in CI (ANTIPHON_REQUIRE_EXTENSIONS=1)."""
    load_extension(EXTENSION)


def test_public_module_picks_implementation(monkeypatch: pytest.MonkeyPatch) -> None:
    from antiphon.native import _vad_py, vad

    try:
        monkeypatch.setenv("ANTIPHON_NO_EXTENSIONS", "1")
        vad = importlib.reload(vad)
        assert vad.IMPLEMENTATION == "python"
        assert vad.EnergyVad is _vad_py.EnergyVad

        monkeypatch.delenv("ANTIPHON_NO_EXTENSIONS")
        vad = importlib.reload(vad)
        ext = load_extension(EXTENSION)
        assert vad.IMPLEMENTATION == "cython"
        assert vad.EnergyVad is ext.EnergyVad
    finally:
        monkeypatch.undo()
        importlib.reload(vad)
