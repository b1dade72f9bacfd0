"""The shared text helpers of covip.core.text on tables of golden cases (input -> expected)."""

from __future__ import annotations

import pytest

from covip.core.text import (
    ARTICLES,
    boxed_spans,
    content_tokens,
    extract_boxed,
    normalize_text,
    strip_boxed,
    strip_think,
    token_coverage,
    unfinished_think,
    unwrap_latex_text,
    without_closed_think,
    words,
)

# ----- one normaliser


@pytest.mark.parametrize(
    "text, expected",
    [
        ("New Ryan", "new ryan"),
        ("  New   Ryan!! ", "new ryan"),
        ("It's 5 o'clock.", "it s 5 o clock"),  # punctuation splits words
        ("snake_case-word", "snake case word"),  # '_' is punctuation too
        ("ÉCOLE Straße", "école strasse"),  # Unicode casefold
        ("ｆｕｌｌ　ｗｉｄｔｈ", "full width"),  # NFKC folds full-width forms
        ("Tab\tand\nnewline", "tab and newline"),
        ("", ""),
        ("?!...", ""),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [("The New Ryan!", ["the", "new", "ryan"]), ("", []), (None, []), ("a-b", ["a", "b"])],
)
def test_words(text, expected):
    assert words(text) == expected


def test_articles_are_the_three_english_articles():
    assert ARTICLES == {"a", "an", "the"}


# ----- content words (fact checks, answer support, the lexical judge)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("on 2025-10-11", ["2025", "october", "11"]),
        ("October 11th, 2025", ["october", "11", "2025"]),
        ("Oct 11 2025", ["october", "11", "2025"]),
        ("Sept 03", ["september", "3"]),  # abbreviations and leading zeros
        ("2025-13-01", ["2025", "13", "1"]),  # not a month: the number stays
        ("only drinks green teas", ["drink", "green", "tea"]),  # stop words out, simple plurals singular
        ("the glass bus", ["glass", "bus"]),  # '-ss' and short words keep their s
        ("The and of", []),
    ],
)
def test_content_tokens(text, expected):
    assert content_tokens(text) == expected


@pytest.mark.parametrize(
    "text, reference, expected",
    [
        ("only drinks green tea", "Jeffrey drink green teas daily", 1.0),
        ("on 2025-10-11", "we met on 11 October 2025", 1.0),
        ("at Ryan Park", "at the beach", 0.0),
        ("the of and", "anything", 0.0),  # no content words: nothing covered
        ("green tea and coffee", "green tea", 2 / 3),
    ],
)
def test_token_coverage(text, reference, expected):
    assert token_coverage(text, reference) == pytest.approx(expected)


# ----- reasoning blocks


@pytest.mark.parametrize(
    "text, stripped, unfinished, without_closed",
    [
        ("B", "B", False, "B"),
        ("<think>maybe A</think>B", "B", False, " B"),
        ("<THINK>x</Think> B", " B", False, "  B"),  # any case
        ("<think>a</think>B<think>b</think>C", "BC", False, " B C"),
        ("<think>a\nb</think>\nThe cat.", "\nThe cat.", False, " \nThe cat."),  # across lines
        ("<think>never closed", "", True, "<think>never closed"),
        ("A <think>cut off", "A ", True, "A <think>cut off"),  # what precedes is not the answer
        ("<think>a</think>B<think>c", "B", True, " B<think>c"),
        ("</think> stray close", "</think> stray close", False, "</think> stray close"),
    ],
)
def test_think_blocks(text, stripped, unfinished, without_closed):
    assert strip_think(text) == stripped
    assert unfinished_think(text) is unfinished
    assert without_closed_think(text) == without_closed


# ----- boxed answers


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"I last saw them at \boxed{New Ryan}.", "New Ryan"),
        (r"\boxed{Lake Anna} no wait \boxed{Port Sarah}", "Port Sarah"),  # the last box wins
        (r"\boxed{a{b}c}", "a{b}c"),  # nested braces kept balanced
        (r"\boxed{\text{East Adamport}}", "East Adamport"),
        (r"\boxed { Corychester }", "Corychester"),
        (r"\boxed{Lake Anna} and then \boxed{unclosed", "Lake Anna"),  # an unclosed box is ignored
        ("no box here", None),
        ("", None),
        (None, None),
        (r"\boxed{}", ""),
    ],
)
def test_extract_boxed_last_by_default(text, expected):
    assert extract_boxed(text) == expected
    assert extract_boxed(text, which="last") == expected


@pytest.mark.parametrize(
    "text, first, last",
    [
        (r"\boxed{Lake Anna} no wait \boxed{Port Sarah}", "Lake Anna", "Port Sarah"),
        (r"\boxed{[1]} then \boxed{[2, 3]}", "[1]", "[2, 3]"),
        (r"\boxed{unclosed then \boxed{B}", "B", "B"),  # an unclosed first box is skipped
        (r"\boxed{\textbf{\text{A}}} \boxed{ b }", "A", "b"),
        (r"only \boxed{one}", "one", "one"),
        ("none", None, None),
    ],
)
def test_extract_boxed_first_and_last(text, first, last):
    assert extract_boxed(text, which="first") == first
    assert extract_boxed(text, which="last") == last


def test_extract_boxed_rejects_other_positions():
    with pytest.raises(ValueError, match="which must be 'first' or 'last'"):
        extract_boxed(r"\boxed{A}", which="middle")


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"\boxed{[1]} Jeffrey drinks green tea.", "Jeffrey drinks green tea."),
        (r"Jeffrey \boxed{[1]} drinks \boxed{x{y}} tea", "Jeffrey   drinks   tea"),  # each box becomes a space
        (r"no box", "no box"),
        (r"\boxed{unclosed tail", r"\boxed{unclosed tail"),  # an unclosed box is kept
        (r"  \boxed{[2]}  ", ""),
    ],
)
def test_strip_boxed(text, expected):
    assert strip_boxed(text) == expected


def test_boxed_spans_cover_each_whole_box():
    text = r"a \boxed{x} b \boxed {y{z}} c"
    spans = boxed_spans(text)
    assert [content for _, _, content in spans] == ["x", "y{z}"]
    assert [text[start:end] for start, end, _ in spans] == [r"\boxed{x}", r"\boxed {y{z}}"]
    assert boxed_spans(None) == [] and boxed_spans("") == []


@pytest.mark.parametrize(
    "content, expected",
    [
        (r"\text{Paris}", "Paris"),
        (r"\textbf{\textit{Paris}}", "Paris"),  # nested, from the inside out
        (r"\mathrm{New} \mbox{York}", "New York"),
        (r"  plain  ", "plain"),
        (r"\frac{1}{2}", r"\frac{1}{2}"),  # not a text wrapper
    ],
)
def test_unwrap_latex_text(content, expected):
    assert unwrap_latex_text(content) == expected
