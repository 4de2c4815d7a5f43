"""Concurrent voice streams on one core through the real gRPC path, and memory per voice session.

    python bench/bench_voice_streams.py [--json out.json] [--streams 25,50,75,100,150,200] [--seconds 10]
                                        [--sessions 200] [--quick]

The server is `App` in its own process, pinned to one core, with the real Silero
VAD and the real ingest path. Recognition and synthesis are excluded, as the
goal states: the recogniser is a double that hears no words (so no turn starts
and nothing is synthesised) and partial transcripts are off. The load generator
is this process, pinned to the other core.

(a) Streams: each step opens N Converse streams (mu-law 8 kHz in and out, vad
and barge-in defaults) over ceil(N/50) channels. Every stream sends a 20 ms
chunk every 20 ms of wall time, looping the 50%-silence Piper speech of
bench_voice_ingest.py; streams start at one of 16 audio phases and are
staggered over a sixteenth of the loop, so speech is spread evenly. Frame-to-event
latency: the ingest path is deterministic in audio time, so an offline replay of
each phase through `VoiceIngest` (same settings, real Silero) says which chunk
causes each speech_started and speech_stopped; latency = the event's arrival
minus that chunk's send, for chunks sent inside the --seconds measurement
window (after the ramp and 1 s of settling). An event whose audio_ms disagrees
with the replay is counted as a mismatch and left out. Server CPU comes from
/proc/<pid>/stat over the window; "late" counts chunks the client sent more than
20 ms behind schedule (the client, not the server, was then the limit). A step
is ok when p99 <= 20 ms and at most 0.1% of chunks were late. After a step each
stream half-closes; streams still open 2 s later are cancelled and counted.
The server's own logs go to a file in the temp directory, named at the end
when it is not empty.

(b) Memory: a fresh server process with tracemalloc on; 10 warm-up sessions,
then --sessions more voice sessions, each sent 1.5 s of audio (its first
utterance has begun, so the audio history and the Silero state are live) and
kept open. Per session: VmRSS growth (less tracemalloc's own bookkeeping) and
traced Python-heap growth, divided by the count. Goal: <= 2 MB per session.

The 2 cores are shared with other work, so the figures are noisy. Informational only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: the recognition and model doubles
from _table import median, pct, print_table, write_json
from _voice_server import proc_stat, server
from antiphon.api.voice_channel import barge_in_settings, vad_settings
from antiphon.config_voice import VoiceSettings
from antiphon.v1 import conversation_pb2_grpc
from antiphon.v1 import events_pb2 as pb
from antiphon.voice.endpointer import SpeechStarted
from antiphon.voice.formats import AudioSpec, Encoding
from antiphon.voice.ingest import Utterance, VoiceIngest
from antiphon.voice.silero import SileroVad
from bench_voice_ingest import speech

MULAW = pb.AudioFormat(encoding=pb.AUDIO_ENCODING_MULAW, sample_rate_hz=8000)
CHUNK_S = 0.02
PHASES = 16
STREAMS_PER_CHANNEL = 50
SETTLE_S = 1.0
LATENCY_GOAL_MS = 20.0
LATE_SHARE_OK = 0.001
MEMORY_GOAL_MB = 2.0
EVENTS = ("speech_started", "speech_stopped")
CLOSE_WAIT_S = 2.0


# ---------------------------------------------------------------------------- expected events


@dataclass(frozen=True)
class Expected:
    kind: str
    chunk: int  # index (from the stream's first chunk) of the chunk whose ingest emits the event
    audio_ms: float


def replay(chunks: list[bytes], phase: int, n_chunks: int, silero: SileroVad) -> list[Expected]:
    """The events the server's ingest emits for a stream starting at chunk `phase` of the loop."""
    defaults = VoiceSettings()
    ingest = VoiceIngest(
        AudioSpec(Encoding.MULAW, 8000),
        silero.open_stream(),
        vad_settings(pb.VadSettings(), defaults),
        barge_in_settings(pb.BargeIn(), defaults),
        max_chunk_ms=defaults.max_chunk_ms,
        partial_interval_ms=0,
        early_decode_silence_ms=defaults.early_decode_silence_ms,
        max_idle_ms=defaults.max_idle_s * 1000,
    )
    out: list[Expected] = []
    for k in range(n_chunks):
        for event in ingest.feed(chunks[(phase + k) % len(chunks)]):
            if isinstance(event, SpeechStarted):
                out.append(Expected("speech_started", k, event.audio_ms))
            elif isinstance(event, Utterance):
                out.append(Expected("speech_stopped", k, event.stopped.audio_ms))
    return out


