"""ClauseChunker: where a streamed answer is cut into speakable pieces."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from antiphon.voice.chunker import ChunkerSettings, ClauseChunker, clean, count_words


def whole(text: str, chunker_settings: ChunkerSettings | None = None) -> list[str]:
    chunker = ClauseChunker(chunker_settings)
    return chunker.push(text) + chunker.flush()


def streamed(deltas: list[str], chunker_settings: ChunkerSettings | None = None) -> list[str]:
    chunker = ClauseChunker(chunker_settings)
    out: list[str] = []
    for delta in deltas:
        out += chunker.push(delta)
    return out + chunker.flush()


def words(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


ANSWER = (
    "Sure, I can help with that. The weather in Paris tomorrow will be sunny, with a high of 22.5 degrees. "
    "Would you like me to book a table?"
)


def test_first_clause_is_cut_early_then_whole_sentences() -> None:
    assert whole(ANSWER) == [
        "Sure,",
        "I can help with that.",
        "The weather in Paris tomorrow will be sunny, with a high of 22.5 degrees.",
        "Would you like me to book a table?",
    ]


def test_first_piece_needs_three_words_or_an_opener_word() -> None:
    assert whole("I, for one, agree with you.") == ["I, for one,", "agree with you."]
    assert whole("So, here it is.") == ["So,", "here it is."]
    assert whole("The plan, in short, is simple.") == ["The plan, in short,", "is simple."]
    assert whole("In the morning, we leave. Then, later, we eat.")[:2] == ["In the morning,", "we leave."]


def test_clause_cuts_stop_once_the_opening_is_spoken() -> None:
    text = "The forecast for Paris, which I just checked, says sun. Later, as you asked, I can look again."
    assert whole(text) == [
        "The forecast for Paris,",
        "which I just checked, says sun.",
        "Later, as you asked, I can look again.",
    ]
    sentence_only = ChunkerSettings(eager_words=0)
    assert whole(text, sentence_only) == ["The forecast for Paris, which I just checked, says sun.", whole(text)[-1]]


@pytest.mark.parametrize(
    "text",
    [
        "Pi is about 3.14 and a million is 1,000,000 in digits.",
        "We meet at 10:30 and leave at 11:45 sharp today.",
        "It costs .5 dollars, or 0.50 if you prefer.",
        "See example.com or v1.2.3 for the details today.",
    ],
)
def test_numbers_times_and_dotted_names_stay_whole(text: str) -> None:
    assert "".join(whole(text, ChunkerSettings(eager_words=0))) == text


@pytest.mark.parametrize(
    "text",
    [
        "Mr. Smith and Dr. Jones are here.",
        "Fruit, e.g. apples, i.e. the red ones, is fine.",
        "She moved to the U.S. last year.",
        "The talk starts at 9 a.m. on Monday.",
        "The book by J. R. R. Tolkien is long.",
        "Apples vs. pears is an old debate.",
    ],
)
def test_abbreviations_do_not_end_sentences(text: str) -> None:
    assert whole(text, ChunkerSettings(eager_words=0)) == [text]


def test_sentence_ends_with_closers_and_runs() -> None:
    assert whole('He said "yes." Then he left!') == ['He said "yes."', "Then he left!"]
    assert whole("Well... let me think. (See above.) Done") == ["Well...", "let me think.", "(See above.)", "Done"]
    assert whole("Really?! Yes. No way") == ["Really?!", "Yes.", "No way"]


def test_newlines_cut_and_markdown_is_not_spoken() -> None:
    text = "# Options\n\n- **First** choice with `code`\n* Second _choice_ here\n> quoted snake_case name\n---\n"
    assert whole(text) == ["Options", "First choice with code", "Second choice here", "quoted snake case name"]


def test_list_numbers_stay_with_their_item() -> None:
    assert whole("Steps:\n1. Open it.\n2. Close it.") == ["Steps:", "1. Open it.", "2. Close it."]


def test_em_dash_is_a_clause_end() -> None:
    assert whole("The meeting—if it happens—is at noon.") == ["The meeting—if it happens—", "is at noon."]


def test_long_sentence_cut_at_clause_after_soft_limit() -> None:
    text = f"Intro here. {words(22)}, {words(5, 100)}."
    assert whole(text) == ["Intro here.", f"{words(22)},", f"{words(5, 100)}."]


def test_overlong_piece_is_cut_at_its_last_clause_or_before_a_word() -> None:
    no_punctuation = words(95)
    assert whole(no_punctuation, ChunkerSettings(eager_words=0)) == [words(40), words(40, 40), words(15, 80)]
    text = f"{words(5)}, {words(38, 5)} end."
    assert whole(text, ChunkerSettings(eager_words=0)) == [f"{words(5)},", f"{words(38, 5)} end."]


def test_overlong_token_is_split_at_max_chars() -> None:
    pieces = whole("x" * 1000, ChunkerSettings(max_chars=400))
    assert [len(p) for p in pieces] == [400, 400, 200]


def test_pieces_without_letters_or_digits_are_dropped() -> None:
    assert whole("... --- *** \n ## \n") == []
    assert whole("") == []
    assert whole("42") == ["42"]


def test_waits_for_the_character_after_punctuation() -> None:
    chunker = ClauseChunker()
    assert chunker.push("It is 3.") == []
    assert chunker.push("14 exactly. And") == ["It is 3.14 exactly."]
    assert chunker.push(" more,") == []
    assert chunker.flush() == ["And more,"]


def test_flush_resets_for_the_next_answer() -> None:
    chunker = ClauseChunker()
    assert chunker.push("Sure, one. Two") == ["Sure,", "one."]
    assert chunker.flush() == ["Two"]
    assert chunker.push("Okay, next answer. ") == ["Okay,", "next answer."]


def test_clean_and_count_words() -> None:
    assert clean("  - **Bold**   and `code`\n") == "Bold and code"
    assert clean("### Title") == "Title"
    assert count_words("Sure, — it is 3.14 !") == 4


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="min_clause_words"):
        ChunkerSettings(soft_max_words=50, hard_max_words=40)
    with pytest.raises(ValueError, match="eager_words"):
        ChunkerSettings(eager_words=-1)


# Text over a small alphabet that hits every rule: numbers, abbreviations, runs, markdown, newlines.
_pieces = st.sampled_from(
    [
        "Sure",
        "a",
        "word",
        "Mr.",
        "e.g.",
        "U.S.",
        "3.14",
        "1,000",
        "10:30",
        "snake_case",
        "**bold**",
        "`x`",
        "- ",
        "#",
        "—",
        "...",
        "?!",
        '"',
        ")",
    ]
)
_seps = st.sampled_from([" ", " ", " ", ", ", ". ", "! ", "? ", "; ", ": ", "\n", "\n\n", "", "—"])
texts = st.lists(st.tuples(_pieces, _seps), max_size=120).map(lambda parts: "".join(p + s for p, s in parts))
small = ChunkerSettings(min_clause_words=2, eager_words=6, soft_max_words=6, hard_max_words=10, max_chars=60)


def _alnum(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


def _spoken_words(text: str) -> list[str]:
    return [w for w in text.split() if _alnum(w)]


@settings(max_examples=300, deadline=None)
@given(texts, st.lists(st.integers(0, 400), max_size=30), st.sampled_from([None, small]))
def test_streaming_cuts_like_the_whole_string(text: str, splits: list[int], chunker_settings: ChunkerSettings) -> None:
    cuts = sorted({min(s, len(text)) for s in splits})
    deltas = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    assert streamed(deltas, chunker_settings) == whole(text, chunker_settings)
    assert streamed(list(text), chunker_settings) == whole(text, chunker_settings)


@settings(max_examples=300, deadline=None)
@given(texts, st.sampled_from([None, small]))
def test_pieces_keep_every_word_in_order_within_limits(text: str, chunker_settings: ChunkerSettings | None) -> None:
    limits = chunker_settings or ChunkerSettings()
    pieces = whole(text, chunker_settings)
    assert _alnum("".join(pieces)) == _alnum(text)
    if "—" not in text and "_" not in text:  # the only cuts and rewrites inside a token
        assert _spoken_words(" ".join(pieces)) == _spoken_words(clean(text))
    for piece in pieces:
        assert piece == clean(piece)
        assert any(ch.isalnum() for ch in piece)
        assert count_words(piece) <= limits.hard_max_words
        assert len(piece) <= limits.max_chars


def test_first_piece_is_cut_after_first_max_words_and_later_pieces_are_not() -> None:
    chunker = ClauseChunker(ChunkerSettings(first_max_words=4))
    pieces: list[str] = []
    text = "The capital of France is Paris and it is a lovely city to visit in spring. Bye now."
    for token in text.split():
        pieces += chunker.push(token + " ")
    pieces += chunker.flush()
    assert pieces == ["The capital of France", "is Paris and it is a lovely city to visit in spring.", "Bye now."]
    with pytest.raises(ValueError, match="first_max_words"):
        ChunkerSettings(first_max_words=41)
