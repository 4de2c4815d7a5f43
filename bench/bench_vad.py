"""Stage-2 VAD (Silero ONNX) and the endpointer: cost per window and per audio second.

    python bench/bench_vad.py [--json out.json] [--seconds 10] [--repeats 5]

Silero runs window by window (512 samples + 64 of context at 16 kHz, one stream,
state carried) over --seconds of speech-like audio, with 1 and 2 intra-op threads;
each figure comes from every window of --repeats passes (p50/p99 per window, and
the median pass's cost per audio second). The endpointer row is the pure-Python
state machine fed the same number of windows. Informational only.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, pct, print_table, write_json
from antiphon.voice.endpointer import Endpointer
from antiphon.voice.silero import SAMPLE_RATE, WINDOW_MS, WINDOW_SAMPLES, SileroVad


def test_audio(seconds: float) -> npt.NDArray[np.float32]:
    """Bursts of a harmonic tone with noise, alternating with quiet: both branches of the model run."""
    rng = np.random.default_rng(0)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    voiced = np.zeros(n)
    for k in range(1, 8):
        voiced += np.sin(2 * np.pi * 140 * k * t) / k
    gate = (np.floor(t / 0.8) % 2 == 0).astype(np.float64)
    noise: npt.NDArray[np.float64] = rng.normal(0, 0.005, n)
    audio: npt.NDArray[np.float32] = (0.2 * voiced * gate + noise).astype(np.float32)
    return audio


def bench_silero(threads: int, audio: npt.NDArray[np.float32], repeats: int) -> dict[str, float]:
    vad = SileroVad(threads=threads)
    windows = [audio[i : i + WINDOW_SAMPLES] for i in range(0, len(audio) - WINDOW_SAMPLES + 1, WINDOW_SAMPLES)]
    stream = vad.open_stream()
    for w in windows[:50]:  # warm-up
        stream.probability(w)
    per_window: list[float] = []
    per_pass: list[float] = []
    for _ in range(repeats):
        stream.reset()
        start = time.perf_counter()
        for w in windows:
            t0 = time.perf_counter()
            stream.probability(w)
            per_window.append((time.perf_counter() - t0) * 1e6)
        per_pass.append(time.perf_counter() - start)
    audio_s = len(windows) * WINDOW_SAMPLES / SAMPLE_RATE
    return {
        "p50_us": median(per_window),
        "p99_us": pct(per_window, 99),
        "ms_per_audio_s": median(per_pass) / audio_s * 1e3,
    }


def bench_endpointer(windows: int, repeats: int) -> dict[str, float]:
    rng = np.random.default_rng(1)
    probs = [float(p) for p in rng.random(windows)]
    per_pass = []
    for _ in range(repeats):
        ep = Endpointer()
        start = time.perf_counter()
        for i, p in enumerate(probs):
            ep.push((i + 1) * WINDOW_MS, p)
        per_pass.append(time.perf_counter() - start)
    per_window_us = median(per_pass) / windows * 1e6
    windows_per_s = 1000 / WINDOW_MS
    return {"p50_us": per_window_us, "ms_per_audio_s": per_window_us * windows_per_s / 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    audio = test_audio(args.seconds)
    results: dict[str, dict[str, float]] = {}
    for threads in (1, 2):
        results[f"silero {threads} thread{'s' if threads > 1 else ''}"] = bench_silero(threads, audio, args.repeats)
    results["endpointer"] = bench_endpointer(len(audio) // WINDOW_SAMPLES, max(args.repeats, 20))

    rows = [
        [name, r["p50_us"], r.get("p99_us", "-"), r["ms_per_audio_s"], 1000 / WINDOW_MS * r["p50_us"] / 1e6]
        for name, r in results.items()
    ]
    print_table(
        f"VAD per {WINDOW_SAMPLES}-sample window ({WINDOW_MS} ms), {args.seconds:g} s audio x {args.repeats}",
        ["stage", "p50 us/window", "p99 us/window", "ms per audio s", "core share"],
        rows,
    )
    write_json(args.json, {"platform": platform.platform(), "seconds": args.seconds, "results": results})


if __name__ == "__main__":
    main()
