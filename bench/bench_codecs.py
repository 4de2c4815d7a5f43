"""G.711 codecs and PCM16/float32 conversion: Cython vs the Python twin vs audioop.

    python bench/bench_codecs.py [--json out.json] [--repeats 101] [--target-us 500]

audioop is what a user would reach for on Python 3.11 (deprecated, removed in
3.13); it has no float conversion, so those rows have no ratio. Each figure is
the median over --repeats timed batches, a batch being enough calls to last
about --target-us (so the clock's resolution does not matter). Sizes: 1 s of
8 kHz audio (8000 samples) and one 20 ms frame (160 samples). Informational
only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import gc
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, print_table, write_json
from antiphon.native import _g711_py

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

SAMPLE_RATE = 8000
SIZES = {"1 s": SAMPLE_RATE, "20 ms": SAMPLE_RATE // 50}
OPS = ["ulaw_encode", "ulaw_decode", "alaw_encode", "alaw_decode", "pcm16_to_float32", "float32_to_pcm16"]
AUDIOOP: dict[str, Callable[[Any], object]] = {
    "ulaw_encode": lambda b: audioop.lin2ulaw(b, 2),
    "ulaw_decode": lambda b: audioop.ulaw2lin(b, 2),
    "alaw_encode": lambda b: audioop.lin2alaw(b, 2),
    "alaw_decode": lambda b: audioop.alaw2lin(b, 2),
}


def load_cython() -> ModuleType | None:
    try:
        from antiphon.native import _g711
    except ModuleNotFoundError:
        return None
    return _g711


def speech_like(n: int) -> bytes:
    """A tone plus noise at speech-like levels, so every G.711 segment is hit."""
    rng = np.random.default_rng(0)
    t = np.arange(n) / SAMPLE_RATE
    x = 9000 * np.sin(2 * np.pi * 220 * t) + rng.normal(0, 3000, n)
    return np.clip(x, -32768, 32767).astype("<i2").tobytes()


def op_input(op: str, pcm16: bytes) -> bytes | npt.NDArray[np.float32]:
    if op.endswith("_decode"):
        return audioop.lin2ulaw(pcm16, 2) if op.startswith("ulaw") else audioop.lin2alaw(pcm16, 2)
    if op == "float32_to_pcm16":
        return _g711_py.pcm16_to_float32(pcm16)
    return pcm16


def input_bytes(data: bytes | npt.NDArray[np.float32]) -> int:
    return data.nbytes if isinstance(data, np.ndarray) else len(data)


def time_call(fn: Callable[[Any], object], arg: object, repeats: int, target_ns: int) -> float:
    """Median ns per call over `repeats` batches of calls lasting ~target_ns each."""
    inner = 1
    while True:  # calibrate the batch size
        start = time.perf_counter_ns()
        for _ in range(inner):
            fn(arg)
        if time.perf_counter_ns() - start >= target_ns // 4:
            break
        inner *= 2
    inner = max(1, inner * 4 * target_ns // max(1, time.perf_counter_ns() - start))
    per_call: list[float] = []
    gc_was_enabled = gc.isenabled()
    gc.disable()  # as timeit does: a collection mid-batch is noise, not codec cost
    try:
        for _ in range(repeats):
            start = time.perf_counter_ns()
            for _ in range(inner):
                fn(arg)
            per_call.append((time.perf_counter_ns() - start) / inner)
    finally:
        if gc_was_enabled:
            gc.enable()
    return median(per_call)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--repeats", type=int, default=101, help="timed batches per figure (median)")
    parser.add_argument("--target-us", type=int, default=500, help="approximate length of one batch")
    args = parser.parse_args()

    cython = load_cython()
    impls: dict[str, ModuleType] = {"python": _g711_py}
    if cython is not None:
        impls = {"cython": cython, **impls}
    else:
        print("antiphon.native._g711 is not built: Cython rows are missing (make build)")

    results: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    for size_name, nsamples in SIZES.items():
        pcm16 = speech_like(nsamples)
        for op in OPS:
            arg = op_input(op, pcm16)
            nbytes = input_bytes(arg)
            candidates: dict[str, Callable[[Any], object]] = {name: getattr(m, op) for name, m in impls.items()}
            if op in AUDIOOP:
                candidates["audioop"] = AUDIOOP[op]
            timings = {name: time_call(fn, arg, args.repeats, args.target_us * 1000) for name, fn in candidates.items()}
            for name, ns in timings.items():
                speedup = timings["audioop"] / ns if "audioop" in timings else None
                mb_s = nbytes / ns * 1e3  # bytes per ns -> MB/s
                results.append(
                    {
                        "op": op,
                        "size": size_name,
                        "samples": nsamples,
                        "input_bytes": nbytes,
                        "impl": name,
                        "us_per_call": ns / 1e3,
                        "mb_per_s": mb_s,
                        "speedup_vs_audioop": speedup,
                    }
                )
                ratio = f"{speedup:.2f}x" if speedup is not None else "-"
                rows.append([op, size_name, name, f"{ns / 1e3:.3f}", f"{mb_s:.0f}", ratio])

    print_table(
        "G.711 / PCM16 conversion (median; MB/s of input; ratio = audioop time / this time, >1 is faster)",
        ["op", "size", "impl", "us/call", "MB/s", "vs audioop"],
        rows,
    )
    write_json(
        args.json,
        {
            "benchmark": "codecs",
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "machine": platform.machine(),
            "processor": platform.processor(),
            "repeats": args.repeats,
            "results": results,
        },
    )


if __name__ == "__main__":
    main()
