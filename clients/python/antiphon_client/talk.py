"""`antiphon talk`: speak a WAV file (or the microphone) to an agent over Converse and save its spoken answer.

The answers of all turns are written back to back into one WAV file, without the silences between them;
an interrupted answer is cut where the server says the user stopped hearing it (played_ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import sys
import wave
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import soxr

from antiphon.native import g711
from antiphon.v1 import events_pb2 as pb
from antiphon.v1.conversation_pb2_grpc import ConversationStub
from antiphon_client.client import auth_metadata

PCM16_RATES = (8000, 16000, 24000, 48000)
ENCODINGS = {"pcm16": pb.AUDIO_ENCODING_PCM16, "mulaw": pb.AUDIO_ENCODING_MULAW, "alaw": pb.AUDIO_ENCODING_ALAW}
# After the last chunk the server may still be working through queued audio: its speech events come later.
SETTLE_S = 0.5
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
_ENCODE: dict[str, Callable[[bytes], bytes]] = {"mulaw": g711.ulaw_encode, "alaw": g711.alaw_encode}
_DECODE: dict[str, Callable[[bytes], bytes]] = {"mulaw": g711.ulaw_decode, "alaw": g711.alaw_decode}


class WavError(ValueError):
    """The input WAV is missing or not 16-bit PCM."""


@dataclass(frozen=True)
class TalkOptions:
    encoding: str = "pcm16"
    rate: int | None = None  # wire rate; None: the file's if allowed, else 16 kHz (G.711: 8 kHz)
    chunk_ms: int = 20
    pace: bool = True  # send in real time, as a microphone would
    barge_in: bool | None = None  # None: the server's default
    session_id: str = ""
    profile: str = ""
    tail_ms: int = 1500  # trailing silence, so the last utterance's endpoint is found
    wait_s: float = 30.0  # after the last audio, for the utterances still unanswered

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"format: one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if not 10 <= self.chunk_ms <= 200:
            raise ValueError(f"chunk-ms: 10..200, got {self.chunk_ms}")

    def wire_rate(self, source_rate: int) -> int:
        allowed, default = (PCM16_RATES, 16000) if self.encoding == "pcm16" else ((8000,), 8000)
        rate = self.rate or (source_rate if source_rate in allowed else default)
        if rate not in allowed:
            raise ValueError(f"rate: {self.encoding} supports {', '.join(map(str, allowed))} Hz, got {rate}")
        return rate


@dataclass
class TalkTurn:
    turn_id: str
    transcript: str  # the final transcript that started the turn
    answer: str = ""
    reason: str = ""  # completed, max_tokens, interrupted, error
    latency: dict[str, float] = field(default_factory=dict)
    usage: dict[str, int] = field(default_factory=dict)
    interrupted_ms: int | None = None  # played_ms when the user talked over the answer
    heard_text: str = ""
    errors: list[str] = field(default_factory=list)


@dataclass
class TalkResult:
    session_id: str = ""
    turns: list[TalkTurn] = field(default_factory=list)
    audio: bytes = b""  # the answers, PCM16 mono at `rate`
    rate: int = 0
    errors: list[str] = field(default_factory=list)  # session-level error events
    ended: str = ""  # session_ended reason, if the server ended the session
    unanswered: int = 0  # utterances whose turn had not ended when the stream closed

    @property
    def duration_ms(self) -> float:
        return len(self.audio) / 2 * 1000 / self.rate if self.rate else 0.0


# Called for every server event; the turn is given with the turn_end that completes it.
Listener = Callable[[pb.ServerEvent, TalkTurn | None], None]


def read_wav(path: str | Path) -> tuple[npt.NDArray[np.int16], int]:
    """16-bit PCM samples (channels averaged to mono) and the sample rate."""
    try:
        with wave.open(str(path), "rb") as w:
            width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except OSError as exc:  # missing, a directory, unreadable
        raise WavError(f"{path}: {exc.strerror or exc}") from None
    except (wave.Error, EOFError) as exc:
        raise WavError(f"{path}: not a PCM WAV file ({exc or 'truncated'})") from None
    if width != 2:
        raise WavError(f"{path}: {8 * width}-bit samples; only 16-bit PCM is supported")
    samples = np.frombuffer(raw, dtype="<i2")
    if channels > 1:
        samples = samples[: len(samples) // channels * channels].reshape(-1, channels).mean(axis=1).round()
    if not len(samples):
        raise WavError(f"{path}: no audio in the file")
    return samples.astype(np.int16), rate


def write_wav(path: str | Path, pcm16: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm16)


async def _paced(chunks: list[bytes], chunk_ms: int, pace: bool) -> AsyncIterator[bytes]:
    """Chunk k leaves at t0 + k * chunk_ms (sleeping to an absolute schedule does not drift)."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k, chunk in enumerate(chunks):
        if pace and (delay := t0 + k * chunk_ms / 1000 - loop.time()) > 0:
            await asyncio.sleep(delay)
        yield chunk


