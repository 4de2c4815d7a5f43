"""The voice models one server shares between its streams, and the threads they run on.

Silero runs inline on the event loop (about 160 us per 32 ms window, and only
where stage 1 flags candidate speech). Speech recognition and synthesis run on
their own small thread pools: both release the GIL inside their native code,
and keeping them off the loop's thread keeps frames flowing while they work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import soxr

from antiphon.config_voice import VoiceSettings
from antiphon.errors import ModelMissing, Unavailable
from antiphon.voice.phrase_cache import PhraseCache
from antiphon.voice.silero import SileroVad, VadStream
from antiphon.voice.stt import SpeechToText, Transcription
from antiphon.voice.tts import TextToSpeech

log = logging.getLogger(__name__)


class VadModel(Protocol):
    def open_stream(self) -> VadStream: ...


@dataclass
class VoiceEngines:
    vad: VadModel
    stt: SpeechToText
    tts: TextToSpeech
    cache: PhraseCache
    stt_pool: concurrent.futures.ThreadPoolExecutor
    tts_pool: concurrent.futures.ThreadPoolExecutor
    stt_running: int = 0

    @property
    def stt_idle(self) -> bool:
        """No recognition in flight: a partial may run now without delaying anyone's final."""
        return self.stt_running == 0

    async def transcribe(self, audio: npt.NDArray[np.int16], *, words: bool = False) -> Transcription:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.stt_pool, lambda: self.stt.transcribe(audio, words=words))
        self.stt_running += 1
        future.add_done_callback(self._recognition_done)
        try:
            # shield: a caller that gives up (speech resumed) cannot stop the thread, so the
            # count of running recognitions drops when the thread is done, not when the caller left
            return await asyncio.shield(future)
        except Unavailable:
            raise
        except Exception as exc:
            log.warning("speech recognition failed: %s", exc)
            raise Unavailable(f"speech recognition failed: {exc}") from None

    def _recognition_done(self, future: asyncio.Future[Transcription]) -> None:
        self.stt_running -= 1
        if not future.cancelled():
            future.exception()  # retrieved: an abandoned call's failure is not "never retrieved"

    async def synthesize(self, text: str) -> npt.NDArray[np.int16]:
        cached = self.cache.get(self.tts.voice_id, text)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        audio = await loop.run_in_executor(self.tts_pool, self.tts.synthesize, text)
        self.cache.put(self.tts.voice_id, text, audio)
        return audio

    def close(self) -> None:
        self.stt_pool.shutdown(wait=False, cancel_futures=True)
        self.tts_pool.shutdown(wait=False, cancel_futures=True)
        self.stt.close()
        self.tts.close()


WARM_PHRASES = ("Hello!", "Sure.", "Okay.", "One moment.", "Sorry, I didn't catch that.")


def open_voice(settings: VoiceSettings) -> VoiceEngines | None:
    """Load the voice models; None (text only) when voice is off, or 'auto' and a model is missing."""
    if settings.enabled == "off":
        return None
    started = time.perf_counter()
    try:
        from antiphon.voice.stt import WhisperSTT
        from antiphon.voice.tts import PiperTTS

        vad: VadModel = SileroVad()
        stt: SpeechToText = WhisperSTT()
        tts: TextToSpeech = PiperTTS()
    except (ModelMissing, ImportError) as exc:
        if settings.enabled == "on":
            raise ModelMissing(f"voice.enabled is on but {exc}") from None
        log.warning("voice is off: %s", exc)
        return None
    engines = VoiceEngines(
        vad=vad,
        stt=stt,
        tts=tts,
        cache=PhraseCache(max_bytes=settings.phrase_cache_mb * 1024 * 1024),
        stt_pool=concurrent.futures.ThreadPoolExecutor(settings.stt_workers, thread_name_prefix="stt"),
        tts_pool=concurrent.futures.ThreadPoolExecutor(settings.tts_workers, thread_name_prefix="tts"),
    )
    # A first call pays each model's one-time costs (allocations, espeak start) before a caller does.
    for phrase in WARM_PHRASES:
        engines.cache.put(tts.voice_id, phrase, tts.synthesize(phrase))
    hello = engines.cache.get(tts.voice_id, WARM_PHRASES[0])
    if hello is not None:
        engines.stt.transcribe(soxr.resample(hello, tts.sample_rate, stt.sample_rate))
    log.info("voice models loaded", extra={"load_ms": round((time.perf_counter() - started) * 1000)})
    return engines
