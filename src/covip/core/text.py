"""Text handling shared by every stage and stand-in: content words, one normaliser, reasoning blocks, boxed answers.

Fact checks in dialogues, answer support in MCQAs, the lexical judge and the reference policies
all compare texts by their content words; keeping that here means a stand-in does not import a
stage module (and an edit to a stage does not change the code fingerprint of the stand-ins).
"""

from __future__ import annotations

import re
import unicodedata

_STOPWORDS = frozenset(
    """a an the and or but of to in on at by for with from into onto over under near as is are was were
    be been being am do does did has have had it its this that these those there their them they he she
    his her him i me my we our you your so very just only also not no than then when where what which
    who whom whose how all any each every some one up out off about again""".split()
)
_MONTHS = (
    "january february march april may june july august september october november december".split()
)
_MONTH_ABBREV = {m[:3]: m for m in _MONTHS} | {"sept": "september"}
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")


def content_tokens(text: str) -> list[str]:
    """Lower-cased content words of `text`, with dates and simple plurals normalised.

    '2025-10-11', 'October 11th, 2025' and 'Oct 11 2025' all give the same tokens, so a model that
    rewrites a date in words still counts as having mentioned it.
    """
    text = _ISO_DATE.sub(lambda m: f"{m[1]} {_MONTHS[int(m[2]) - 1] if 1 <= int(m[2]) <= 12 else m[2]} {int(m[3])}", text.lower())
    out = []
    for token in re.findall(r"[a-z0-9]+", text):
        if token in _STOPWORDS:
            continue
        if re.fullmatch(r"\d+(st|nd|rd|th)", token):
            token = token[:-2]
        if token.isdigit():
            token = str(int(token))
        token = _MONTH_ABBREV.get(token, token)
        if len(token) > 3 and token.endswith("s") and not token.endswith("ss"):
            token = token[:-1]
        out.append(token)
    return out


def token_coverage(text: str, reference: str) -> float:
    """Share of the content words of `text` that occur in `reference` (0.0 when `text` has none)."""
    tokens = set(content_tokens(text))
    if not tokens:
        return 0.0
    return len(tokens & set(content_tokens(reference))) / len(tokens)


# ---------------------------------------------------------------------------------------------------
# One normaliser, one think-stripper, one boxed-answer reader, for every stage and stand-in.

_WORD_CHARS = re.compile(r"[^\W_]+")
ARTICLES = frozenset({"a", "an", "the"})


def normalize_text(text: str) -> str:
    """Case-, space- and punctuation-insensitive form of `text` (Unicode-aware): its words, casefolded,
    joined by single spaces. Duplicate checks, option matching and token F1 all compare this form."""
    return " ".join(_WORD_CHARS.findall(unicodedata.normalize("NFKC", text).casefold()))


def words(text: str | None) -> list[str]:
    """The words of `normalize_text(text)` (empty for None)."""
    return normalize_text(text or "").split()


# A reasoning block, closed or running to the end of the reply (a model cut off while thinking).
_THINK_BLOCK = re.compile(r"<think>.*?(?:</think>|$)", re.IGNORECASE | re.DOTALL)
_CLOSED_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<think>", re.IGNORECASE)


def strip_think(text: str) -> str:
    """`text` without its <think>...</think> blocks; an unclosed block is removed to the end."""
    return _THINK_BLOCK.sub("", text)


def unfinished_think(text: str) -> bool:
    """True when a <think> block is still open once the closed ones are removed: the model ran out of
    tokens while reasoning, so whatever precedes it is not its answer."""
    return _THINK_OPEN.search(_CLOSED_THINK_BLOCK.sub(" ", text)) is not None


def without_closed_think(text: str) -> str:
    """`text` with each closed <think>...</think> block replaced by a space (unclosed ones kept)."""
    return _CLOSED_THINK_BLOCK.sub(" ", text)


_BOXED = "\\boxed"
_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textit|mathrm|mbox|operatorname)\s*\{([^{}]*)\}")


def boxed_spans(text: str | None, markers: tuple[str, ...] = (_BOXED,)) -> list[tuple[int, int, str]]:
    """Every complete `\\boxed{...}` of `text` with balanced braces, in order: (start, end, content).

    `start:end` covers the whole box; an unclosed box is skipped. `markers` are the commands that open
    a box (default `\\boxed`; LSD also reads the `//boxed` its authors' question asks for)."""
    if not text:
        return []
    spans = []
    starts = sorted({m.start() for marker in markers for m in re.finditer(re.escape(marker), text)})
    for start in starts:
        marker = next(m for m in markers if text.startswith(m, start))
        brace = start + len(marker)
        while brace < len(text) and text[brace].isspace():
            brace += 1
        end = None
        if brace < len(text) and text[brace] == "{":
            depth = 0
            for position in range(brace, len(text)):
                if text[position] == "{":
                    depth += 1
                elif text[position] == "}":
                    depth -= 1
                    if depth == 0:
                        end = position
                        break
        if end is not None:
            spans.append((start, end + 1, text[brace + 1 : end]))
    return spans


def unwrap_latex_text(content: str) -> str:
    """`\\text{Paris}` -> `Paris` (nested wrappers from the inside out), stripped."""
    previous = None
    while previous != content:
        previous, content = content, _TEXT_WRAPPER.sub(r"\1", content)
    return content.strip()


def extract_boxed(text: str | None, which: str = "last") -> str | None:
    """The content of the first or last complete `\\boxed{...}` of `text`, LaTeX text wrappers
    unwrapped, or None when there is none."""
    if which not in ("first", "last"):
        raise ValueError(f"extract_boxed: which must be 'first' or 'last', got {which!r}")
    spans = boxed_spans(text)
    if not spans:
        return None
    return unwrap_latex_text(spans[0 if which == "first" else -1][2])


def strip_boxed(text: str) -> str:
    """`text` with every complete `\\boxed{...}` replaced by a space, stripped."""
    pieces, position = [], 0
    for start, end, _ in boxed_spans(text):
        pieces += [text[position:start], " "]
        position = end
    return ("".join(pieces) + text[position:]).strip()