def _split(pcm16: bytes, rate: int, chunk_ms: int) -> list[bytes]:
    """Whole chunks; a short last one is padded with silence."""
    step = rate * chunk_ms // 1000 * 2
    pcm16 += bytes(-len(pcm16) % step)
    return [pcm16[i : i + step] for i in range(0, len(pcm16), step)]


class _Collector:
    """Reads the server's events into a TalkResult and knows whether an utterance is still unanswered.

    Each speech_started is an utterance; its final transcript resolves it (empty text: noise, no turn) or
    queues a turn, which its turn_end resolves. Turns run in the order spoken, so transcripts pair in order.
    """

    def __init__(self, result: TalkResult, encoding: str, listener: Listener | None) -> None:
        self.result = result
        self._encoding = encoding
        self._listener = listener
        self._open = 0  # utterances without a final transcript yet
        self._queued: deque[str] = deque()  # final transcripts whose turn has not ended
        self._turns: dict[str, TalkTurn] = {}
        self._audio: dict[str, list[bytes]] = {}
        self.started = asyncio.Event()  # session_started, or the stream ended before it
        self.settled = asyncio.Event()  # nothing outstanding

    @property
    def outstanding(self) -> int:
        return self._open + len(self._queued)

    async def read(self, call: grpc.aio.StreamStreamCall) -> None:
        try:
            while (event := await call.read()) is not grpc.aio.EOF:
                done = self._on(event)
                if self._listener is not None:
                    self._listener(event, done)
                (self.settled.clear if self.outstanding else self.settled.set)()
        finally:
            self.started.set()
            self.settled.set()  # the stream is over: nothing more will come
            self.result.unanswered = self.outstanding
            self._assemble()

    def _turn(self, turn_id: str) -> TalkTurn:
        if turn_id not in self._turns:
            self._turns[turn_id] = TalkTurn(turn_id, self._queued[0] if self._queued else "")
            self._audio[turn_id] = []
        return self._turns[turn_id]

    def _on(self, event: pb.ServerEvent) -> TalkTurn | None:
        kind, tid = event.WhichOneof("event"), event.turn_id
        if kind == "session_started":
            self.result.session_id = event.session_started.session_id
            self.started.set()
        elif kind == "speech_started":
            self._open += 1
        elif kind == "transcript" and event.transcript.is_final:
            self._open = max(0, self._open - 1)
            self._queued.extend([event.transcript.text] if event.transcript.text else [])
        elif kind == "agent_text":
            self._turn(tid).answer += event.agent_text.delta
        elif kind == "audio":
            self._turn(tid)
            self._audio[tid].append(event.audio.data)
        elif kind == "interrupted":
            turn = self._turn(tid)
            turn.interrupted_ms, turn.heard_text = event.interrupted.played_ms, event.interrupted.heard_text
        elif kind == "error":
            message = f"{_CODE_NAMES.get(event.error.code, 'UNKNOWN')}: {event.error.message}"
            # A failed recognition is reported here too; its utterance then waits out options.wait_s.
            (self._turn(tid).errors if tid else self.result.errors).append(message)
        elif kind == "turn_end":
            turn, end = self._turn(tid), event.turn_end
            if self._queued:
                self._queued.popleft()
            turn.reason = pb.TurnEnd.Reason.Name(end.reason).removeprefix("REASON_").lower()
            turn.latency = {f.name: float(getattr(end.latency, f.name)) for f in pb.Latency.DESCRIPTOR.fields}
            turn.usage = {"input_tokens": end.usage.input_tokens, "output_tokens": end.usage.output_tokens}
            self.result.turns.append(turn)
            return turn
        elif kind == "session_ended":
            self.result.ended = event.session_ended.reason
        return None

    def _assemble(self) -> None:
        pieces = []
        for turn_id, chunks in self._audio.items():
            pcm = _DECODE.get(self._encoding, bytes)(b"".join(chunks))
            played = self._turns[turn_id].interrupted_ms
            if played is not None:  # keep what the user heard, not the lead the server had sent ahead
                pcm = pcm[: played * self.result.rate // 1000 * 2]
            pieces.append(pcm)
        self.result.audio = b"".join(pieces)


async def converse(
    target: grpc.aio.Channel | ConversationStub,
    pcm16_chunks: AsyncIterable[bytes],
    rate: int,
    options: TalkOptions,
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    listener: Listener | None = None,
) -> TalkResult:
    """Stream PCM16 chunks at the wire `rate` (encoded per `options`), then a trailing silence; collect the turns."""
    stub = target if isinstance(target, ConversationStub) else ConversationStub(target)
    config = pb.SessionConfig(
        session_id=options.session_id,
        agent_profile=options.profile,
        input_audio=pb.AudioFormat(encoding=ENCODINGS[options.encoding], sample_rate_hz=rate, channels=1),
    )
    if options.barge_in is not None:
        config.barge_in.mode = pb.BargeIn.MODE_VAD if options.barge_in else pb.BargeIn.MODE_OFF
    result = TalkResult(rate=rate)
    collector = _Collector(result, options.encoding, listener)
    call = stub.Converse(metadata=metadata)
    reader: asyncio.Task[None] | None = None
    try:
        await call.write(pb.ClientEvent(session_config=config))
        reader = asyncio.create_task(collector.read(call), name="talk-reader")
        # Audio written to a stream the server already rejected hides its status behind a local INTERNAL.
        await asyncio.wait_for(collector.started.wait(), options.wait_s)
        silence = _split(bytes(rate * options.tail_ms // 1000 * 2), rate, options.chunk_ms)
        encode, seq = _ENCODE.get(options.encoding, bytes), 0
        for source in (pcm16_chunks, _paced(silence, options.chunk_ms, options.pace)):
            async for pcm in source:
                if reader.done():
                    break  # the server ended the stream: its status comes from the reader
                seq += 1
                try:
                    await call.write(pb.ClientEvent(audio=pb.AudioChunk(data=encode(pcm), seq=seq)))
                except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
                    break
        if not reader.done():
            await asyncio.sleep(SETTLE_S)
            with contextlib.suppress(TimeoutError):  # past the wait, half-close anyway: queued turns still finish
                await asyncio.wait_for(collector.settled.wait(), options.wait_s)
            await call.done_writing()
        await asyncio.wait_for(reader, options.wait_s)
    except BaseException:
        call.cancel()
        raise
    finally:
        if reader is not None and not reader.done():
            reader.cancel()
            await asyncio.wait([reader])
    return result


def file_source(audio: npt.NDArray[np.int16], rate: int, options: TalkOptions) -> tuple[AsyncIterator[bytes], int]:
    """The audio as (paced) PCM16 chunks at the wire rate, and that rate."""
    wire = options.wire_rate(rate)
    if wire != rate:
        audio = soxr.resample(audio, rate, wire)  # int16 in, int16 out
    return _paced(_split(audio.astype("<i2").tobytes(), wire, options.chunk_ms), options.chunk_ms, options.pace), wire


async def talk(
    target: grpc.aio.Channel | ConversationStub,
    audio: npt.NDArray[np.int16],
    rate: int,
    options: TalkOptions | None = None,
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    listener: Listener | None = None,
) -> TalkResult:
    """Speak mono PCM16 `audio` (at `rate`) to the agent; returns its turns and the answers' audio."""
    options = options or TalkOptions()
    source, wire = file_source(audio, rate, options)
    return await converse(target, source, wire, options, metadata=metadata, listener=listener)


def latency_line(latency: dict[str, float]) -> str:
    ms = {k.removesuffix("_ms"): round(v) for k, v in latency.items()}
    if not ms.get("voice_to_voice"):  # no audio was sent (interrupted early, synthesis failed)
        return f"latency: first token {ms.get('first_token', 0)} ms, total {ms.get('total', 0)} ms"
    return (
        f"latency: voice-to-voice {ms['voice_to_voice']} ms = endpoint {ms['endpoint']}"
        f" + transcript {ms['transcript']} + llm first token {ms['llm_first_token']}"
        f" + first audio {ms['first_audio']} (stt {ms['stt']} ms, tts {ms['tts']} ms"
        + (", answer started early)" if latency.get("early_start") else ")")
    )


class _Printer:
    """Human-readable lines (partials overwrite one line on a terminal), or one JSON object per turn."""

    def __init__(self, as_json: bool, tty: bool) -> None:
        self._json, self._tty, self._partial = as_json, tty, False

    def __call__(self, event: pb.ServerEvent, turn: TalkTurn | None) -> None:
        kind, out = event.WhichOneof("event"), sys.stdout
        if kind == "error":
            print(f"[error {_CODE_NAMES.get(event.error.code, 'UNKNOWN')}] {event.error.message}", file=sys.stderr)
        if self._json:
            if turn is not None:
                print(json.dumps(asdict(turn)), flush=True)
            return
        final = kind == "transcript" and event.transcript.is_final
        if self._partial and (kind == "transcript" or turn is not None):
            out.write("\r\033[K")  # the partial line is replaced
            self._partial = False
        if kind == "transcript" and not final and self._tty:
            out.write(f"... {event.transcript.text}")
            self._partial = True
        elif final and event.transcript.text:
            out.write(f"you: {event.transcript.text}\n")
        elif turn is not None:
            out.write(f"agent: {turn.answer.strip()}\n")
            if turn.interrupted_ms is not None:
                out.write(f"[interrupted after {turn.interrupted_ms} ms: heard '{turn.heard_text}']\n")
            out.write(latency_line(turn.latency) + "\n")
        out.flush()


def _microphone(rate: int, chunk_ms: int, seconds: float) -> AsyncIterator[bytes]:
    try:
        sd = importlib.import_module("sounddevice")
    except (ImportError, OSError) as exc:  # OSError: the module is installed but PortAudio is not
        raise ValueError(f"--mic needs the sounddevice module and PortAudio ({exc})") from None
    return _record(sd, rate, chunk_ms, seconds)


async def _record(sd: Any, rate: int, chunk_ms: int, seconds: float) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    blocks: asyncio.Queue[bytes] = asyncio.Queue()

    def on_block(data: Any, frames: int, time: Any, status: Any) -> None:  # PortAudio's thread
        loop.call_soon_threadsafe(blocks.put_nowait, bytes(data))

    block = rate * chunk_ms // 1000
    with sd.RawInputStream(samplerate=rate, blocksize=block, channels=1, dtype="int16", callback=on_block):
        print(f"listening for {seconds:g} s...", file=sys.stderr)
        for _ in range(round(seconds * 1000 / chunk_ms)):
            yield await blocks.get()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", nargs="?", metavar="INPUT.wav", help="16-bit PCM WAV, mono or stereo, any rate")
    parser.add_argument("-o", "--output", metavar="ANSWER.wav", help="write the spoken answers (mono, 16-bit)")
    parser.add_argument("--address", default="127.0.0.1:50051", help="server address (host:port)")
    parser.add_argument("--api-key", help="or ANTIPHON_API_KEY")
    parser.add_argument("--token", help="a JWT, or ANTIPHON_TOKEN")
    parser.add_argument("--session", default="", help="session id to continue (default: a new session)")
    parser.add_argument("--profile", default="", help="agent profile (default: the server's default)")
    parser.add_argument("--format", choices=tuple(ENCODINGS), default="pcm16", help="wire encoding (G.711: 8 kHz)")
    parser.add_argument("--rate", type=int, choices=PCM16_RATES, help="PCM16 wire rate (default: the file's, or 16000)")
    parser.add_argument("--chunk-ms", type=int, default=20, help="audio per message, 10..200 ms")
    parser.add_argument("--no-pace", action="store_true", help="send as fast as possible, not in real time")
    parser.add_argument("--barge-in", choices=("on", "off"), help="speech over the answer interrupts it")
    parser.add_argument("--wait", type=float, default=30.0, metavar="S", help="wait for answers after the audio")
    parser.add_argument("--json", action="store_true", help="print one JSON object per turn")
    parser.add_argument("--mic", action="store_true", help="speak into the microphone (needs sounddevice)")
    parser.add_argument("--seconds", type=float, default=10.0, help="with --mic: how long to listen")


async def run(args: argparse.Namespace) -> int:
    try:
        options = TalkOptions(
            encoding=args.format,
            rate=args.rate,
            chunk_ms=args.chunk_ms,
            pace=not args.no_pace,
            barge_in=None if args.barge_in is None else args.barge_in == "on",
            session_id=args.session,
            profile=args.profile,
            wait_s=args.wait,
        )
        if args.mic:  # live audio at the wire rate: nothing to convert
            rate = options.wire_rate(16000)
            source = _microphone(rate, options.chunk_ms, args.seconds)
        elif args.input:
            audio, file_rate = read_wav(args.input)
            source, rate = file_source(audio, file_rate, options)
        else:
            raise ValueError("give an INPUT.wav file, or --mic")
    except ValueError as exc:
        print(f"antiphon talk: {exc}", file=sys.stderr)
        return 2
    metadata, printer = auth_metadata(args.api_key, args.token), _Printer(args.json, sys.stdout.isatty())
    async with grpc.aio.insecure_channel(args.address) as channel:
        try:
            await asyncio.wait_for(channel.channel_ready(), 5.0)
        except TimeoutError:
            print(f"cannot reach an Antiphon server at {args.address}", file=sys.stderr)
            return 2
        try:
            result = await converse(channel, source, rate, options, metadata=metadata, listener=printer)
        except TimeoutError:
            print(f"error: DEADLINE_EXCEEDED: the server did not finish within {args.wait:g} s", file=sys.stderr)
            return 1
    if args.output:
        write_wav(args.output, result.audio, result.rate)
        print(f"wrote {args.output}: {result.duration_ms / 1000:.2f} s at {result.rate} Hz", file=sys.stderr)
    if result.unanswered:
        print(f"error: {result.unanswered} utterance(s) got no answer before the stream ended", file=sys.stderr)
        return 1
    return 0


def main(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except grpc.aio.AioRpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
