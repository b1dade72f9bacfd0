"""Per-item scores, as plain functions of a prediction and its truth (table-driven tests in tests/core).

- `lsd_prediction`, `lsd_score`: LSD, the boxed place of a response (the authors' `//boxed` reading
  or ours) and its token-set F1 against the true place (`whitespace_f1`, the authors' lower-cased
  whitespace split, or `token_set_f1`, punctuation-insensitive words without articles).
- `keyword_found`: ITR, whether the reminder keyword occurs (the authors' case-sensitive substring,
  or `keyword_present`, a whole word in any case).
- `set_f1` / `boxed_index_f1`: the `multi_vision` reward, the F1 of predicted and true concept indices.
- `caption_score` / `joint_caption_score`: the caption rewards from a judge's letters.
- `capeval_sample_tallies`: per-sample counts of CapEval-QA answers, from which Acc+/Acc- and their
  intervals are pooled (capeval, released scoring and the controls all count the same way), and
  `policy_identities_from`: what produced each policy's captions, for the summaries' provenance.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

from covip.core.schemas import NONE_LETTER
from covip.core.text import ARTICLES, boxed_spans, unwrap_latex_text, words

# The authors' caption reward counts each correct positive answer as 1/3 (three questions per concept).
POSITIVE_WEIGHT = 1.0 / 3.0


def token_set_f1(prediction: str | None, reference: str) -> float:
    """F1 between the word sets of prediction and reference (normalised words, articles removed);
    0.0 for no prediction, 1.0 when both have no words."""
    if prediction is None:
        return 0.0
    predicted = set(words(prediction)) - ARTICLES
    truth = set(words(reference)) - ARTICLES
    if not predicted or not truth:
        return float(predicted == truth)
    common = len(predicted & truth)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def keyword_present(text: str | None, keyword: str) -> bool:
    """Whether `keyword` occurs in `text` as a whole word, ignoring case."""
    if not text or not keyword:
        return False
    pattern = r"(?<![A-Za-z0-9])" + re.escape(keyword.strip()) + r"(?![A-Za-z0-9])"
    return re.search(pattern, text, re.IGNORECASE) is not None


LSD_BOX_STYLES = ("latex", "slashes")
LSD_TOKENS = ("whitespace", "words")
ITR_MATCHES = ("substring", "word")
_SLASHES_BOX = re.compile(r"//boxed\{([^}]*)\}")


def lsd_prediction(response: str | None, style: str = "latex") -> str:
    """The place an LSD response gives ('' for none).

    'latex': the content of the last complete `\\boxed{...}` or `//boxed{...}` (balanced braces, LaTeX
    text wrappers unwrapped). 'slashes': the authors' reading: the last `//boxed{...}` (up to the first
    `}`), else the text after the last '//' (the one before when that is empty), else ''.
    """
    if style not in LSD_BOX_STYLES:
        raise ValueError(f"LSD box style must be one of {list(LSD_BOX_STYLES)}, got {style!r}")
    text = response or ""
    if style == "latex":
        spans = boxed_spans(text, ("\\boxed", "//boxed"))
        return unwrap_latex_text(spans[-1][2]) if spans else ""
    boxes = _SLASHES_BOX.findall(text)
    if boxes:
        return boxes[-1].strip()
    if "//" in text:
        pieces = text.split("//")
        return pieces[-1].strip() or pieces[-2].strip()
    return ""


def whitespace_f1(prediction: str | None, reference: str) -> float:
    """The authors' LSD F1: sets of lower-cased whitespace-separated tokens (punctuation stays on the
    token); 1.0 when both are empty, 0.0 when one is."""
    predicted, truth = set((prediction or "").lower().split()), set(reference.lower().split())
    if not predicted and not truth:
        return 1.0
    common = len(predicted & truth)
    if not predicted or not truth or not common:
        return 0.0
    precision, recall = common / len(predicted), common / len(truth)
    return 2 * precision * recall / (precision + recall)


def lsd_score(prediction: str | None, answer: str, tokens: str = "whitespace") -> float:
    """LSD F1 of a prediction against the true place, by `tokens` (LSD_TOKENS)."""
    if tokens not in LSD_TOKENS:
        raise ValueError(f"LSD tokens must be one of {list(LSD_TOKENS)}, got {tokens!r}")
    return whitespace_f1(prediction, answer) if tokens == "whitespace" else token_set_f1(prediction or None, answer)


def keyword_found(text: str | None, keyword: str, match: str = "substring") -> bool:
    """ITR: 'substring' is the authors' test (the keyword, case-sensitive, anywhere in the text);
    'word' is `keyword_present` (a whole word, any case)."""
    if match not in ITR_MATCHES:
        raise ValueError(f"ITR match must be one of {list(ITR_MATCHES)}, got {match!r}")
    if match == "word":
        return keyword_present(text, keyword)
    return bool(text) and bool(keyword.strip()) and keyword.strip() in text


def set_f1(predicted: set[int], truth: set[int]) -> float:
    """F1 of two index sets; two empty sets agree perfectly (1.0)."""
    if not predicted and not truth:
        return 1.0
    hits = len(predicted & truth)
    if hits == 0:
        return 0.0
    precision, recall = hits / len(predicted), hits / len(truth)
    return 2 * precision * recall / (precision + recall)


def parse_boxed_indices(text: str | None) -> set[int] | None:
    """The integer set in the FIRST complete ``\\boxed{...}`` of `text`, or None when it is not readable.

    As the authors' multi_vision reward, only the first box counts: a later box never rescues an
    unreadable first one. ``\\boxed{[0, 3]}``, ``\\boxed{0,3}``, ``\\boxed{2}`` and ``\\boxed{[]}``
    (the empty set) are readable; ``\\boxed{}``, ``\\boxed{[1, x]}`` and a missing box are not.
    """
    spans = boxed_spans(text)
    if not spans:
        return None
    inner = spans[0][2].strip()
    if inner.startswith("[") and inner.endswith("]"):
        inner = inner[1:-1].strip()
    elif not inner:
        return None
    if not inner:
        return set()
    items = [item.strip() for item in inner.split(",")]
    if not all(re.fullmatch(r"[+-]?\d+", item) for item in items):
        return None
    return {int(item) for item in items}


def boxed_index_f1(completion: str | None, truth: Sequence[int]) -> float:
    """Set F1 of the indices in the first box of `completion` against `truth` (both counted from 0 in
    the `multi_vision` task); 0 when that box is not readable."""
    predicted = parse_boxed_indices(completion)
    return 0.0 if predicted is None else set_f1(predicted, {int(i) for i in truth})


def caption_score(positive_letters: Sequence[tuple[str, str]], negative_letters: Sequence[str]) -> float:
    """The authors' caption reward from (judged, correct) letter pairs of positive questions and the
    judged letters of negative questions: (1/3)·#correct − #negatives not D / #negatives."""
    correct = sum(1 for judged, answer in positive_letters if judged == answer)
    leaked = sum(1 for judged in negative_letters if judged != NONE_LETTER)
    penalty = leaked / len(negative_letters) if negative_letters else 0.0
    return POSITIVE_WEIGHT * correct - penalty