# ---------------------------------------------------------------------------- load generator


@dataclass
class StreamLog:
    sent: list[float] = field(default_factory=list)  # send time of each chunk (loop clock)
    lag: list[float] = field(default_factory=list)  # how far behind schedule each send was
    received: list[tuple[str, float, float]] = field(default_factory=list)  # (kind, arrival, audio_ms)
    hung: bool = False  # the stream did not end within CLOSE_WAIT_S of the half-close
    error: str = ""  # the status the server ended the stream with, when not OK


async def _read(call: Any, log: StreamLog) -> None:
    loop = asyncio.get_running_loop()
    try:
        while (event := await call.read()) is not grpc.aio.EOF:
            kind = event.WhichOneof("event")
            if kind == "speech_started":
                log.received.append((kind, loop.time(), event.speech_started.audio_ms))
            elif kind == "speech_stopped":
                log.received.append((kind, loop.time(), event.speech_stopped.audio_ms))
    except grpc.aio.AioRpcError as exc:
        log.error = exc.code().name


async def _stream(
    *, channel: grpc.aio.Channel, chunks: list[bytes], phase: int, start: float, end: float, log: StreamLog
) -> None:
    loop = asyncio.get_running_loop()
    call = conversation_pb2_grpc.ConversationStub(channel).Converse()
    await call.write(pb.ClientEvent(session_config=pb.SessionConfig(input_audio=MULAW)))
    first = await call.read()
    assert first.WhichOneof("event") == "session_started", first
    reader = asyncio.create_task(_read(call, log))
    k = 0
    while (due := start + k * CHUNK_S) < end and not reader.done():
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        now = loop.time()
        log.sent.append(now)
        log.lag.append(now - due)
        await call.write(pb.ClientEvent(audio=pb.AudioChunk(data=chunks[(phase + k) % len(chunks)])))
        k += 1
    await asyncio.sleep(0.3)  # events of the last chunks
    with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):  # the server may have ended it
        await call.done_writing()
    try:
        async with asyncio.timeout(CLOSE_WAIT_S):
            await reader
    except TimeoutError:
        log.hung = True
        reader.cancel()
        call.cancel()


@dataclass
class StepResult:
    streams: int
    server_cpu_pct: float
    client_cpu_pct: float
    latencies_ms: list[float]
    mismatches: int
    late: int
    chunks: int
    hung: int
    errors: int

    @property
    def ok(self) -> bool:
        p99 = pct(self.latencies_ms, 99)
        return bool(self.latencies_ms) and p99 <= LATENCY_GOAL_MS and self.late <= LATE_SHARE_OK * self.chunks


