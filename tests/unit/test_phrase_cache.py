"""PhraseCache: an LRU of synthesized short phrases, bounded by bytes and entries."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt
import pytest

from antiphon.voice.phrase_cache import PhraseCache, phrase_key

Audio = npt.NDArray[np.int16]


def audio(samples: int, value: int = 1) -> Audio:
    return np.full(samples, value, dtype=np.int16)


class CountingSynth:
    voice_id = "fake"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def synthesize(self, text: str) -> Audio:
        self.calls.append(text)
        return audio(100, len(text))


def test_hit_miss_and_counters() -> None:
    cache = PhraseCache()
    assert cache.get("v", "Hello!") is None
    assert cache.put("v", "Hello!", audio(10, 7))
    hit = cache.get("v", "Hello!")
    assert hit is not None
    assert hit.tolist() == [7] * 10
    assert cache.get("other-voice", "Hello!") is None
    assert (cache.hits, cache.misses) == (1, 2)
    assert len(cache) == 1
    assert cache.nbytes == 20


def test_key_ignores_case_and_spacing_but_not_punctuation() -> None:
    cache = PhraseCache()
    cache.put("v", "  Sure,  I can. ", audio(4))
    assert cache.get("v", "sure, i can.") is not None
    assert cache.get("v", "Sure, I can?") is None
    assert cache.get("v", "Sure I can.") is None
    assert phrase_key(" One\tMoment. ") == "one moment."


def test_entries_are_read_only_private_copies() -> None:
    cache = PhraseCache()
    original = audio(8, 3)
    cache.put("v", "hi", original)
    original[:] = 0  # the caller's array stays its own
    entry = cache.get("v", "hi")
    assert entry is not None
    assert entry.tolist() == [3] * 8
    assert original.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        entry[0] = 1
    base = np.full(16, 5, dtype=np.int16)
    cache.put("v", "view", base[::2])
    base[:] = 0
    view_entry = cache.get("v", "view")
    assert view_entry is not None
    assert view_entry.tolist() == [5] * 8


def test_evicts_least_recently_used_by_bytes() -> None:
    cache = PhraseCache(max_bytes=300)  # three entries of 100 bytes
    for name in ("a", "b", "c"):
        cache.put("v", name, audio(50))
    assert cache.get("v", "a") is not None  # now "b" is the oldest
    cache.put("v", "d", audio(50))
    assert [cache.get("v", n) is not None for n in "abcd"] == [True, False, True, True]
    assert cache.nbytes == 300
    cache.put("v", "big", audio(140))  # 280 bytes: only it fits
    assert len(cache) == 1
    assert cache.nbytes == 280


def test_evicts_by_entry_count_and_replaces_in_place() -> None:
    cache = PhraseCache(max_entries=2)
    cache.put("v", "a", audio(1))
    cache.put("v", "b", audio(1))
    cache.put("v", "a", audio(3))  # replaces, and makes "a" the newest
    assert len(cache) == 2
    assert cache.nbytes == 8
    cache.put("v", "c", audio(1))
    assert cache.get("v", "b") is None
    assert cache.get("v", "a") is not None
    assert cache.get("v", "c") is not None


def test_long_phrases_and_oversized_audio_are_not_cached() -> None:
    cache = PhraseCache(max_bytes=1000, max_words=12)
    long_text = " ".join(["word"] * 13)
    assert not cache.put("v", long_text, audio(10))
    assert cache.get("v", long_text) is None
    assert cache.misses == 0  # not a miss: it could never hit
    assert cache.put("v", " ".join(["word"] * 12), audio(10))
    assert not cache.put("v", "huge", audio(501))
    assert not cache.put("v", "   ", audio(10))
    assert len(cache) == 1


def test_zero_bytes_turns_caching_off() -> None:
    cache = PhraseCache(max_bytes=0)
    assert not cache.put("v", "hi", audio(4))
    assert cache.get("v", "hi") is None
    with pytest.raises(ValueError, match="max_bytes"):
        PhraseCache(max_bytes=-1)


def test_rejects_audio_that_is_not_mono_int16() -> None:
    cache = PhraseCache()
    with pytest.raises(ValueError, match="int16"):
        cache.put("v", "hi", np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="int16"):
        cache.put("v", "hi", np.zeros((2, 4), dtype=np.int16))


def test_warm_synthesizes_only_what_is_missing() -> None:
    cache = PhraseCache()
    synth = CountingSynth()
    assert cache.warm(synth, ["Hello!", "One moment.", "hello!"]) == 2
    assert synth.calls == ["Hello!", "One moment."]
    assert cache.warm(synth, ["Hello!"]) == 0
    assert cache.get("fake", "one moment.") is not None


def test_concurrent_use_keeps_the_byte_count_exact() -> None:
    cache = PhraseCache(max_bytes=2000, max_entries=50)

    def work(seed: int) -> None:
        for i in range(300):
            name = f"p{(seed * 7 + i) % 40}"
            if cache.get("v", name) is None:
                cache.put("v", name, audio(10 + i % 30))

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(a.nbytes for a in (cache.get("v", f"p{i}") for i in range(40)) if a is not None)
    assert cache.nbytes == total <= 2000
    assert len(cache) <= 50
