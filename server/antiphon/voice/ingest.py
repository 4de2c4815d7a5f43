"""One voice stream's ingest path: client chunks in, turn events out. Synchronous and O(chunk).

chunk (client format) -> decode to PCM16 -> resample to 16 kHz (soxr, streaming)
-> 20 ms frames (native ring) -> stage-1 energy VAD per frame -> 512-sample
windows -> stage-2 Silero only where stage 1 cannot decide alone (see _stage2:
candidate speech while silent, every window of a candidate, one in eight
windows of confirmed speech) -> endpointer and barge-in detector on audio time.

Everything is bounded: the frame ring holds one chunk, the audio history holds
the prefix while silent and at most max_turn_ms + prefix while the user speaks.
Time is audio time (samples since the stream began), never the wall clock, so
decisions do not depend on scheduling and tests need no sleeps.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from antiphon.errors import InvalidArgument
from antiphon.native import g711
from antiphon.native.framing import FrameRing
from antiphon.native.upsample import Upsampler2x
from antiphon.native.vad import SPEECH_SCORE, EnergyVad
from antiphon.voice.endpointer import (
    BargeIn,
    BargeInDetector,
    BargeInSettings,
    Endpointer,
    SpeechStarted,
    SpeechStopped,
    State,
    VadSettings,
)
from antiphon.voice.formats import AudioSpec, ChunkDecoder
from antiphon.voice.resample import StreamResampler
from antiphon.voice.silero import WINDOW_SAMPLES, VadStream

RATE = 16_000
FRAME_SAMPLES = 320  # 20 ms: the stage-1 VAD's frame
GATE_HANGOVER_MS = 64  # while silent, stage 2 keeps running this long after stage 1 last saw speech
PREROLL_WINDOWS = 1  # skipped windows Silero reads first when the gate opens (32 ms of lead-in)
VERIFY_EVERY = 8  # while the user speaks, Silero checks one window in this many that stage 1 calls sound
WINDOW_MS = 32
FRAME_MS = 20
BYTES_PER_MS = RATE * 2 // 1000

Pcm16 = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Utterance:
    """A finished user turn: its endpoint events and its 16 kHz audio (prefix included)."""

    started: SpeechStarted
    stopped: SpeechStopped
    audio: Pcm16


@dataclass(frozen=True, slots=True)
class Pause:
    """The user has been silent for early_decode_silence_ms inside an utterance: the audio
    [start_sample, end_sample) is likely the whole turn, worth decoding before it is confirmed."""

    start_sample: int
    end_sample: int


@dataclass(frozen=True, slots=True)
class Resumed:
    """Speech came back after a Pause: that pause was not the end of the turn."""

    audio_ms: float


@dataclass(frozen=True, slots=True)
class PartialDue:
    """Another partial_interval_ms of speech arrived: [start_sample, end_sample) so far."""

    start_sample: int
    end_sample: int


@dataclass(frozen=True, slots=True)
class Idle:
    """No speech for max_idle_ms of audio."""

    silent_ms: float


IngestEvent = SpeechStarted | Utterance | Pause | Resumed | PartialDue | BargeIn | Idle


class VoiceIngest:
    """Per stream. feed() returns the events a chunk caused, in audio order."""

    def __init__(
        self,
        spec: AudioSpec,
        vad: VadStream,
        settings: VadSettings,
        barge_in: BargeInSettings,
        *,
        max_chunk_ms: int = 200,
        partial_interval_ms: int = 400,
        early_decode_silence_ms: int = 160,
        max_idle_ms: int = 0,
    ) -> None:
        self._decoder = ChunkDecoder(spec, max_chunk_ms)
        self._resampler = _resampler_to_16k(spec.sample_rate_hz)
        # One chunk (plus resampler slack) of whole frames, and the samples of a partial one.
        self._ring = FrameRing(FRAME_SAMPLES, max_chunk_ms // 20 + 4)
        self._stage1 = EnergyVad(RATE)
        self._vad = vad
        self._vad_skip: Callable[[npt.NDArray[np.float32]], None] | None = getattr(vad, "skip", None)
        self._endpointer = Endpointer(settings, sample_rate=RATE)
        self._barge = BargeInDetector(barge_in, threshold=settings.threshold)
        self._barge_armed = False
        self._settings = settings
        self._window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
        self._window_fill = 0
        self._samples = 0  # 16 kHz samples framed so far
        self._last_stage1_speech = -(10**9)
        self._history = bytearray()  # PCM16 16 kHz from sample _history_base on
        self._history_base = 0
        self._keep_silent = (settings.prefix_ms + 2 * 32) * BYTES_PER_MS
        self._partial_every = partial_interval_ms * RATE // 1000
        self._next_partial = 0
        self._early_silence_ms = early_decode_silence_ms
        self._pause_sent = False
        self._max_idle_ms = max_idle_ms
        self._last_speech_end_ms = 0.0
        self._started: SpeechStarted | None = None
        self._since_check = 0
        self._preroll: collections.deque[npt.NDArray[np.float32]] = collections.deque(maxlen=PREROLL_WINDOWS)
        self._backdate_ms: float | None = None
        self._last_probability = 0.0
        self._noise = False
        self.stage2_windows = 0  # counters for the latency report and the benchmark
        self.windows = 0

    @property
    def position_ms(self) -> float:
        return self._samples * 1000 / RATE

    @property
    def speaking(self) -> bool:
        return self._endpointer.state is State.SPEAKING

    def arm_barge_in(self, armed: bool) -> None:
        """Barge-in is watched only while the agent answers; re-arming starts a fresh detection."""
        if armed and not self._barge_armed:
            self._barge.reset(self._endpointer.position_ms)
        self._barge_armed = armed

    def audio(self, start_sample: int, end_sample: int) -> Pcm16:
        """A copy of the 16 kHz audio [start, end) still held (an open or just-finished utterance)."""
        lo = max(start_sample, self._history_base) - self._history_base
        hi = max(lo, min(end_sample - self._history_base, len(self._history) // 2))
        return np.frombuffer(self._history, dtype="<i2", count=hi - lo, offset=2 * lo).astype(np.int16)

    def feed(self, data: bytes) -> list[IngestEvent]:
        pcm = self._decoder.decode(data)
        pcm16k = self._resampler.process(pcm)
        return self._frames(pcm16k)

    def finish(self) -> list[IngestEvent]:
        """End of input: the audio still inside the resampler, then the utterance in progress, if any."""
        events = self._frames(self._resampler.flush())
        stopped = self._endpointer.force_stop()
        if stopped is not None and self._started is not None:
            events.append(Utterance(self._started, stopped, self.audio(stopped.start_sample, stopped.end_sample)))
        return events

    def _frames(self, pcm16k: bytes) -> list[IngestEvent]:
        events: list[IngestEvent] = []
        ring = self._ring
        ring.push(pcm16k)
        frames: list[bytes] = []
        while (frame := ring.pop()) is not None:
            frames.append(frame)
        if frames:
            self._windows_of(frames, events)
        self._trim_history()
        return events

    def _windows_of(self, frames: list[bytes], events: list[IngestEvent]) -> None:
        """Stage 1 on each frame, then the chunk's 512-sample windows in one pass over its samples."""
        base = self._samples
        data = b"".join(frames)
        self._history += data
        heard = [self._stage1.process(frame) >= SPEECH_SCORE for frame in frames]
        floats = g711.pcm16_to_float32(data)
        n, pos, frame_index = len(floats), 0, 0
        while pos < n:
            take = min(n - pos, WINDOW_SAMPLES - self._window_fill)
            self._window[self._window_fill : self._window_fill + take] = floats[pos : pos + take]
            self._window_fill += take
            pos += take
            if self._window_fill == WINDOW_SAMPLES:
                self._window_fill = 0
                end_sample = base + pos
                # stage-1 verdicts of the frames that began before the window's end
                while frame_index < len(frames) and base + frame_index * FRAME_SAMPLES < end_sample:
                    if heard[frame_index]:
                        self._last_stage1_speech = base + frame_index * FRAME_SAMPLES
                    frame_index += 1
                self._on_window(end_sample, events)
        for i in range(frame_index, len(frames)):
            if heard[i]:
                self._last_stage1_speech = base + i * FRAME_SAMPLES
        self._samples = base + n

    def _on_window(self, end_sample: int, events: list[IngestEvent]) -> None:
        self.windows += 1
        end_ms = end_sample * 1000 / RATE
        probability = self._stage2(end_sample)
        if self._barge_armed and (barge := self._barge.push(end_ms, probability)) is not None:
            events.append(barge)
        event = self._endpointer.push(end_ms, probability)
        if self._backdate_ms is not None:
            self._endpointer.backdate(self._backdate_ms)
            self._backdate_ms = None
        if isinstance(event, SpeechStarted):
            self._started = event
            self._pause_sent = False
            self._next_partial = end_sample + self._partial_every
            events.append(event)
        elif isinstance(event, SpeechStopped):
            assert self._started is not None  # SPEAKING always began with SpeechStarted
            self._last_speech_end_ms = event.audio_ms
            audio = self.audio(event.start_sample, event.end_sample)
            events.append(Utterance(self._started, event, audio))
        elif self._endpointer.state is State.SPEAKING:
            self._speaking_window(end_sample, end_ms, events)
        elif self._max_idle_ms and self._endpointer.state is State.SILENCE:
            silent = end_ms - self._last_speech_end_ms
            if silent >= self._max_idle_ms:
                self._last_speech_end_ms = end_ms  # once per idle period
                events.append(Idle(silent))

    def _stage2(self, end_sample: int) -> float | None:
        """The window's speech probability, from Silero only where stage 1 cannot decide alone.

        SILENCE: Silero runs where stage 1 heard something (plus a short hangover), and
        PENDING always: a turn starts only on Silero's word. SPEAKING: stage-1 silence is
        silence (the endpointer's hangover bridges soft sounds); stage-1 sound is checked by
        Silero every VERIFY_EVERY windows and otherwise keeps Silero's last verdict, unless the
        last check found noise, in which case every such window is checked until speech returns.
        """
        state = self._endpointer.state
        recent_ms = (end_sample - self._last_stage1_speech) * 1000 / RATE
        heard = recent_ms <= WINDOW_MS + FRAME_MS  # stage 1 flagged a frame overlapping this window
        if state is State.SILENCE:
            run = recent_ms <= WINDOW_MS + FRAME_MS + GATE_HANGOVER_MS
            self._since_check = 0
            if not run:
                self._preroll.append(self._window.copy())  # in case the next window opens the gate
                self._skip()
                return None
            if self._preroll:
                return self._warm_start(end_sample)
        elif state is State.PENDING:
            # Every window of a candidate: Silero's state is recurrent, and a window skipped at the
            # onset left it stale enough to miss the start by 400 ms on a quiet-room test.
            run = True
        elif not heard:
            self._since_check = VERIFY_EVERY  # the next sound is checked at once
            self._skip()
            return None
        else:
            self._since_check += 1
            run = self._noise or self._since_check >= VERIFY_EVERY
            if not run:
                self._skip()
                return self._last_probability
        if not run:
            self._skip()
            return None
        probability = self._vad.probability(self._window)
        self.stage2_windows += 1
        self._since_check = 0
        self._last_probability = probability
        self._noise = probability < self._settings.neg_threshold
        return probability

    def _warm_start(self, end_sample: int) -> float:
        """The gate opens after skipped windows: run Silero over the last of them first, so its
        recurrent state has seen the lead-in (skipped windows leave it stale, which delayed onsets by
        ~100 ms on G.711), and start the speech where it began if they already held it."""
        held = list(self._preroll)
        self._preroll.clear()
        leading = 0
        for window in held:
            p = self._vad.probability(window)
            self.stage2_windows += 1
            leading = leading + 1 if p >= self._settings.threshold else 0
        probability = self._vad.probability(self._window)
        self.stage2_windows += 1
        self._last_probability = probability
        self._noise = probability < self._settings.neg_threshold
        self._backdate_ms = (end_sample / 16 - WINDOW_MS * (1 + leading)) if leading and not self._noise else None
        return probability

    def _skip(self) -> None:
        if self._vad_skip is not None:
            self._vad_skip(self._window)  # not run, but its tail is the next window's context

    def _speaking_window(self, end_sample: int, end_ms: float, events: list[IngestEvent]) -> None:
        ep = self._endpointer
        start = ep.start_sample
        if end_ms - ep.last_speech_ms < 1:  # still talking
            if self._pause_sent:
                self._pause_sent = False
                events.append(Resumed(end_ms))
            if self._partial_every and end_sample >= self._next_partial:
                self._next_partial = end_sample + self._partial_every
                events.append(PartialDue(start, end_sample))
        elif not self._pause_sent and end_ms - ep.last_speech_ms >= self._early_silence_ms:
            self._pause_sent = True
            events.append(Pause(start, ep.sample_at(ep.last_speech_ms)))

    def _trim_history(self) -> None:
        """Keep the prefix while silent, and from the utterance's first sample while it lasts."""
        ep = self._endpointer
        if ep.state is State.SILENCE:
            excess = len(self._history) - self._keep_silent
        else:
            start = ep.start_sample if ep.state is State.SPEAKING else 0
            if ep.state is State.PENDING:
                start = ep.sample_at(ep.speech_start_ms - self._settings.prefix_ms)
            excess = 2 * (start - self._history_base)
        if excess > 0:
            excess -= excess & 1
            del self._history[:excess]  # bytearray drops a prefix without moving the rest
            self._history_base += excess // 2

    def history_bytes(self) -> int:
        return len(self._history)


class _Upsample8k:
    """8 -> 16 kHz (telephony) with the native half-band interpolator: 0.3 us per 20 ms chunk and
    1.4 ms of delay, where soxr costs 4.5 us per call and holds back up to 60 ms (LQ) or 115 ms (HQ)."""

    def __init__(self) -> None:
        self._upsampler = Upsampler2x()

    def process(self, pcm16: bytes) -> bytes:
        return self._upsampler.process(pcm16)

    def flush(self) -> bytes:
        return b""  # the last 1.4 ms stay in the filter: nothing a VAD or a transcript misses


def _resampler_to_16k(rate: int) -> _Upsample8k | StreamResampler:
    if rate == 8000:
        return _Upsample8k()
    # soxr LQ: it holds back far less audio than HQ, and still passes the speech band VAD and STT use.
    return StreamResampler(rate, RATE, quality="LQ")


def check_seq(previous: int, seq: int) -> None:
    """AudioChunk.seq, when the client sets it, must increase."""
    if seq and previous and seq <= previous:
        raise InvalidArgument(f"audio.seq: must increase, got {seq} after {previous}")
