"""One answer, spoken: the agent's text deltas in, paced audio chunks out.

Two tasks overlap synthesis with playback: `_synthesize` cuts the streamed text
into clauses (ClauseChunker), serves each from the phrase cache or the TTS
worker, converts it to the client's format; `_send` paces the chunks (at most
40 ms each) so the audio sent stays at most `lead_ms` ahead of real time.
Pacing is what makes barge-in honest: `played_ms()` is what the client has had
time to play, and `heard_text()` the words inside it, so the session history
keeps only what the user heard.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import soxr

from antiphon.voice.chunker import ChunkerSettings, ClauseChunker
from antiphon.voice.formats import AudioSpec, encode_pcm16

log = logging.getLogger(__name__)

CHUNK_MS = 40
_DONE = None

Synthesize = Callable[[str], Awaitable[npt.NDArray[np.int16]]]
Emit = Callable[[bytes, int], Awaitable[None]]


@dataclass(slots=True)
class SpokenPiece:
    """A clause's place in the answer's audio timeline (ms of output audio)."""

    text: str
    start_ms: float
    end_ms: float


class Speaker:
    def __init__(
        self,
        synthesize: Synthesize,
        source_rate_hz: int,
        out_spec: AudioSpec,
        emit: Emit,
        *,
        lead_ms: int = 160,
        first_max_words: int = 0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._synthesize = synthesize
        self._source_rate = source_rate_hz
        self._spec = out_spec
        self._emit = emit
        self._lead_s = lead_ms / 1000
        self._clock = clock
        self._chunker = ClauseChunker(ChunkerSettings(first_max_words=first_max_words))
        self._texts: asyncio.Queue[str | None] = asyncio.Queue()
        self._audio: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue(maxsize=2)
        self._pieces: list[SpokenPiece] = []
        self._sent_ms = 0.0
        self._play_end = 0.0
        self._finished = False
        self.first_audio_at: float | None = None
        self.tts_s = 0.0
        self.error: Exception | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="speaker")

    def feed(self, delta: str) -> None:
        for piece in self._chunker.push(delta):
            self._texts.put_nowait(piece)

    def finish(self) -> None:
        """The answer is complete: speak what the chunker still holds."""
        if not self._finished:
            self._finished = True
            for piece in self._chunker.flush():
                self._texts.put_nowait(piece)
            self._texts.put_nowait(_DONE)

    async def wait_played(self) -> None:
        """Until the last chunk is sent and has had time to play."""
        self.finish()
        if self._task is not None:
            await asyncio.shield(self._task)
        remaining = self._play_end - self._clock()
        if remaining > 0:
            await asyncio.sleep(remaining)

    def cancel(self) -> None:
        """Stop sending at once (barge-in); the chunk in flight is the last."""
        self._finished = True
        if self._task is not None:
            self._task.cancel()

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    @property
    def sent_ms(self) -> float:
        return self._sent_ms

    def played_ms(self) -> float:
        """Audio the client has had time to play: what was sent, less what is still ahead of now."""
        ahead = max(0.0, self._play_end - self._clock()) * 1000
        return max(0.0, self._sent_ms - ahead)

    def heard_text(self, played_ms: float | None = None) -> str:
        """The words inside the first `played_ms` of the answer's audio."""
        played = self.played_ms() if played_ms is None else played_ms
        words: list[str] = []
        for piece in self._pieces:
            if piece.end_ms <= played:
                words += piece.text.split()
                continue
            if piece.start_ms < played:
                piece_words = piece.text.split()
                fraction = (played - piece.start_ms) / max(piece.end_ms - piece.start_ms, 1e-9)
                words += piece_words[: math.floor(len(piece_words) * fraction)]
            break
        return " ".join(words)

    async def _run(self) -> None:
        producer = asyncio.create_task(self._synthesize_pieces(), name="speaker-synthesis")
        try:
            await self._send()
        finally:
            if not producer.done():
                producer.cancel()
            await asyncio.gather(producer, return_exceptions=True)

    async def _synthesize_pieces(self) -> None:
        try:
            while (text := await self._texts.get()) is not None:
                started = time.perf_counter()
                pcm = await self._synthesize(text)
                self.tts_s += time.perf_counter() - started
                await self._audio.put((text, self._convert(pcm)))
        except asyncio.CancelledError:
            raise  # the sender is gone too: nobody waits for the end marker
        except Exception as exc:  # a failed synthesis ends the speech, not the turn
            log.warning("speech synthesis failed: %s", exc)
            self.error = exc
        await self._audio.put(_DONE)

    def _convert(self, pcm: npt.NDArray[np.int16]) -> bytes:
        if pcm.size and self._source_rate != self._spec.sample_rate_hz:
            pcm = soxr.resample(pcm, self._source_rate, self._spec.sample_rate_hz, quality="HQ")
        return encode_pcm16(self._spec, np.ascontiguousarray(pcm, dtype="<i2").tobytes())

    async def _send(self) -> None:
        spec = self._spec
        step = spec.bytes_for_ms(CHUNK_MS)
        while (item := await self._audio.get()) is not None:
            text, data = item
            piece = SpokenPiece(text, self._sent_ms, self._sent_ms + spec.duration_ms(len(data)))
            self._pieces.append(piece)
            for offset in range(0, len(data), step):
                chunk = data[offset : offset + step]
                now = self._clock()
                self._play_end = max(self._play_end, now)  # an underrun: playback resumes from now
                ahead = self._play_end - now
                if ahead > self._lead_s:
                    await asyncio.sleep(ahead - self._lead_s)
                duration_ms = spec.duration_ms(len(chunk))
                await self._emit(chunk, round(duration_ms))
                if self.first_audio_at is None:
                    self.first_audio_at = self._clock()
                self._play_end = max(self._play_end, self._clock()) + duration_ms / 1000
                self._sent_ms += duration_ms