async def step(
    *,
    address: str,
    server_pid: int,
    n: int,
    chunks: list[bytes],
    expected: dict[int, list[Expected]],
    seconds: float,
) -> StepResult:
    loop = asyncio.get_running_loop()
    ramp = len(chunks) / PHASES * CHUNK_S
    channels = [grpc.aio.insecure_channel(address) for _ in range(math.ceil(n / STREAMS_PER_CHANNEL))]
    logs = [StreamLog() for _ in range(n)]
    per_group = math.ceil(n / PHASES)
    t0 = loop.time() + 1.0  # time to open every stream first
    window = (t0 + ramp + SETTLE_S, t0 + ramp + SETTLE_S + seconds)
    phases = [(i % PHASES) * len(chunks) // PHASES for i in range(n)]
    tasks = [
        asyncio.create_task(
            _stream(
                channel=channels[i % len(channels)],
                chunks=chunks,
                phase=phases[i],
                start=t0 + (i // PHASES) / per_group * ramp,
                end=window[1],
                log=logs[i],
            )
        )
        for i in range(n)
    ]
    await asyncio.sleep(max(0.0, window[0] - loop.time()))
    cpu0, client0 = proc_stat(server_pid)[0], time.process_time()
    await asyncio.sleep(max(0.0, window[1] - loop.time()))
    cpu1, client1 = proc_stat(server_pid)[0], time.process_time()
    await asyncio.gather(*tasks)
    for channel in channels:
        await channel.close()

    latencies: list[float] = []
    mismatches = late = sent = 0
    for log, phase in zip(logs, phases, strict=True):
        for i, t in enumerate(log.sent):
            if window[0] <= t < window[1]:
                sent += 1
                late += log.lag[i] > CHUNK_S
        for kind in EVENTS:
            want = [e for e in expected[phase] if e.kind == kind and e.chunk < len(log.sent)]
            got = [r for r in log.received if r[0] == kind]
            for e, (_, arrival, audio_ms) in zip(want, got, strict=False):
                if not window[0] <= log.sent[e.chunk] < window[1]:
                    continue
                if abs(audio_ms - e.audio_ms) > 1:
                    mismatches += 1
                    continue
                latencies.append((arrival - log.sent[e.chunk]) * 1000)
    return StepResult(
        n,
        (cpu1 - cpu0) / seconds * 100,
        (client1 - client0) / seconds * 100,
        latencies,
        mismatches,
        late,
        sent,
        sum(log.hung for log in logs),
        sum(bool(log.error) for log in logs),
    )


# ---------------------------------------------------------------------------- memory


async def _idle_session(
    channel: grpc.aio.Channel, audio: list[bytes], ready: asyncio.Event, done: asyncio.Event
) -> None:
    call = conversation_pb2_grpc.ConversationStub(channel).Converse()
    await call.write(pb.ClientEvent(session_config=pb.SessionConfig(input_audio=MULAW)))
    await call.read()
    for chunk in audio:
        await call.write(pb.ClientEvent(audio=pb.AudioChunk(data=chunk)))
    ready.set()
    await done.wait()
    call.cancel()


async def memory(address: str, conn: Connection, chunks: list[bytes], sessions: int) -> dict[str, float]:
    audio = chunks[: round(1.5 / CHUNK_S)]
    channel = grpc.aio.insecure_channel(address)
    done = asyncio.Event()

    async def open_many(n: int) -> list[asyncio.Task[None]]:
        readies = [asyncio.Event() for _ in range(n)]
        tasks = [asyncio.create_task(_idle_session(channel, audio, r, done)) for r in readies]
        for r in readies:
            await r.wait()
        await asyncio.sleep(1.0)  # the server has taken every chunk in
        return tasks

    def measure() -> tuple[int, int, int]:
        conn.send("mem")
        result: tuple[int, int, int] = conn.recv()
        return result

    warm = await open_many(10)
    rss0, heap0, over0 = measure()
    tasks = await open_many(sessions)
    rss1, heap1, over1 = measure()
    done.set()
    await asyncio.gather(*warm, *tasks, return_exceptions=True)
    await channel.close()
    mb = 1 / (1 << 20) / sessions
    return {
        "sessions": sessions,
        "rss_mb_per_session": ((rss1 - rss0) - (over1 - over0)) * mb,
        "heap_mb_per_session": (heap1 - heap0) * mb,
        "rss_mb_total": rss1 / (1 << 20),
    }


# ---------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--streams", default="25,50,75,100,150,200", help="stream counts to step through")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window of each step")
    parser.add_argument("--sessions", type=int, default=200, help="voice sessions opened for the memory figure")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 streams for 2 s, 20 sessions")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.seconds, args.sessions = "10", 2.0, 20
    counts = [int(s) for s in args.streams.split(",")]

    cores = sorted(os.sched_getaffinity(0))
    server_core = cores[0] if len(cores) > 1 else None
    if server_core is not None:
        os.sched_setaffinity(0, set(cores[1:]))
    else:
        print("one core only: server and load generator share it")
    chunks = speech().chunks("mulaw 8k")
    ramp = len(chunks) / PHASES * CHUNK_S
    n_chunks = round((1.0 + ramp + SETTLE_S + args.seconds) / CHUNK_S) + 50
    silero = SileroVad()
    expected = {
        p * len(chunks) // PHASES: replay(chunks, p * len(chunks) // PHASES, n_chunks, silero) for p in range(PHASES)
    }

    results: list[StepResult] = []
    log_path = Path(tempfile.gettempdir()) / f"antiphon-bench-voice-streams-{os.getpid()}.log"
    with server(server_core, str(log_path)) as (pid, address, _):
        for n in counts:
            result = asyncio.run(
                step(address=address, server_pid=pid, n=n, chunks=chunks, expected=expected, seconds=args.seconds)
            )
            results.append(result)
            print(f"  {n} streams: p99 {pct(result.latencies_ms, 99):.1f} ms, server CPU {result.server_cpu_pct:.0f}%")
    rows = [
        [
            r.streams,
            f"{r.server_cpu_pct:.0f}",
            f"{r.server_cpu_pct / r.streams:.2f}",
            f"{r.client_cpu_pct:.0f}",
            f"{median(r.latencies_ms):.1f} / {pct(r.latencies_ms, 99):.1f}",
            len(r.latencies_ms),
            r.mismatches,
            f"{r.late} ({100 * r.late / max(1, r.chunks):.2f}%)",
            "yes" if r.ok else "no",
        ]
        for r in results
    ]
    print_table(
        f"Paced mu-law 8 kHz voice streams, server on one core ({args.seconds:g} s per step)",
        [
            "streams",
            "server CPU %",
            "% per stream",
            "client CPU %",
            "event ms p50 / p99",
            "events",
            "mismatch",
            "chunks late",
            "ok?",
        ],
        rows,
    )
    if hung := sum(r.hung for r in results):
        print(f"{hung} streams did not end within {CLOSE_WAIT_S:g} s of the client's half-close (cancelled)")
    if failed := sum(r.errors for r in results):
        print(f"{failed} streams were ended by the server with an error status")
    passed = [r.streams for r in results if r.ok]
    print(f"most streams with p99 <= {LATENCY_GOAL_MS:g} ms: {max(passed) if passed else 'none of the steps'}")

    with server(None, str(log_path), trace=True) as (_, address, conn):
        mem = asyncio.run(memory(address, conn, chunks, args.sessions))
    errors = log_path.read_text(errors="replace").count("\n") if log_path.exists() else 0
    if errors:
        print(f"the server processes wrote {errors} lines of errors: {log_path}")
    else:
        log_path.unlink(missing_ok=True)
    print_table(
        f"Memory per open voice session ({args.sessions} sessions, 1.5 s of audio each)",
        ["measure", "MB per session", f"goal <= {MEMORY_GOAL_MB:g} MB"],
        [
            ["RSS growth", f"{mem['rss_mb_per_session']:.3f}", "met" if mem["rss_mb_per_session"] <= 2 else "missed"],
            ["Python heap (tracemalloc)", f"{mem['heap_mb_per_session']:.3f}", "-"],
        ],
    )
    write_json(
        args.json,
        {
            "python": platform.python_version(),
            "machine": platform.machine(),
            "seconds": args.seconds,
            "steps": [
                {
                    "streams": r.streams,
                    "server_cpu_pct": r.server_cpu_pct,
                    "client_cpu_pct": r.client_cpu_pct,
                    "p50_ms": median(r.latencies_ms),
                    "p99_ms": pct(r.latencies_ms, 99),
                    "events": len(r.latencies_ms),
                    "mismatches": r.mismatches,
                    "late_chunks": r.late,
                    "chunks": r.chunks,
                    "hung_at_close": r.hung,
                    "errors": r.errors,
                    "ok": r.ok,
                }
                for r in results
            ],
            "memory": mem,
        },
    )


if __name__ == "__main__":
    main()