def joint_caption_score(positive_letters: Sequence[tuple[str, str]], negative_letters: Sequence[str]) -> float:
    """The paper's r_caps: #correct positive answers − #negative questions not answered D."""
    correct = sum(1 for judged, answer in positive_letters if judged == answer)
    return float(correct - sum(1 for judged in negative_letters if judged != NONE_LETTER))


class TallyError(ValueError):
    """CapEval-QA answer rows that disagree about a sample; the message names the row and field."""


def caption_failed(row: Mapping) -> bool:
    """Whether a CapEval-QA answer row belongs to a sample whose caption failed (no question was asked)."""
    return bool(row.get("caption_failed"))


def failed_caption_samples(answer_rows: Iterable[Mapping]) -> dict[tuple[str, str], dict[str, int]]:
    """(policy, judge) -> sample_id -> num_positives of every sample whose caption failed."""
    groups: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for row in answer_rows:
        if caption_failed(row):
            groups[(row["policy"], row["judge"])][row["sample_id"]] = int(row["num_positives"])
    return groups


def capeval_sample_tallies(answer_rows: Iterable[Mapping], *, drop_failed_samples: bool = False
                           ) -> dict[tuple[str, str], dict[str, list[int]]]:
    """(policy, judge) -> sample_id -> [num_positives, positives correct, positives, negatives correct,
    negatives, unparseable, judge failed]: the per-sample counts every Acc+/Acc- number is pooled from.
    Samples whose caption failed are not in it (`failed_caption_samples` counts them).

    `drop_failed_samples` (capeval.failed_calls 'drop_sample', the authors' code): a sample with a
    failed judge call counts no question at all; its unparseable and failed counts stay reported."""
    groups: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(dict)
    for position, row in enumerate(answer_rows):
        if caption_failed(row):
            continue
        sample = groups[(row["policy"], row["judge"])].setdefault(row["sample_id"], [row["num_positives"], 0, 0, 0, 0, 0, 0])
        if sample[0] != row["num_positives"]:
            raise TallyError(
                f"capeval answers row {position} (sample_id={row['sample_id']}) field 'num_positives': "
                f"{row['num_positives']} disagrees with {sample[0]} on other rows of the sample"
            )
        correct = int(bool(row["correct"]))
        if row["is_positive"]:
            sample[1] += correct
            sample[2] += 1
        else:
            sample[3] += correct
            sample[4] += 1
        sample[5] += int(bool(row["unparseable"]))
        sample[6] += int(row.get("raw_answer") is None)
    if drop_failed_samples:
        for samples in groups.values():
            for stats in samples.values():
                if stats[6]:
                    stats[1:5] = [0, 0, 0, 0]
    return groups


def policy_identities_from(captions_rows: Iterable[Mapping]) -> dict[str, str]:
    """policy -> model_identity of its captions (several identities are joined with ' | ')."""
    found: dict[str, list[str]] = defaultdict(list)
    for row in captions_rows:
        identity = row.get("model_identity") or row["policy"]
        if identity not in found[row["policy"]]:
            found[row["policy"]].append(identity)
    return {policy: " | ".join(identities) for policy, identities in found.items()}
