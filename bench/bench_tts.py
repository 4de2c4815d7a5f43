"""Text to speech (Piper, en_US joe): time to first audio, real-time factor, phrase cache, GIL.

    python bench/bench_tts.py [--json out.json] [--repeats 5] [--tokens-per-s 130]

Time to first audio: an LLM-like answer (three sentences) is split into
word-piece tokens arriving at --tokens-per-s. Each strategy cuts the text into
pieces and synthesizes them in order on one worker (one intra-op thread), each
as soon as it is cut and the worker is free; "whole answer" waits for the last
token. The token clock is simulated, synthesis is measured for real. First
audio = from the first token until the first piece's audio is ready; stall =
silence after that while the player waits for a later piece. Then: synthesis
cost per audio second (1 and 2 threads), a phrase-cache hit against synthesis
for a greeting, the chunker's cost per token, and how long a Python thread is
kept from running (GIL) while another synthesizes. Informational only.
"""

from __future__ import annotations

import argparse
import itertools
import platform
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _table import median, pct, print_table, write_json
from antiphon.voice.chunker import ChunkerSettings, ClauseChunker, clean
from antiphon.voice.phrase_cache import PhraseCache
from antiphon.voice.tts import CachedTTS, PiperTTS, TextToSpeech

ANSWERS = {
    "opener": (
        "Sure, I can help with that. The weather in Paris tomorrow will be mostly sunny, with a high of "
        "twenty two degrees and a light breeze from the west in the afternoon. Would you like me to book "
        "a table on a terrace for dinner?"
    ),
    "plain": (
        "The nearest pharmacy that is open right now is on Rue de Rivoli, about ten minutes from your hotel "
        "on foot. It closes at nine tonight, so you still have plenty of time. Do you want me to send the "
        "directions to your phone?"
    ),
}
RTF_TEXTS = {
    "greeting (6 words)": "Hello! How can I help you today?",
    "sentence (17 words)": "The weather in Paris tomorrow will be mostly sunny, with a high of twenty two degrees.",
    "long (40 words)": (
        "When you leave the station, take the exit on the left, walk along the river for about ten minutes "
        "until you reach the old stone bridge, cross it, and the museum entrance is the large glass door right "
        "in front of you."
    ),
}
GREETING = RTF_TEXTS["greeting (6 words)"]
_TOKEN = re.compile(r"\s*(?:[A-Za-z]{1,6}|\d{1,3}|[^\sA-Za-z\d])")  # BPE-like: leading space, long words split

Strategy = Callable[[], ClauseChunker] | None
STRATEGIES: dict[str, Strategy] = {
    "clause chunks": ClauseChunker,
    "sentences only": lambda: ClauseChunker(ChunkerSettings(eager_words=0)),
    "whole answer": None,
}


def tokens(text: str) -> list[str]:
    found = _TOKEN.findall(text)
    assert "".join(found) == text.rstrip()
    return found


def pieces_on_clock(answer: str, make: Strategy, tokens_per_s: float) -> list[tuple[float, str]]:
    """(time cut, relative to the first token; text) for each piece of the answer."""
    toks = tokens(answer)
    last = (len(toks) - 1) / tokens_per_s
    if make is None:
        return [(last, clean(answer))]
    chunker = make()
    out = [(k / tokens_per_s, piece) for k, tok in enumerate(toks) for piece in chunker.push(tok)]
    return out + [(last, piece) for piece in chunker.flush()]


def play(tts: TextToSpeech, pieces: list[tuple[float, str]]) -> dict[str, Any]:
    """Synthesize the pieces in order on one worker; when the first is ready, and the stalls after it."""
    free = 0.0
    first: float | None = None
    play_end = stall = 0.0
    for cut_at, text in pieces:
        start = max(cut_at, free)
        t0 = time.perf_counter()
        audio = tts.synthesize(text)
        free = start + time.perf_counter() - t0
        seconds = len(audio) / tts.sample_rate
        if first is None:
            first, play_end = free, free + seconds
        else:
            stall += max(0.0, free - play_end)
            play_end = max(play_end, free) + seconds
    return {"first_ms": (first or 0.0) * 1e3, "stall_ms": stall * 1e3, "audio_s": play_end - (first or 0.0)}


def bench_first_audio(tts: TextToSpeech, tokens_per_s: float, repeats: int) -> list[list[Any]]:
    rows = []
    for answer_name, answer in ANSWERS.items():
        for name, make in STRATEGIES.items():
            pieces = pieces_on_clock(answer, make, tokens_per_s)
            runs = [play(tts, pieces) for _ in range(repeats)]
            first_text = pieces[0][1]
            rows.append(
                [
                    answer_name,
                    name,
                    len(pieces),
                    f'"{first_text[:24]}{"..." if len(first_text) > 24 else ""}"',
                    pieces[0][0] * 1e3,
                    median([r["first_ms"] for r in runs]) - pieces[0][0] * 1e3,
                    median([r["first_ms"] for r in runs]),
                    median([r["stall_ms"] for r in runs]),
                ]
            )
    return rows


