"""The endpointer and barge-in detector, driven by injected audio time (no clock, no sleeps)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from antiphon.voice.endpointer import (
    BargeIn,
    BargeInDetector,
    BargeInMode,
    BargeInSettings,
    Endpointer,
    EndpointEvent,
    SpeechStarted,
    SpeechStopped,
    State,
    VadSettings,
)

WIN = 32  # ms per window (512 samples at 16 kHz)
SR = 16_000


def run(ep: Endpointer, probs: Sequence[float | None], start_ms: int = 0) -> list[tuple[int, EndpointEvent]]:
    """Feed one window per probability; returns (window index, event)."""
    events = []
    for i, p in enumerate(probs):
        event = ep.push(start_ms + (i + 1) * WIN, p)
        if event is not None:
            events.append((i, event))
    return events


def windows(*parts: tuple[float | None, int]) -> list[float | None]:
    """(probability, window count) pairs, concatenated."""
    return [p for p, n in parts for _ in range(n)]


def test_speech_starts_after_min_speech_with_prefix() -> None:
    ep = Endpointer(VadSettings(min_speech_ms=250, prefix_ms=300))
    events = run(ep, windows((0.0, 20), (0.9, 10)))
    assert len(events) == 1
    index, started = events[0]
    assert isinstance(started, SpeechStarted)
    # speech begins at window 20 (640 ms); 8 windows = 256 ms >= 250 ms confirm it at window 27
    assert started.audio_ms == 640
    assert index == 27
    assert started.detected_ms == 28 * WIN
    assert started.start_sample == (640 - 300) * 16
    assert ep.state is State.SPEAKING


def test_prefix_clamped_at_stream_start() -> None:
    ep = Endpointer(VadSettings(prefix_ms=300))
    (_, started), *_ = run(ep, windows((0.0, 2), (0.9, 10)))
    assert isinstance(started, SpeechStarted)
    assert started.start_sample == 0


def test_ends_after_silence_ms_and_hangover_keeps_short_pauses() -> None:
    ep = Endpointer(VadSettings(silence_ms=500, prefix_ms=0))
    # speech 640 ms, pause 448 ms (< 500: hangover), speech 320 ms, silence
    probs = windows((0.0, 10), (0.9, 20), (0.1, 14), (0.9, 10), (0.0, 30))
    events = run(ep, probs)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechStopped]
    (_, started), (index, stopped) = events
    assert isinstance(started, SpeechStarted)
    assert isinstance(stopped, SpeechStopped)
    assert stopped.reason == "silence"
    last_speech_end = (10 + 20 + 14 + 10) * WIN
    assert stopped.audio_ms == last_speech_end
    assert stopped.start_sample == 320 * 16
    assert stopped.end_sample == last_speech_end * 16
    # the stop fires at the first window whose end is >= 500 ms after the speech end
    assert stopped.detected_ms == (index + 1) * WIN
    assert stopped.detected_ms - last_speech_end >= 500
    assert stopped.detected_ms - WIN - last_speech_end < 500
    assert ep.state is State.SILENCE


def test_two_utterances_and_prefix_never_overlaps_the_previous_one() -> None:
    ep = Endpointer(VadSettings(silence_ms=200, prefix_ms=1000))
    events = run(ep, windows((0.9, 20), (0.0, 8), (0.9, 20), (0.0, 10)))
    kinds = [type(e) for _, e in events]
    assert kinds == [SpeechStarted, SpeechStopped, SpeechStarted, SpeechStopped]
    first_stop = events[1][1]
    second_start = events[2][1]
    assert isinstance(first_stop, SpeechStopped)
    assert isinstance(second_start, SpeechStarted)
    assert second_start.start_sample == first_stop.end_sample  # clamped, not 1000 ms back


def test_max_turn_forces_an_end_then_a_new_turn_can_start() -> None:
    ep = Endpointer(VadSettings(max_turn_ms=1000, min_speech_ms=64, prefix_ms=0))
    events = run(ep, windows((0.9, 80)))
    stops = [e for _, e in events if isinstance(e, SpeechStopped)]
    assert stops
    first = stops[0]
    assert first.reason == "max_turn"
    assert first.audio_ms == 32 * WIN  # first window end >= 1000 ms after speech start at 0
    assert first.end_sample == first.audio_ms * 16
    # the speech goes on: after min_speech again, a new turn starts where the old one was cut
    starts = [e for _, e in events if isinstance(e, SpeechStarted)]
    assert len(starts) >= 2
    assert starts[1].audio_ms == first.audio_ms
    assert starts[1].start_sample == first.end_sample


@pytest.mark.parametrize("burst", [1, 5, 7])
def test_false_starts_are_ignored(burst: int) -> None:
    ep = Endpointer(VadSettings(min_speech_ms=250))  # 8 windows
    events = run(ep, windows((0.0, 5), (0.9, burst), (0.0, 5), (0.9, burst), (0.0, 40)))
    assert events == []
    assert ep.state is State.SILENCE


def test_stage1_rejection_counts_as_silence() -> None:
    ep = Endpointer(VadSettings(min_speech_ms=96, silence_ms=96, prefix_ms=0))
    events = run(ep, windows((0.9, 2), (None, 1), (0.9, 2), (None, 5)))
    assert events == []  # the gate split the bursts: each is shorter than min speech
    events = run(ep, windows((0.9, 4), (None, 3)), start_ms=10 * WIN)
    assert [type(e) for _, e in events] == [SpeechStarted, SpeechStopped]


def test_hysteresis_keeps_soft_windows_inside_speech() -> None:
    ep = Endpointer(VadSettings(threshold=0.5, min_speech_ms=96, silence_ms=64))
    # 0.4 starts nothing, but once speaking it stays speech (>= 0.35)
    assert run(ep, windows((0.4, 10))) == []
    events = run(ep, windows((0.9, 4), (0.4, 20), (0.3, 3)), start_ms=10 * WIN)
    (_, stopped) = events[-1]
    assert isinstance(stopped, SpeechStopped)
    assert stopped.audio_ms == (10 + 24) * WIN


def test_threshold_boundary() -> None:
    ep = Endpointer(VadSettings(threshold=0.5, min_speech_ms=0))
    assert ep.push(32, 0.4999) is None
    assert isinstance(ep.push(64, 0.5), SpeechStarted)


def test_time_must_increase_and_probability_in_range() -> None:
    ep = Endpointer()
    ep.push(32, 0.1)
    with pytest.raises(ValueError, match="end_ms"):
        ep.push(32, 0.1)
    with pytest.raises(ValueError, match="probability"):
        ep.push(64, 1.5)
    ep.reset()
    assert ep.position_ms == 0
    assert ep.push(32, 0.1) is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"threshold": 0.0}, "vad.threshold"),
        ({"threshold": 1.0}, "vad.threshold"),
        ({"threshold": True}, "vad.threshold"),
        ({"prefix_ms": -1}, "vad.prefix_ms"),
        ({"min_speech_ms": 10_001}, "vad.min_speech_ms"),
        ({"silence_ms": 0}, "vad.silence_ms"),
        ({"silence_ms": 1.5}, "vad.silence_ms"),
        ({"max_turn_ms": 0}, "vad.max_turn_ms"),
        ({"max_turn_ms": 200, "min_speech_ms": 250}, "vad.max_turn_ms"),
    ],
)
def test_settings_validation_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(field)}: "):
        VadSettings(**kwargs)  # type: ignore[arg-type]


def test_barge_in_settings_validation() -> None:
    with pytest.raises(ValueError, match=r"^barge_in\.min_speech_ms: "):
        BargeInSettings(min_speech_ms=-5)
    with pytest.raises(ValueError, match=r"^barge_in\.mode: "):
        BargeInSettings(mode="vad")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^vad\.threshold: "):
        BargeInDetector(threshold=2.0)


def test_barge_in_fires_once_after_min_speech() -> None:
    det = BargeInDetector(BargeInSettings(min_speech_ms=200))
    fired = []
    for i, p in enumerate(windows((0.0, 3), (0.9, 6), (0.0, 2), (0.9, 20))):
        event = det.push((i + 1) * WIN, p)
        if event is not None:
            fired.append((i, event))
    # the 6-window burst (192 ms) never fires; the next run fires at its 7th window (224 ms)
    assert fired == [(11 + 6, BargeIn(audio_ms=11 * WIN, detected_ms=18 * WIN))]
    assert det.fired
    det.reset()
    assert not det.fired
    assert det.push(19 * WIN + 500, 0.9) is None  # re-armed; one window is not enough
    assert isinstance(det.push(19 * WIN + 700, 0.9), BargeIn)


def test_barge_in_off_never_fires() -> None:
    det = BargeInDetector(BargeInSettings(mode=BargeInMode.OFF, min_speech_ms=0))
    assert all(det.push((i + 1) * WIN, 1.0) is None for i in range(100))


def test_barge_in_stage1_rejection_breaks_the_run() -> None:
    det = BargeInDetector(BargeInSettings(min_speech_ms=96))
    probs = windows((0.9, 2), (None, 1), (0.9, 2), (None, 1), (0.9, 3))
    results = [det.push((i + 1) * WIN, p) for i, p in enumerate(probs)]
    assert [i for i, r in enumerate(results) if r is not None] == [8]


@settings(max_examples=200, deadline=None)
@given(
    probs=st.lists(st.one_of(st.none(), st.floats(0.0, 1.0)), max_size=300),
    min_speech=st.integers(0, 600),
    silence=st.integers(1, 800),
    prefix=st.integers(0, 800),
)
def test_events_alternate_and_utterances_are_ordered(
    probs: list[float | None], min_speech: int, silence: int, prefix: int
) -> None:
    s = VadSettings(min_speech_ms=min_speech, silence_ms=silence, prefix_ms=prefix, max_turn_ms=3000)
    ep = Endpointer(s)
    events = [e for _, e in run(ep, probs)]
    previous_end = 0
    for i, event in enumerate(events):
        assert isinstance(event, SpeechStarted if i % 2 == 0 else SpeechStopped)
        if isinstance(event, SpeechStarted):
            assert previous_end <= event.start_sample <= event.audio_ms * 16
            assert event.detected_ms - event.audio_ms >= min_speech
        else:
            assert event.start_sample < event.end_sample
            assert event.audio_ms <= event.detected_ms
            assert event.end_sample - event.start_sample <= (3000 + prefix + WIN) * 16
            previous_end = event.end_sample
