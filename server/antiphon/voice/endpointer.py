"""Endpointing: when a user turn starts and stops, from per-window speech probabilities.

A pure state machine: no asyncio, no wall clock. Time is the audio position in
milliseconds since the stream began, passed in with each window, so tests drive
it deterministically and a stream's decisions do not depend on scheduling.

Each call to `Endpointer.push(end_ms, probability)` describes one analysis window
that ends at `end_ms` and starts where the previous one ended (0 for the first).
`probability` is the stage-2 (Silero) speech probability, or None when the stage-1
gate rejected the window: it then counts as silence and stage 2 never ran.

States: SILENCE -> PENDING (speech seen, not yet `min_speech_ms` long) -> SPEAKING
(SpeechStarted emitted) -> SILENCE (SpeechStopped emitted after `silence_ms` of
silence, or forced at `max_turn_ms`). A silent window while PENDING drops the
candidate: a burst shorter than `min_speech_ms` is a false start and emits nothing.
Like Silero's reference iterator, a window already inside speech stays speech down
to `threshold - 0.15` (hysteresis), so one soft window does not split a word.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

HYSTERESIS = 0.15  # Silero's reference: neg_threshold = threshold - 0.15
MAX_MS = 3_600_000


def _check_ms(field: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{field}: must be an integer number of ms in {low}..{high}, got {value!r}")


@dataclass(frozen=True, slots=True)
class VadSettings:
    """The `vad` block of a session config (proto VadSettings)."""

    threshold: float = 0.5  # speech when probability >= threshold
    prefix_ms: int = 300  # audio kept before the detected speech start
    min_speech_ms: int = 250  # shorter bursts are false starts
    silence_ms: int = 500  # hangover: silence that ends a turn
    max_turn_ms: int = 30_000  # a longer turn is ended with reason "max_turn"

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
            raise ValueError(f"vad.threshold: must be a number in (0, 1), got {self.threshold!r}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"vad.threshold: must be in (0, 1), got {self.threshold!r}")
        _check_ms("vad.prefix_ms", self.prefix_ms, 0, 10_000)
        _check_ms("vad.min_speech_ms", self.min_speech_ms, 0, 10_000)
        _check_ms("vad.silence_ms", self.silence_ms, 1, 60_000)
        _check_ms("vad.max_turn_ms", self.max_turn_ms, 1, MAX_MS)
        if self.max_turn_ms <= self.min_speech_ms:
            raise ValueError(
                f"vad.max_turn_ms: must exceed vad.min_speech_ms ({self.min_speech_ms}), got {self.max_turn_ms}"
            )

    @property
    def neg_threshold(self) -> float:
        return max(self.threshold - HYSTERESIS, 0.01)


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech confirmed (it lasted `min_speech_ms`).

    audio_ms: where speech began (start of its first speech window);
    detected_ms: the audio position at which it was confirmed (the window that emitted this);
    start_sample: where the utterance's audio begins, prefix padding included.
    """

    audio_ms: float
    detected_ms: float
    start_sample: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """The turn ended. audio_ms: end of the last speech window ("silence"), or the
    position at which the turn was cut ("max_turn"). The utterance is the samples
    [start_sample, end_sample), prefix included."""

    audio_ms: float
    reason: Literal["silence", "max_turn", "end_of_input"]
    detected_ms: float
    start_sample: int
    end_sample: int


EndpointEvent = SpeechStarted | SpeechStopped


class State(enum.Enum):
    SILENCE = "silence"
    PENDING = "pending"
    SPEAKING = "speaking"


def _check_window(last_ms: float, end_ms: float, probability: float | None) -> None:
    if not end_ms > last_ms:
        raise ValueError(f"end_ms: audio time must increase, got {end_ms!r} after {last_ms!r}")
    if probability is not None and not 0.0 <= probability <= 1.0:
        raise ValueError(f"probability: must be in [0, 1] or None, got {probability!r}")


