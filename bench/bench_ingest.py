"""Ingest path costs: framing, stage-1 VAD, resampling (per 20 ms frame and per audio second).

    python bench/bench_ingest.py [--json out.json] [--repeats 51] [--target-us 500]

Framing and stage-1 VAD: the Cython extension vs its pure-Python twin, and for
the VAD webrtcvad (webrtcvad-wheels, what a user would pick instead) when it is
installed. Resampling: soxr's streaming resampler in two qualities. The input
is one second of 16 kHz speech-like audio, fed as 20 ms chunks (framing: 7 ms
chunks, so frames straddle chunks). A second table compares, for 8 kHz
telephony in 20 ms chunks, the half-band Upsampler2x (extension and twin) with
soxr HQ and LQ, with each one's delay: the lag at which its output lines up
with the source plus the output it still holds back after each chunk (soxr
releases output in blocks, so its delay swings; mean and max are shown).
Each figure is the median over --repeats batches of about --target-us each.
Informational only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import functools
import gc
import importlib
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, print_table, write_json
from antiphon.voice.resample import Quality, StreamResampler

RATE = 16000
FRAME = 320  # 20 ms
FRAMES_PER_S = RATE // FRAME


def optional(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None


def speech_like(rate: int, seconds: float = 1.0) -> bytes:
    rng = np.random.default_rng(0)
    t = np.arange(round(rate * seconds)) / rate
    env = (0.5 - 0.5 * np.cos(2 * np.pi * 4 * t)) ** 2
    x = sum(np.sin(2 * np.pi * 150 * k * t) / k for k in range(1, 20)) * env * 6000 + rng.normal(0, 30, t.size)
    return np.clip(np.rint(x), -32768, 32767).astype("<i2").tobytes()


def time_run(fn: Callable[[], object], repeats: int, target_ns: int) -> float:
    """Median ns per fn() over `repeats` batches lasting ~target_ns each."""
    inner = 1
    while True:
        start = time.perf_counter_ns()
        for _ in range(inner):
            fn()
        elapsed = time.perf_counter_ns() - start
        if elapsed >= target_ns // 4:
            break
        inner *= 2
    inner = max(1, inner * 4 * target_ns // max(1, elapsed) // 4)
    per_call: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter_ns()
            for _ in range(inner):
                fn()
            per_call.append((time.perf_counter_ns() - start) / inner)
    finally:
        if gc_was_enabled:
            gc.enable()
    return median(per_call)


def framing_second(ring_cls: Any, chunks: list[bytes]) -> Callable[[], object]:
    ring = ring_cls(FRAME, 2 * FRAMES_PER_S)

    def run() -> None:
        push, pop = ring.push, ring.pop
        for c in chunks:
            push(c)
            while pop() is not None:
                pass

    return run


def vad_second(process: Callable[[bytes], object], frames: list[bytes]) -> Callable[[], object]:
    def run() -> None:
        for f in frames:
            process(f)

    return run


def resample_second(in_rate: int, quality: str) -> Callable[[], object]:
    data = speech_like(in_rate)
    step = 2 * in_rate // FRAMES_PER_S
    chunks = [data[i : i + step] for i in range(0, len(data), step)]
    r = StreamResampler(in_rate, RATE, quality=quality)  # type: ignore[arg-type]

    def run() -> None:
        for c in chunks:
            r.process(c)

    return run


def upsample_second(make: Callable[[], Any]) -> Callable[[], object]:
    """One second of 8 kHz audio as 20 ms chunks through a fresh 8 -> 16 kHz resampler."""
    data = speech_like(8000)
    chunks = [data[i : i + 320] for i in range(0, len(data), 320)]
    process = make().process

    def run() -> None:
        for c in chunks:
            process(c)

    return run


def stream_delay_ms(make: Callable[[], Any], seconds: int = 3) -> tuple[float, float]:
    """Mean and max delay (ms) of an 8 -> 16 kHz streaming resampler fed 20 ms chunks.

    The source is noise band-limited to 3.4 kHz at 16 kHz, and its even samples
    are the 8 kHz input, so the output should equal the source shifted by the
    filter's lag; add the output samples still held back after each chunk.
    """
    n = RATE * seconds
    spectrum = np.fft.rfft(np.random.default_rng(1).normal(0.0, 1.0, n))
    spectrum[np.fft.rfftfreq(n, 1 / RATE) > 3400] = 0
    source = np.fft.irfft(spectrum, n)
    source *= 8000 / np.max(np.abs(source))
    data = np.rint(source[0::2]).astype("<i2").tobytes()
    resampler = make()
    out = bytearray()
    held = []
    for i in range(0, len(data), 320):
        out += resampler.process(data[i : i + 320])
        held.append((i + 320) - len(out) // 2)  # 16 kHz samples in minus samples out
    y = np.frombuffer(bytes(out), dtype="<i2").astype(np.float64)
    core = slice(RATE // 2, y.size - RATE // 4)
    lags = range(-RATE // 8, RATE // 8)
    lag = max(lags, key=lambda k: float(np.dot(y[core], source[core.start - k : core.stop - k])))
    steady = np.array(held[FRAMES_PER_S:]) + lag  # after the first second: soxr's start-up is longer still
    return float(steady.mean()) * 1000 / RATE, float(steady.max()) * 1000 / RATE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--repeats", type=int, default=51, help="timed batches per figure (median)")
    parser.add_argument("--target-us", type=int, default=2000, help="approximate length of one batch")
    args = parser.parse_args()
    target_ns = args.target_us * 1000

    pcm = speech_like(RATE)
    frames = [pcm[i : i + 2 * FRAME] for i in range(0, len(pcm), 2 * FRAME)]
    chunks = [pcm[i : i + 224] for i in range(0, len(pcm), 224)]  # 7 ms chunks
    cases: dict[tuple[str, str], Callable[[], object]] = {}
    for impl, name in (("cython", "antiphon.native._framing"), ("python", "antiphon.native._framing_py")):
        mod = optional(name)
        if mod is not None:
            cases["framing (7 ms chunks in)", impl] = framing_second(mod.FrameRing, chunks)
    for impl, name in (("cython", "antiphon.native._vad"), ("python", "antiphon.native._vad_py")):
        mod = optional(name)
        if mod is not None:
            cases["stage-1 VAD", impl] = vad_second(mod.EnergyVad().process, frames)
    webrtcvad = optional("webrtcvad")
    if webrtcvad is not None:
        w = webrtcvad.Vad(1)
        cases["stage-1 VAD", "webrtcvad"] = vad_second(lambda f: w.is_speech(f, RATE), frames)
    else:
        print("webrtcvad is not installed (pip install webrtcvad-wheels): its row is missing")
    for in_rate in (8000, 48000):
        for quality in ("HQ", "MQ"):
            cases[f"resample {in_rate // 1000}k->16k", f"soxr {quality}"] = resample_second(in_rate, quality)

    upsamplers: dict[str, Callable[[], Any]] = {}
    for impl, name in (("cython", "antiphon.native._upsample"), ("python", "antiphon.native._upsample_py")):
        mod = optional(name)
        if mod is not None:
            upsamplers[f"Upsampler2x {impl}"] = mod.Upsampler2x
    soxr_qualities: tuple[Quality, ...] = ("HQ", "LQ")
    for quality in soxr_qualities:
        upsamplers[f"soxr {quality}"] = functools.partial(StreamResampler, 8000, RATE, quality)

    rows: list[list[Any]] = []
    results: list[dict[str, Any]] = []
    for (stage, impl), fn in cases.items():
        ns_per_s = time_run(fn, args.repeats, target_ns)
        us_frame = ns_per_s / FRAMES_PER_S / 1e3
        share = ns_per_s / 1e9 * 100  # % of one core per real-time stream
        rows.append([stage, impl, f"{us_frame:.3f}", f"{ns_per_s / 1e3:.1f}", f"{share:.4f}"])
        results.append({"stage": stage, "impl": impl, "us_per_20ms_frame": us_frame, "us_per_audio_s": ns_per_s / 1e3})
    print_table(
        "Ingest stages, 16 kHz mono (median; % core = share of one core per real-time stream)",
        ["stage", "impl", "us/20ms frame", "us/audio s", "% core"],
        rows,
    )
    rows = []
    for impl, make in upsamplers.items():
        ns_per_s = time_run(upsample_second(make), args.repeats, target_ns)
        us_chunk = ns_per_s / FRAMES_PER_S / 1e3
        mean_ms, max_ms = stream_delay_ms(make)
        rows.append([impl, f"{us_chunk:.3f}", f"{ns_per_s / 1e3:.1f}", f"{mean_ms:.2f}", f"{max_ms:.2f}"])
        results.append(
            {
                "stage": "upsample 8k->16k",
                "impl": impl,
                "us_per_20ms_frame": us_chunk,
                "us_per_audio_s": ns_per_s / 1e3,
                "delay_ms_mean": mean_ms,
                "delay_ms_max": max_ms,
            }
        )
    print_table(
        "Upsampling 8 kHz -> 16 kHz (telephony), 20 ms chunks in (median; delay: lag + output held back)",
        ["impl", "us/20ms chunk", "us/audio s", "delay ms mean", "delay ms max"],
        rows,
    )
    write_json(args.json, {"python": platform.python_version(), "machine": platform.machine(), "results": results})


if __name__ == "__main__":
    main()
