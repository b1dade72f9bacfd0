"""Word-level text matching shared by the stages and the offline stand-ins.

Fact checks in dialogues, answer support in MCQAs, the lexical judge and the reference policies
all compare texts by their content words; keeping that here means a stand-in does not import a
stage module (and an edit to a stage does not change the code fingerprint of the stand-ins).
"""

from __future__ import annotations

import re

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