def bench_rtf(repeats: int) -> list[list[Any]]:
    rows = []
    for threads in (1, 2):
        tts = PiperTTS(threads=threads)
        for name, text in RTF_TEXTS.items():
            tts.synthesize(text)  # warm-up
            times, seconds = [], 0.0
            for _ in range(repeats):
                t0 = time.perf_counter()
                seconds = len(tts.synthesize(text)) / tts.sample_rate
                times.append(time.perf_counter() - t0)
            rows.append([threads, name, seconds, median(times) * 1e3, pct(times, 99) * 1e3, median(times) / seconds])
        tts.close()
    return rows


def bench_cache(tts: PiperTTS, repeats: int) -> list[list[Any]]:
    synth = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tts.synthesize(GREETING)
        synth.append(time.perf_counter() - t0)
    cached = CachedTTS(tts, PhraseCache())
    cached.synthesize(GREETING)
    hits = []
    for i in range(2000):
        text = GREETING if i % 2 else GREETING.lower()  # the key normalizes case and spacing
        t0 = time.perf_counter()
        cached.synthesize(text)
        hits.append(time.perf_counter() - t0)
    return [
        ["synthesis", median(synth) * 1e6, pct(synth, 99) * 1e6],
        ["phrase-cache hit", median(hits) * 1e6, pct(hits, 99) * 1e6],
    ]


def bench_chunker() -> list[list[Any]]:
    toks = tokens(" ".join(ANSWERS.values())) * 50
    chunker = ClauseChunker()
    t0 = time.perf_counter()
    pieces = sum(len(chunker.push(tok)) for tok in toks) + len(chunker.flush())
    per_token = (time.perf_counter() - t0) / len(toks)
    return [["push, per token", per_token * 1e6, len(toks), pieces]]


def gil_probe(work: Callable[[], object], calls: int) -> list[float]:
    """Per call of `work` on this thread: its duration (ms), how much a Python thread sleeping 0.5 ms
    got to run during it (wake-ups relative to its rate between calls: ~1 when the GIL is free,
    0 when held), and the longest wait for a wake-up inside a call (ms)."""
    stop = threading.Event()
    stamps: list[float] = []

    def tick() -> None:
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.0005)

    ticker = threading.Thread(target=tick)
    ticker.start()
    windows = []
    for _ in range(calls):
        time.sleep(0.005)
        t0 = time.perf_counter()
        work()
        windows.append((t0, time.perf_counter()))
    stop.set()
    ticker.join()
    busy = sum(b - a for a, b in windows)
    inside = [[t for t in stamps if a <= t <= b] for a, b in windows]
    idle_rate = (len(stamps) - sum(map(len, inside))) / (stamps[-1] - stamps[0] - busy)
    longest = max(max(_diffs([a, *ts, b])) for (a, b), ts in zip(windows, inside, strict=True))
    return [median([b - a for a, b in windows]) * 1e3, sum(map(len, inside)) / busy / idle_rate, longest * 1e3]


def _diffs(values: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(values)]


def bench_gil(tts: PiperTTS) -> list[list[Any]]:
    from piper.phonemize_espeak import EspeakPhonemizer  # the benchmark only, not the server

    phonemizer = EspeakPhonemizer()
    sentence = RTF_TEXTS["sentence (17 words)"]
    cases: dict[str, tuple[Callable[[], object], int]] = {
        "synthesize long (40 words)": (lambda: tts.synthesize(RTF_TEXTS["long (40 words)"]), 5),
        "espeak phonemize 24 sentences": (lambda: phonemizer.phonemize("en-us", (sentence + " ") * 24), 100),
        "espeak phonemize 1 sentence": (lambda: phonemizer.phonemize("en-us", sentence), 300),
    }
    return [[name, *gil_probe(work, calls)] for name, (work, calls) in cases.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tokens-per-s", type=float, default=130.0)
    args = parser.parse_args()

    tts = PiperTTS(threads=1)
    tts.synthesize(GREETING)  # one-time costs: espeak start, allocations
    results: dict[str, list[list[Any]]] = {}
    results["first_audio"] = bench_first_audio(tts, args.tokens_per_s, args.repeats)
    print_table(
        f"Time to first audio, answer streamed at {args.tokens_per_s:g} tokens/s, 1 synthesis thread "
        f"(median of {args.repeats})",
        ["answer", "strategy", "pieces", "first piece", "cut at ms", "synth ms", "first audio ms", "stall ms"],
        results["first_audio"],
    )
    results["rtf"] = bench_rtf(args.repeats)
    print_table(
        f"Synthesis cost (median of {args.repeats})",
        ["threads", "text", "audio s", "p50 ms", "p99 ms", "RTF"],
        results["rtf"],
    )
    results["cache"] = bench_cache(tts, args.repeats)
    print_table(f'Greeting "{GREETING}"', ["path", "p50 us", "p99 us"], results["cache"])
    results["chunker"] = bench_chunker()
    print_table("ClauseChunker", ["operation", "us", "tokens", "pieces"], results["chunker"])
    results["gil"] = bench_gil(tts)
    print_table(
        "GIL: a Python thread waking every 0.5 ms, while the main thread works",
        ["main thread", "call p50 ms", "thread progress", "longest wait ms"],
        results["gil"],
    )
    write_json(args.json, {"platform": platform.platform(), "tokens_per_s": args.tokens_per_s, "results": results})


if __name__ == "__main__":
    main()
