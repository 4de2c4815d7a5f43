"""Cuts an answer streamed as text deltas into speakable pieces, so speech starts at the first clause.

Boundaries, in order of preference:
- a sentence end: `. ! ? …` (with any closing quotes, brackets or markdown
  emphasis after it) followed by whitespace; and every newline. A `.` after an
  abbreviation (`Mr.`, `e.g.`, `U.S.`, a lone initial) is not one, and neither
  is one in a piece without letters yet (a list marker such as `1.`);
- a clause end: `, ; :` or an en dash followed by whitespace, or an em dash.
  It is taken while the answer's opening is short (fewer than `eager_words`
  words emitted) once the piece has `min_clause_words` words, or is a single
  word of two letters or more ("Sure,", "Well,"; never "a,"): the first audio
  then needs only the first clause. Later pieces take one only past
  `soft_max_words`;
- past `hard_max_words` words (or `max_chars` characters), or for the first
  piece past `first_max_words` when set, the piece is cut at its last clause
  end, else before the current word.

Punctuation is cut only once the character after it is known (whitespace or
not), which keeps "3.14", "1,000" and "10:30" whole and costs one token of
delay. Decisions depend only on the text, never on how it was split into
deltas, so a streamed answer is cut exactly as the whole string would be.
Each character is examined once (plus a lookahead of at most `_LOOKAHEAD`),
and the pending text is bounded by `max_chars`, so a push costs O(len(delta)).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TERMINALS = frozenset(".!?…")
_CLAUSES = frozenset(",;:–")  # need whitespace after them; the em dash does not
_EM_DASH = "—"
_CLOSERS = frozenset("\"')]}”’»*_`")
_LOOKAHEAD = 8  # longest run of closers/terminals examined after a punctuation mark
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "approx", "dept", "est", "inc", "ltd"}
)
_ACRONYM = re.compile(r"[a-z](?:\.[a-z])+")  # "u.s", "e.g", "a.m": the token before the final dot
_OPENERS = "(\"'“‘[*_"
_LEADING_MARKS = re.compile(r"^\s*(?:[-*+>]\s+|#+\s*)+")  # bullets, quote marks, heading marks
_INNER_UNDERSCORE = re.compile(r"(?<=[^\W_])_+(?=[^\W_])")  # snake_case reads as "snake case"
_MARKUP = re.compile(r"[*_#`]+")


@dataclass(frozen=True, slots=True)
class ChunkerSettings:
    min_clause_words: int = 3
    eager_words: int = 4  # after a one-word opener the next clause is cut early too
    soft_max_words: int = 20
    hard_max_words: int = 40
    max_chars: int = 400
    # The answer's first piece ends after this many words even without punctuation (0: off): the
    # first audio then waits for a few words, not a whole sentence, at some cost in prosody.
    first_max_words: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.min_clause_words <= self.soft_max_words <= self.hard_max_words:
            raise ValueError("need 1 <= min_clause_words <= soft_max_words <= hard_max_words")
        if self.eager_words < 0 or self.max_chars < 16:
            raise ValueError("eager_words must be >= 0 and max_chars >= 16")
        if not 0 <= self.first_max_words <= self.hard_max_words:
            raise ValueError("first_max_words must be 0..hard_max_words")


def clean(raw: str) -> str:
    """The speakable form of a piece: markdown marks dropped, whitespace collapsed."""
    text = _LEADING_MARKS.sub("", raw)
    text = _INNER_UNDERSCORE.sub(" ", text)
    return " ".join(_MARKUP.sub("", text).split())


def count_words(text: str) -> int:
    return sum(1 for token in text.split() if any(ch.isalnum() for ch in token))


class ClauseChunker:
    """One answer at a time: `push` each delta, then `flush` at the end (which resets it)."""

    __slots__ = (
        "_buf",
        "_clause_at",
        "_clause_words",
        "_emitted_words",
        "_in_token",
        "_letters",
        "_pos",
        "_settings",
        "_start",
        "_token_counted",
        "_token_start",
        "_words",
    )

    def __init__(self, settings: ChunkerSettings | None = None) -> None:
        self._settings = settings or ChunkerSettings()
        self._reset()

    def _reset(self) -> None:
        self._buf = ""
        self._pos = 0  # next character to examine
        self._start = 0  # where the pending piece begins
        self._words = 0  # words in the pending piece
        self._letters = False  # whether the pending piece has a letter
        self._clause_at: int | None = None  # last clause end not taken, for a hard cut
        self._clause_words = 0
        self._in_token = False
        self._token_start = 0
        self._token_counted = False
        self._emitted_words = 0

    def push(self, delta: str) -> list[str]:
        """Pieces completed by this delta, cleaned, in order."""
        if not delta:
            return []
        self._buf += delta
        out: list[str] = []
        self._scan(out, final=False)
        self._compact()
        return out

    def flush(self) -> list[str]:
        """The rest of the answer as pieces; the chunker is then ready for the next answer."""
        out: list[str] = []
        self._scan(out, final=True)
        self._cut(out, len(self._buf))
        self._reset()
        return out

    def _scan(self, out: list[str], *, final: bool) -> None:
        s = self._settings
        buf = self._buf
        n = len(buf)
        i = self._pos
        while i < n:
            if i - self._start >= s.max_chars:
                self._hard_cut(out, i)
            c = buf[i]
            if c.isspace():
                self._in_token = False
                if c == "\n":
                    self._cut(out, i)
                i += 1
                continue
            if not self._in_token:
                self._in_token, self._token_start, self._token_counted = True, i, False
            if c.isalnum():
                if not self._token_counted:
                    first_full = s.first_max_words and not self._emitted_words and self._words >= s.first_max_words
                    if self._words >= s.hard_max_words or first_full:
                        self._hard_cut(out, i)
                    self._token_counted = True
                    self._words += 1
                self._letters = self._letters or c.isalpha()
                i += 1
                continue
            if c == _EM_DASH:
                i = self._clause(out, i, i + 1)
                continue
            if c not in _TERMINALS and c not in _CLAUSES:
                i += 1
                continue
            end = i + 1
            while end < n and end - i <= _LOOKAHEAD and (buf[end] in _CLOSERS or buf[end] in _TERMINALS):
                end += 1
            if end == n and not final:
                break  # what follows decides: wait for the next delta
            if end < n and not buf[end].isspace():
                i += 1
            elif c in _CLAUSES:
                i = self._clause(out, i, end)
            elif self._letters and not (c == "." and self._abbreviation(i)):
                self._cut(out, end)
                self._in_token = False
                i = end
            else:
                i += 1
        self._pos = i

    def _clause(self, out: list[str], i: int, end: int) -> int:
        """At a clause end (punctuation at `i`, piece would end at `end`): cut or remember it."""
        s = self._settings
        words = self._words
        eager = self._emitted_words < s.eager_words and (
            words >= s.min_clause_words or (words == 1 and self._opener_word(i))
        )
        if eager or words >= s.soft_max_words:
            self._cut(out, end)
            self._in_token = False
            return end
        if words >= s.min_clause_words:
            self._clause_at, self._clause_words = end, words
        return i + 1

    def _opener_word(self, end: int) -> bool:
        """A one-word piece worth speaking alone ("Sure,", "Well,"), unlike "a," or "I,"."""
        return sum(ch.isalpha() for ch in self._buf[self._start : end]) >= 2

    def _abbreviation(self, dot: int) -> bool:
        token = self._buf[self._token_start : dot].lstrip(_OPENERS).lower()
        return (len(token) == 1 and token.isalpha()) or token in _ABBREVIATIONS or bool(_ACRONYM.fullmatch(token))

    def _hard_cut(self, out: list[str], i: int) -> None:
        """Cut an overlong piece at its last clause end, else before the word at `i`, else at `i`."""
        if self._clause_at is not None:
            at, words = self._clause_at, self._words - self._clause_words
        elif self._in_token and self._token_start > self._start:
            at, words = self._token_start, int(self._token_counted)
        else:  # one token as long as the limit: split it here
            at, words = i, 0
            self._token_start, self._token_counted = i, False
        self._cut(out, at)
        self._words = words
        self._letters = any(ch.isalpha() for ch in self._buf[at:i])

    def _cut(self, out: list[str], at: int) -> None:
        """Emit the pending piece up to `at` (if it has anything to say) and start the next one there."""
        text = clean(self._buf[self._start : at])
        if any(ch.isalnum() for ch in text):
            out.append(text)
            self._emitted_words += count_words(text)
        self._start = at
        self._words = 0
        self._letters = False
        self._clause_at = None

    def _compact(self) -> None:
        """Drop emitted text so the buffer holds only the pending piece."""
        drop = self._start
        if drop:
            self._buf = self._buf[drop:]
            self._pos -= drop
            self._start = 0
            self._token_start = max(0, self._token_start - drop)
            if self._clause_at is not None:
                self._clause_at -= drop
