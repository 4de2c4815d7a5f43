from __future__ import annotations

import pytest

from antiphon.inference.stop_strings import StopMatcher


def _run(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces) + m.flush()
    return out, m.stopped


def test_no_stops_passes_through() -> None:
    assert _run([], ["a", "b"]) == ("ab", False)


def test_stop_split_across_pieces_never_leaks() -> None:
    m = StopMatcher(["END"])
    assert m.feed("hello E") == "hello "
    assert m.feed("N") == ""
    assert m.feed("D and more") == ""
    assert m.stopped
    assert m.flush() == ""


def test_held_back_text_is_released_when_it_cannot_match() -> None:
    m = StopMatcher(["END"])
    assert m.feed("E") == ""
    assert m.feed("x") == "Ex"
    assert m.flush() == ""


def test_flush_releases_a_partial_match_at_the_end() -> None:
    assert _run(["END"], ["the E"]) == ("the E", False)


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        (["\n\n", "User:"], ["Hi", " there", "\n", "\nUser:", " x"], "Hi there"),
        (["bc", "abcd"], ["a", "b", "c", "d"], "a"),  # the earliest match wins
        (["x"], ["x"], ""),
    ],
)
def test_earliest_stop_wins(stops: list[str], pieces: list[str], expected: str) -> None:
    assert _run(stops, pieces) == (expected, True)
