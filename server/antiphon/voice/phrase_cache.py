"""An LRU of synthesized audio for short phrases (greetings, fillers, confirmations).

Keyed by (voice id, phrase): the phrase lowercased with whitespace collapsed;
punctuation is kept, since "Sure." and "Sure?" are spoken differently. Only
phrases of at most `max_words` words are cached: a long answer is rarely
repeated word for word and would evict the phrases that are. Bounded by total
audio bytes (0 turns the cache off) and by entries. Entries are private
read-only copies, so a hit can be handed to any number of callers without
copying. Thread-safe: synthesis runs on executor threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Protocol

import numpy as np
import numpy.typing as npt

Audio = npt.NDArray[np.int16]

DEFAULT_MAX_BYTES = 8 * 1024 * 1024


class Synthesizer(Protocol):
    voice_id: str

    def synthesize(self, text: str) -> Audio: ...


def phrase_key(text: str) -> str:
    return " ".join(text.lower().split())


class PhraseCache:
    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = 512, max_words: int = 12) -> None:
        if max_bytes < 0 or max_entries < 1 or max_words < 1:
            raise ValueError("max_bytes must be >= 0 (0 turns caching off), max_entries and max_words positive")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.max_words = max_words
        self._entries: OrderedDict[tuple[str, str], Audio] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0  # lookups of cacheable phrases that found nothing

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def cacheable(self, text: str) -> bool:
        return 0 < len(text.split()) <= self.max_words

    def get(self, voice: str, text: str) -> Audio | None:
        """The cached audio (read-only), or None."""
        if not self.max_bytes or not self.cacheable(text):
            return None
        key = (voice, phrase_key(text))
        with self._lock:
            audio = self._entries.get(key)
            if audio is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return audio

    def put(self, voice: str, text: str, audio: Audio) -> bool:
        """Store a read-only copy of `audio` (1-D int16); False when the phrase or audio is not kept."""
        if audio.dtype != np.int16 or audio.ndim != 1:
            raise ValueError(f"audio: expected 1-D int16, got {audio.dtype} with shape {audio.shape}")
        if not self.max_bytes or not self.cacheable(text) or audio.nbytes > self.max_bytes:
            return False
        entry = audio.copy()  # a view of the caller's array could still be written through its base
        entry.flags.writeable = False
        key = (voice, phrase_key(text))
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[key] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes or len(self._entries) > self.max_entries:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes
        return True

    def warm(self, tts: Synthesizer, phrases: Iterable[str]) -> int:
        """Synthesize and store the phrases not cached yet (blocking); returns how many were added."""
        added = 0
        for text in phrases:
            key = (tts.voice_id, phrase_key(text))
            with self._lock:
                present = key in self._entries
            if not present and self.put(tts.voice_id, text, tts.synthesize(text)):
                added += 1
        return added

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