class Endpointer:
    """One per stream. O(1) per window."""

    __slots__ = (
        "_floor_sample",
        "_last_ms",
        "_last_speech_ms",
        "_sample_rate",
        "_settings",
        "_speech_start_ms",
        "_start_sample",
        "_state",
    )

    def __init__(self, settings: VadSettings | None = None, *, sample_rate: int = 16_000) -> None:
        if sample_rate <= 0:
            raise ValueError(f"sample_rate: must be positive, got {sample_rate}")
        self._settings = settings or VadSettings()
        self._sample_rate = sample_rate
        self.reset()

    def reset(self) -> None:
        """Forget everything: a new stream starting at audio time 0."""
        self._state = State.SILENCE
        self._last_ms = 0.0  # end of the previous window
        self._speech_start_ms = 0.0  # start of the current candidate/utterance's speech
        self._last_speech_ms = 0.0  # end of its latest speech window
        self._start_sample = 0  # utterance start, prefix included
        self._floor_sample = 0  # the previous utterance's end: a prefix never reaches before it

    @property
    def settings(self) -> VadSettings:
        return self._settings

    @property
    def state(self) -> State:
        return self._state

    @property
    def position_ms(self) -> float:
        return self._last_ms

    @property
    def last_speech_ms(self) -> float:
        """End of the latest speech window of the current utterance."""
        return self._last_speech_ms

    @property
    def speech_start_ms(self) -> float:
        """Start of the current candidate or utterance's speech."""
        return self._speech_start_ms

    @property
    def start_sample(self) -> int:
        """Where the current utterance's audio begins (prefix included), once SPEAKING."""
        return self._start_sample

    def sample_at(self, ms: float) -> int:
        return self._sample(ms)

    def _sample(self, ms: float) -> int:
        return round(ms * self._sample_rate / 1000)

    def push(self, end_ms: float, probability: float | None) -> EndpointEvent | None:
        """Feed the window ending at `end_ms`; returns the event it causes, if any.

        probability None: the stage-1 gate rejected the window (silence).
        """
        _check_window(self._last_ms, end_ms, probability)
        start_ms, self._last_ms = self._last_ms, end_ms
        s = self._settings
        state = self._state
        if probability is None:
            speech = False
        else:
            speech = probability >= (s.threshold if state is State.SILENCE else s.neg_threshold)

        if state is State.SILENCE:
            if not speech:
                return None
            self._speech_start_ms = start_ms
            self._last_speech_ms = end_ms
            self._state = State.PENDING
            return self._maybe_confirm(end_ms)
        if state is State.PENDING:
            if not speech:
                self._state = State.SILENCE  # a false start: shorter than min_speech_ms
                return None
            self._last_speech_ms = end_ms
            return self._maybe_confirm(end_ms)
        # SPEAKING
        if speech:
            self._last_speech_ms = end_ms
        elif end_ms - self._last_speech_ms >= s.silence_ms:
            return self._stop(self._last_speech_ms, "silence", end_ms)
        if end_ms - self._speech_start_ms >= s.max_turn_ms:
            return self._stop(end_ms, "max_turn", end_ms)
        return None

    def _maybe_confirm(self, end_ms: float) -> SpeechStarted | None:
        s = self._settings
        if end_ms - self._speech_start_ms < s.min_speech_ms:
            return None
        self._state = State.SPEAKING
        prefixed = self._sample(self._speech_start_ms - s.prefix_ms)
        self._start_sample = max(0, self._floor_sample, prefixed)
        return SpeechStarted(audio_ms=self._speech_start_ms, detected_ms=end_ms, start_sample=self._start_sample)

    def backdate(self, start_ms: float) -> None:
        """A candidate that began earlier than the window that revealed it (audio the stage-1 gate
        had skipped, checked afterwards): its speech starts at `start_ms`, never before the previous
        utterance's end."""
        if self._state is State.PENDING:
            floor_ms = self._floor_sample * 1000 / self._sample_rate
            self._speech_start_ms = max(min(self._speech_start_ms, start_ms), floor_ms)

    def force_stop(self) -> SpeechStopped | None:
        """The input ended: an utterance in progress ends where its speech did; a candidate is dropped."""
        state, self._state = self._state, State.SILENCE
        if state is not State.SPEAKING:
            return None
        return self._stop(self._last_speech_ms, "end_of_input", self._last_ms)

    def _stop(
        self, audio_ms: float, reason: Literal["silence", "max_turn", "end_of_input"], end_ms: float
    ) -> SpeechStopped:
        self._state = State.SILENCE
        end_sample = self._sample(audio_ms)
        self._floor_sample = end_sample
        return SpeechStopped(
            audio_ms=audio_ms,
            reason=reason,
            detected_ms=end_ms,
            start_sample=self._start_sample,
            end_sample=end_sample,
        )


class BargeInMode(enum.Enum):
    OFF = "off"
    VAD = "vad"


@dataclass(frozen=True, slots=True)
class BargeInSettings:
    """The `barge_in` block of a session config (proto BargeIn)."""

    mode: BargeInMode = BargeInMode.VAD
    min_speech_ms: int = 250

    def __post_init__(self) -> None:
        if not isinstance(self.mode, BargeInMode):
            raise ValueError(f"barge_in.mode: must be OFF or VAD, got {self.mode!r}")
        _check_ms("barge_in.min_speech_ms", self.min_speech_ms, 0, 10_000)


@dataclass(frozen=True, slots=True)
class BargeIn:
    """The user talked over the agent. audio_ms: where that speech began;
    detected_ms: the audio position at which it had lasted min_speech_ms."""

    audio_ms: float
    detected_ms: float


class BargeInDetector:
    """Fed the same per-window decisions while the agent speaks; fires once when
    contiguous user speech has lasted `min_speech_ms`. Shorter bursts never fire:
    a missed short interruption loses nothing, a false one cuts the agent off.
    Call `reset()` when the agent starts a new reply."""

    __slots__ = ("_fired", "_in_speech", "_last_ms", "_run_start_ms", "_settings", "_threshold")

    def __init__(self, settings: BargeInSettings | None = None, *, threshold: float = 0.5) -> None:
        VadSettings(threshold=threshold)  # validates the threshold with the vad.* field name
        self._settings = settings or BargeInSettings()
        self._threshold = threshold
        self._last_ms = 0.0
        self.reset()

    def reset(self, position_ms: float | None = None) -> None:
        """Arm again (audio time keeps running: the stream goes on). position_ms: where the stream
        is now, when windows were not pushed while disarmed."""
        if position_ms is not None:
            self._last_ms = max(self._last_ms, position_ms)
        self._fired = False
        self._in_speech = False
        self._run_start_ms = 0.0

    @property
    def fired(self) -> bool:
        return self._fired

    def push(self, end_ms: float, probability: float | None) -> BargeIn | None:
        _check_window(self._last_ms, end_ms, probability)
        start_ms, self._last_ms = self._last_ms, end_ms
        if self._settings.mode is BargeInMode.OFF or self._fired:
            return None
        limit = self._threshold if not self._in_speech else max(self._threshold - HYSTERESIS, 0.01)
        if probability is None or probability < limit:
            self._in_speech = False
            return None
        if not self._in_speech:
            self._in_speech = True
            self._run_start_ms = start_ms
        if end_ms - self._run_start_ms >= self._settings.min_speech_ms:
            self._fired = True
            return BargeIn(audio_ms=self._run_start_ms, detected_ms=end_ms)
        return None
