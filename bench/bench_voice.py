"""Voice-to-voice latency: end of the user's speech -> first byte of the spoken answer.

    python bench/bench_voice.py --models-dir var/models [--utterances 20] [--json out.json]

Every model is real and embedded (Silero, Whisper tiny.en, SmolLM2-135M, Piper).
A client streams Piper-spoken questions at real-time pace in 20 ms PCM16 chunks
over gRPC to an in-process server and measures, on its own clock, the time from
the last chunk holding speech to the first `audio` event of the answer. The
server's per-stage report (turn_end.latency) is printed beside it.

Baseline, in the same run and with the same models: the chain a user would
build by hand: wait the same end-of-turn silence, transcribe the utterance
with faster-whisper's `transcribe()`, generate the whole answer, synthesise it
with Piper, send. Informational only: nothing here passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import soxr

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from _table import median, pct, print_table, write_json
from antiphon.app import App, open_llm
from antiphon.config import load_settings
from antiphon.config_voice import VoiceSettings
from antiphon.inference.llm import ChatMessage, SamplingOptions
from antiphon.v1 import conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from antiphon.voice.engines import VoiceEngines, open_voice

RATE = 16_000
CHUNK_MS = 20
QUESTIONS = (
    "What is the capital of France?",
    "How many days are in a week?",
    "What color is the sky?",
    "Can you recommend a good book?",
    "What is two plus two?",
    "Where do penguins live?",
    "How do I boil an egg?",
    "What is the tallest mountain?",
    "Tell me a fun fact.",
    "What time does the sun rise?",
    "Why is the ocean salty?",
    "What should I eat for dinner?",
    "How far away is the moon?",
    "What is your name?",
    "Can you help me plan a trip?",
    "What is the weather like in spring?",
    "How do plants grow?",
    "What is a good name for a dog?",
    "Who invented the telephone?",
    "How can I sleep better?",
)


def settings(models_dir: str) -> Any:
    env = {
        "ANTIPHON_SERVER_PORT": "0",
        "ANTIPHON_TELEMETRY_METRICS_PORT": "0",
        "ANTIPHON_MODELS_DIR": models_dir,
        "ANTIPHON_TOOLS_DIR": "",
        "ANTIPHON_CONTEXT_MEMORY_DIR": "",
        "ANTIPHON_VOICE_ENABLED": "on",
        "ANTIPHON_LOG_LEVEL": "warning",
    }
    return load_settings(None, env)


def speech(engines: VoiceEngines, text: str) -> npt.NDArray[np.int16]:
    audio = engines.tts.synthesize(text)
    pcm = np.asarray(soxr.resample(audio, engines.tts.sample_rate, RATE), dtype=np.int16)
    loud = np.flatnonzero(np.abs(pcm) > 300)
    return pcm[: loud[-1] + 1]  # ends where the voice ends: that is "end of speech"


async def one_turn(stub: Any, audio: npt.NDArray[np.int16], session: str) -> dict[str, float]:
    call = stub.Converse()
    await call.write(
        pb.ClientEvent(
            session_config=pb.SessionConfig(
                session_id=session,
                input_audio=pb.AudioFormat(encoding=pb.AUDIO_ENCODING_PCM16, sample_rate_hz=RATE),
                generation=pb.GenerationOptions(greedy=True),
            )
        )
    )
    await call.read()
    loop = asyncio.get_running_loop()
    step = RATE * CHUNK_MS // 1000
    padded = np.concatenate([np.zeros(RATE // 4, np.int16), audio, np.zeros(RATE * 2, np.int16)])
    speech_end_chunk = (RATE // 4 + len(audio)) // step
    result: dict[str, float] = {}
    first_audio = asyncio.Event()

    async def read() -> None:
        while (event := await call.read()) is not grpc.aio.EOF:
            if event.HasField("audio") and "client_v2v_ms" not in result:
                result["client_v2v_ms"] = (loop.time() - result["speech_end_t"]) * 1000
                first_audio.set()
            elif event.HasField("turn_end"):
                lat = event.turn_end.latency
                result["early_start"] = float(lat.early_start)
                for name in (
                    "voice_to_voice_ms",
                    "endpoint_ms",
                    "transcript_ms",
                    "llm_first_token_ms",
                    "first_audio_ms",
                    "stt_ms",
                    "tts_ms",
                ):
                    result[name] = getattr(lat, name)
                return

    reader = asyncio.create_task(read())
    start = loop.time()
    for k, i in enumerate(range(0, len(padded), step)):
        await call.write(pb.ClientEvent(audio=pb.AudioChunk(data=padded[i : i + step].tobytes())))
        if k == speech_end_chunk:
            result["speech_end_t"] = loop.time()
        await asyncio.sleep(max(0.0, start + (k + 1) * CHUNK_MS / 1000 - loop.time()))
        if reader.done():
            break
    await asyncio.wait_for(reader, 60)
    await call.done_writing()
    return result


def baseline(engines: VoiceEngines, llm: Any, audio: npt.NDArray[np.int16], silence_ms: int) -> dict[str, float]:
    """The hand-built chain: silence wait, then faster-whisper, the whole answer, whole synthesis."""
    from faster_whisper import WhisperModel  # type: ignore[import-untyped]

    whisper: Any = baseline.__dict__.setdefault(
        "model",
        WhisperModel(str(engines.stt.path), device="cpu", compute_type="int8", cpu_threads=1),  # type: ignore[attr-defined]
    )
    t0 = time.perf_counter()
    segments, _ = whisper.transcribe(audio.astype(np.float32) / 32768, language="en", beam_size=1)
    text = " ".join(s.text for s in segments).strip()
    t1 = time.perf_counter()

    async def answer() -> str:
        messages = [
            ChatMessage(
                "system",
                "You are a friendly voice assistant on a call. Answer in one or two short "
                "spoken sentences, without lists, markdown or emojis.",
            ),
            ChatMessage("user", text),
        ]
        stream = llm.chat(messages, SamplingOptions(max_tokens=80, greedy=True))
        parts = [t async for t in stream]
        return "".join(parts)

    reply = asyncio.run_coroutine_threadsafe(answer(), baseline.loop).result()  # type: ignore[attr-defined]
    t2 = time.perf_counter()
    engines.tts.synthesize(reply)
    t3 = time.perf_counter()
    return {
        "stt": (t1 - t0) * 1000,
        "llm": (t2 - t1) * 1000,
        "tts": (t3 - t2) * 1000,
        "total": silence_ms + (t3 - t0) * 1000,
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    s = settings(args.models_dir)
    engines = open_voice(VoiceSettings(enabled="on"))
    assert engines is not None
    llm = await open_llm(s)
    app = App(s, llm=llm, voice=engines)
    await app.start()
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.utterances)]
    audios = [speech(engines, q) for q in questions]
    rows: list[dict[str, float]] = []
    together: dict[int, list[dict[str, float]]] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = conversation_pb2_grpc.ConversationStub(channel)
            await one_turn(stub, audios[0], "warm")  # first-call costs out of the numbers
            for i, audio in enumerate(audios):
                rows.append(await one_turn(stub, audio, f"bench-{i}"))
            for n in args.concurrent:
                # n callers talking at once, each on its own session, their questions offset by 300 ms
                async def caller(k: int, n: int = n) -> list[dict[str, float]]:
                    await asyncio.sleep(0.3 * k)
                    # every caller asks the same three questions: only the load differs between rows
                    return [await one_turn(stub, audios[j % len(audios)], f"c{n}-{k}-{j}") for j in range(3)]

                results = await asyncio.gather(*(caller(k) for k in range(n)))
                together[n] = [r for rs in results for r in rs]
        base: list[dict[str, float]] = []
        if not args.no_baseline:
            baseline.loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
            for audio in audios[: args.baseline_utterances]:
                base.append(await asyncio.to_thread(baseline, engines, llm, audio, s.voice.vad_silence_ms))
    finally:
        await app.stop(grace_s=1)
        engines.close()
    return {"rows": rows, "baseline": base, "concurrent": together}


def report(data: dict[str, Any]) -> None:
    rows, base = data["rows"], data["baseline"]
    cols = (
        "client_v2v_ms",
        "voice_to_voice_ms",
        "endpoint_ms",
        "transcript_ms",
        "llm_first_token_ms",
        "first_audio_ms",
        "stt_ms",
        "tts_ms",
    )
    print_table(
        f"Voice-to-voice, {len(rows)} utterances (ms; client = measured by the caller)",
        ("stage", "p50", "p95", "min", "max"),
        [
            (
                c,
                median([r[c] for r in rows]),
                pct([r[c] for r in rows], 95),
                min(r[c] for r in rows),
                max(r[c] for r in rows),
            )
            for c in cols
            if all(c in r for r in rows)
        ],
    )
    if data.get("concurrent"):
        print_table(
            "Voice-to-voice with callers talking at once (ms, measured by the callers; 3 turns each)",
            ("callers", "turns", "p50", "p95", "max", "server p50", "early starts"),
            [
                (
                    n,
                    len(rs),
                    median([r["client_v2v_ms"] for r in rs]),
                    pct([r["client_v2v_ms"] for r in rs], 95),
                    max(r["client_v2v_ms"] for r in rs),
                    median([r.get("voice_to_voice_ms", 0.0) for r in rs]),
                    sum(r.get("early_start", 0.0) > 0 for r in rs),
                )
                for n, rs in sorted(data["concurrent"].items())
            ],
        )
    if base:
        ours = median([r["client_v2v_ms"] for r in rows])
        total = median([b["total"] for b in base])
        print_table(
            f"Hand-built sequential chain, same models, {len(base)} utterances (ms)",
            ("chain", "silence", "stt", "llm (whole answer)", "tts (whole answer)", "total p50", "vs antiphon"),
            [
                (
                    "faster-whisper + LLM + Piper",
                    400,
                    median([b["stt"] for b in base]),
                    median([b["llm"] for b in base]),
                    median([b["tts"] for b in base]),
                    total,
                    f"{total / ours:.2f}x",
                )
            ],
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models-dir", default="var/models")
    parser.add_argument("--utterances", type=int, default=20)
    parser.add_argument("--baseline-utterances", type=int, default=5)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument(
        "--concurrent", type=lambda v: [int(x) for x in v.split(",") if x], default=[2, 4], help="e.g. 2,4"
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    data = asyncio.run(run(args))
    report(data)
    write_json(args.json, data)


if __name__ == "__main__":
    main()
