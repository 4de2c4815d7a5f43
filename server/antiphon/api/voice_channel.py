"""A Converse stream's voice side: audio chunks in, turn events and spoken answers out.

The reader task calls `on_audio` for each chunk; the ingest path runs inline
(microseconds per frame) and its events are handled here. Recognition never
blocks the reader: partials, the early decode at a pause and the final
transcript run as tasks, so barge-in is still detected while they work.
Finals are chained, so turns start in the order the user spoke them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from antiphon.aio import cancel_and_wait
from antiphon.config_voice import VoiceSettings
from antiphon.errors import AntiphonError, InvalidArgument
from antiphon.v1 import events_pb2 as pb
from antiphon.voice.endpointer import BargeIn, BargeInMode, BargeInSettings, SpeechStarted, VadSettings
from antiphon.voice.engines import VoiceEngines
from antiphon.voice.formats import AudioSpec, Encoding, parse_spec
from antiphon.voice.ingest import (
    Idle,
    IngestEvent,
    PartialDue,
    Pause,
    Pcm16,
    Resumed,
    Utterance,
    VoiceIngest,
    check_seq,
)
from antiphon.voice.speaker import Speaker
from antiphon.voice.stt import Transcription
from antiphon.voice.timing import VoiceTiming

if TYPE_CHECKING:
    from antiphon.api.stream_session import StreamSession

log = logging.getLogger(__name__)

METER_EVERY_MS = 1000  # audio is metered, and its rate limit checked, once per second of it

_ENCODINGS = {
    pb.AUDIO_ENCODING_PCM16: Encoding.PCM16,
    pb.AUDIO_ENCODING_MULAW: Encoding.MULAW,
    pb.AUDIO_ENCODING_ALAW: Encoding.ALAW,
}


def audio_spec(field: str, msg: pb.AudioFormat) -> AudioSpec:
    return parse_spec(field, _ENCODINGS.get(msg.encoding), msg.sample_rate_hz, msg.channels)


def vad_settings(msg: pb.VadSettings, defaults: VoiceSettings) -> VadSettings:
    try:
        return VadSettings(
            threshold=msg.threshold or defaults.vad_threshold,
            prefix_ms=msg.prefix_ms or defaults.vad_prefix_ms,
            silence_ms=msg.silence_ms or defaults.vad_silence_ms,
            min_speech_ms=msg.min_speech_ms or defaults.vad_min_speech_ms,
            max_turn_ms=msg.max_turn_ms or defaults.vad_max_turn_ms,
        )
    except ValueError as exc:
        raise InvalidArgument(f"session_config.{exc}") from None


def barge_in_settings(msg: pb.BargeIn, defaults: VoiceSettings) -> BargeInSettings:
    mode = BargeInMode.OFF if msg.mode == pb.BargeIn.MODE_OFF else BargeInMode.VAD
    try:
        return BargeInSettings(mode=mode, min_speech_ms=msg.min_speech_ms or defaults.barge_in_min_speech_ms)
    except ValueError as exc:
        raise InvalidArgument(f"session_config.{exc}") from None


class VoiceChannel:
    def __init__(
        self, session: StreamSession, engines: VoiceEngines, settings: VoiceSettings, config: pb.SessionConfig
    ) -> None:
        if config.language and config.language.lower().split("-")[0] != "en":
            raise InvalidArgument(f"session_config.language: only English (en) is available, got {config.language!r}")
        if config.voice and config.voice != engines.tts.voice_id:
            raise InvalidArgument(
                f"session_config.voice: unknown voice {config.voice!r}; available: {engines.tts.voice_id}"
            )
        self.input_spec = audio_spec("session_config.input_audio", config.input_audio)
        output = config.output_audio if config.HasField("output_audio") else config.input_audio
        self.output_spec = audio_spec("session_config.output_audio", output)
        self._session = session
        self._engines = engines
        self._settings = settings
        vad = vad_settings(config.vad, settings)
        self.barge_in = barge_in_settings(config.barge_in, settings)
        self.ingest = VoiceIngest(
            self.input_spec,
            engines.vad.open_stream(),
            vad,
            self.barge_in,
            max_chunk_ms=settings.max_chunk_ms,
            partial_interval_ms=settings.partial_interval_ms,
            early_decode_silence_ms=settings.early_decode_silence_ms,
            max_idle_ms=settings.max_idle_s * 1000,
        )
        self._in_seq = 0
        self._out_seq = 0
        self._utterance = 0  # counts utterances: a partial of an older one is dropped
        self._partial: asyncio.Task[None] | None = None
        self._early: tuple[int, int, asyncio.Task[Transcription]] | None = None
        self._final: asyncio.Task[None] | None = None
        self._speculating: asyncio.Task[None] | None = None
        self._speculate_enabled = settings.speculate
        self._unmetered_ms = 0.0
        self._last_partial = ""
        self._partial_of = 0

    # ------------------------------------------------------------------ input

    async def on_audio(self, chunk: pb.AudioChunk) -> None:
        check_seq(self._in_seq, chunk.seq)
        if chunk.seq:
            self._in_seq = chunk.seq
        events = self.ingest.feed(chunk.data)  # InvalidArgument: the stream ends with it
        await self._handle(events, time.perf_counter())
        duration_ms = self.input_spec.duration_ms(len(chunk.data))
        self._unmetered_ms += duration_ms
        if self._unmetered_ms >= METER_EVERY_MS:
            await self._meter_audio()

    async def end_of_input(self) -> None:
        """The client sends no more audio: what it said last is a turn, answered before the stream ends."""
        await self._handle(self.ingest.finish(), time.perf_counter())
        if self._final is not None:
            await asyncio.wait([self._final])

    async def _handle(self, events: list[IngestEvent], received: float) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self._utterance += 1
                await self._emit(speech_started=pb.SpeechStarted(audio_ms=event.audio_ms))
            elif isinstance(event, BargeIn):
                self._session.barge_in()
            elif isinstance(event, PartialDue):
                self._maybe_partial(event)
            elif isinstance(event, Pause):
                self._decode_early(event)
            elif isinstance(event, Resumed):
                self._drop_early()
            elif isinstance(event, Utterance):
                await self._on_utterance(event, received)
            elif isinstance(event, Idle):
                await self._session.end_idle(f"no speech for {event.silent_ms / 1000:.0f} s of audio")

    def _maybe_partial(self, due: PartialDue) -> None:
        if (self._partial is not None and not self._partial.done()) or not self._engines.stt_idle:
            return  # recognition is busy: a partial never delays anyone's final
        audio = self.ingest.audio(due.start_sample, due.end_sample)
        self._partial = asyncio.create_task(self._run_partial(audio, self._utterance), name="stt-partial")

    async def _run_partial(self, audio: Pcm16, utterance: int) -> None:
        try:
            result = await self._engines.transcribe(audio)
        except AntiphonError:
            return  # a partial is best effort; the final reports failures
        if result.text and utterance == self._utterance and self.ingest.speaking:
            stability = partial_stability(self._last_partial if utterance == self._partial_of else "", result.text)
            self._last_partial, self._partial_of = result.text, utterance
            await self._emit(transcript=pb.Transcript(text=result.text, is_final=False, stability=stability))

    def _decode_early(self, pause: Pause) -> None:
        """The user paused: transcribe now, and start answering if the pause holds (speculation.py)."""
        self._drop_early()
        audio = self.ingest.audio(pause.start_sample, pause.end_sample)
        task = asyncio.create_task(self._engines.transcribe(audio, words=True), name="stt-early")
        self._early = (pause.start_sample, pause.end_sample, task)
        self._speculating = asyncio.create_task(self._speculate(task, (pause.start_sample, pause.end_sample)))

    async def _speculate(self, task: asyncio.Task[Transcription], key: tuple[int, int]) -> None:
        try:
            result = await task
        except AntiphonError:
            return
        still_paused = self._early is not None and self._early[:2] == key
        if still_paused and result.text and self._speculate_enabled:
            self._session.speculate(result.text, key)

    def _drop_early(self) -> None:
        """Speech resumed (or a new pause began): the last pause was not the end of the turn."""
        if self._early is not None:
            self._early[2].cancel()
            self._early = None
        self._session.drop_speculation()

    async def _on_utterance(self, utterance: Utterance, received: float) -> None:
        stopped = utterance.stopped
        position = self.ingest.position_ms
        speech_end = VoiceTiming.at_audio(received, position, stopped.audio_ms)
        detected = VoiceTiming.at_audio(received, position, stopped.detected_ms)
        await self._emit(speech_stopped=pb.SpeechStopped(audio_ms=stopped.audio_ms, reason=stopped.reason))
        early, self._early = self._early, None
        key = (stopped.start_sample, stopped.end_sample)
        if early is not None and (early[0], early[1]) == key:
            task = early[2]  # the pause was the end: its transcript is (nearly) ready
        else:
            if early is not None:
                early[2].cancel()
            self._session.drop_speculation()
            task = asyncio.create_task(self._engines.transcribe(utterance.audio, words=True), name="stt-final")
        offset_ms = stopped.start_sample / 16  # words are timed from the utterance's first sample
        previous = self._final
        self._final = asyncio.create_task(
            self._finish(task, previous, key, offset_ms=offset_ms, speech_end=speech_end, detected=detected),
            name="stt-finish",
        )

    async def _finish(
        self,
        task: asyncio.Task[Transcription],
        previous: asyncio.Task[None] | None,
        key: tuple[int, int],
        *,
        offset_ms: float,
        speech_end: float,
        detected: float,
    ) -> None:
        try:
            result = await task
        except AntiphonError as exc:
            await self._session.report(exc)
            return
        if previous is not None:
            await asyncio.wait([previous])  # turns start in the order they were spoken
        words = [
            pb.Word(
                text=w.text, start_ms=w.start_ms + offset_ms, end_ms=w.end_ms + offset_ms, probability=w.probability
            )
            for w in result.words
        ]
        await self._emit(transcript=pb.Transcript(text=result.text, is_final=True, stability=1.0, words=words))
        if not result.text:
            return  # noise, a cough: nothing to answer
        timing = VoiceTiming(speech_end, detected, time.perf_counter(), result.decode_ms / 1000)
        if not self._session.commit(key, timing):
            await self._session.submit_voice(result.text, timing)

    # ------------------------------------------------------------------ output

    def speaker(self, turn_id: str) -> Speaker:
        async def emit(data: bytes, duration_ms: int) -> None:
            self._out_seq += 1
            audio = pb.AudioOut(data=data, seq=self._out_seq, duration_ms=duration_ms)
            await self._session.put(turn_id, audio=audio)

        return Speaker(
            self._engines.synthesize,
            self._engines.tts.sample_rate,
            self.output_spec,
            emit,
            lead_ms=self._settings.output_lead_ms,
            first_max_words=self._settings.first_piece_max_words,
        )

    async def _meter_audio(self) -> None:
        """Gateway: count the audio heard so far; over the tenant's audio rate the stream ends
        with RESOURCE_EXHAUSTED (raised to the reader)."""
        meter, seconds = self._session.meter, self._unmetered_ms / 1000
        self._unmetered_ms = 0.0
        if meter is not None:
            meter.record_audio(self._session.principal, stt_seconds=seconds)
            await meter.admit_audio(self._session.principal)

    async def _emit(self, **oneof: object) -> None:
        await self._session.put("", **oneof)

    async def close(self) -> None:
        meter = self._session.meter
        if meter is not None and self._unmetered_ms:
            meter.record_audio(self._session.principal, stt_seconds=self._unmetered_ms / 1000)
            self._unmetered_ms = 0.0
        early = self._early[2] if self._early is not None else None
        await cancel_and_wait(self._partial, early, self._speculating, self._final)


def partial_stability(previous: str, current: str) -> float:
    """Share of the partial's words that the previous partial already had, in order: words that
    survived a re-decode with more audio are likely to survive into the final transcript."""
    before, now = previous.lower().split(), current.lower().split()
    if not now:
        return 0.0
    same = 0
    for a, b in zip(before, now, strict=False):
        if a.strip(".,!?") != b.strip(".,!?"):
            break
        same += 1
    return same / len(now)
