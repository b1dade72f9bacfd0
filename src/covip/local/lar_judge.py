"""Offline stand-in verdict for LAR (last-action recall, SPEC §5): does a reply state the reference action?

The production LAR judge is an LLM reading the `lar_judge` prompt. Offline, the `local_lexical_judge`
backend answers task kind 'lar_judge' with `lexical_lar_verdict`, a purely lexical rule:

1. Reduce the reference action and the reply to content tokens: lowercase, punctuation removed,
   function words and generic verbs of intention ("need", "have", "going", ...) dropped, and a light
   suffix strip so "packages"/"package" and "returning"/"return" match.
2. Coverage = the share of the reference's content tokens found in the reply.
3. 'Correct' when coverage reaches `threshold` (default 0.6), else 'Wrong' (the one word the
   `lar_judge` prompt asks for).

It cannot tell a reply that lists several actions from one that commits to the right one, so it is
more lenient than an LLM judge on hedged replies; the report marks its numbers as a stand-in's.
"""

from __future__ import annotations

import re

DEFAULT_THRESHOLD = 0.6

_STOPWORDS = frozenset(
    """a an the and or but of to in on at by for with from into onto over under near as is are was were be
    been being am do does did has have had having it its this that these those there their them they he she
    his her him i me my mine we our you your so very just only also not no than then when where what which
    who whom whose how all any each some one up out off about again after before afterwards later
    need needed needs going go goes gonna want wanted wants must should will would shall can could
    plan planned plans still said say says told tell remember last time saw see seen""".split()
)
_WORD = re.compile(r"[a-z0-9]+")


def _stem(token: str) -> str:
    # Just enough folding for plural and verb forms of everyday actions; never below 3 letters.
    for suffix in ("ing", "ies", "es", "ed", "s"):
        if token.endswith(suffix) and len(token) - len(suffix) >= 3:
            return token[: -len(suffix)] + ("y" if suffix == "ies" else "")
    return token


def content_tokens(text: str | None) -> set[str]:
    """The stemmed content words of `text` (empty for None)."""
    words = _WORD.findall((text or "").lower())
    return {_stem(w) for w in words if w not in _STOPWORDS}


def lar_coverage(reference: str, response: str | None) -> float:
    """Share of the reference action's content tokens that the response contains (0 when it has none)."""
    wanted = content_tokens(reference)
    if not wanted:
        # A reference made only of function words: compare every word instead.
        wanted = {_stem(w) for w in _WORD.findall(reference.lower())}
        have = {_stem(w) for w in _WORD.findall((response or "").lower())}
    else:
        have = content_tokens(response)
    if not wanted:
        return 0.0
    return len(wanted & have) / len(wanted)


def lexical_lar_verdict(question: str, reference: str, response: str | None, threshold: float = DEFAULT_THRESHOLD) -> str:
    """'Correct' when the response covers at least `threshold` of the reference action's content words, else 'Wrong'.

    `question` is accepted for interface parity with the LLM judge (it sees question, reference and
    response) but a lexical rule has no use for it.
    """
    del question
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"lexical_lar_verdict: threshold must be in (0, 1], got {threshold}")
    return "Correct" if lar_coverage(reference, response) >= threshold else "Wrong"
