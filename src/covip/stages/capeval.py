"""Stage 10: CapEval-QA. A judge answers each test question from a policy's caption alone.

For every captioned test sample, every question of every context concept goes to the judge with
only the caption beside it (SPEC §3). Questions of concepts that are in the query image (positives)
score when the judge picks the correct letter (Acc+); questions of concepts that are not (negatives)
score when it picks D, "cannot be determined" (Acc-), i.e. when the caption did not drag in memories
of absent concepts.

Decisions, recorded on every row so the summary can count them:

- A judge reply with no readable letter counts as 'D', as in the authors' code, with
  `unparseable=True`. It helps Acc- and hurts Acc+, so the summary reports how many there were.
- A judge call that failed (after the client layer's retries) is also counted as 'D', as the
  authors' code would, but it keeps `raw_answer=None` and `unparseable=True`, and the summary counts
  it again in `n_judge_failed`: such a number is a judging problem, not a property of the policy.
- With `max_attempts` > 1 (default 1, the authors' protocol) a reply with no readable letter is
  sent back with the `capeval_repair` instruction, and a failed call is repeated, up to that many
  calls per question; only what is still unreadable after that counts as D. Above
  `max_failure_rate` unreadable or failed answers the workflow job fails (see covip.reliability).
- A caption that failed to generate (status 'failed' or no text) is judged as an empty caption: the
  policy said nothing, so its positives are wrong and its negatives right. The captions table keeps
  the failure itself.

Per-question rows first (`judge_captions`), aggregation second (`summarize_capeval`), so a rerun of
the summary never calls the judge again. `score_released_captions` runs the same judging on the
authors' released ground truth (QAS_GT_test.json) for captions a user brings, also from the command
line: `python -m covip.stages.capeval score-released --qas-gt ... --captions ... --out-dir ...`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from covip.clients.base import ChatModel, ChatRequest, ChatResponse, Message
from covip.clients.registry import run_concurrently, is_stand_in
from covip.formats import load_qas_gt
from covip.local.facts import normalize_text
from covip.prompts import PromptBook
from covip.reliability import FailureReport, failure_report, validate_max_failure_rate
from covip.seeding import derive_seed, rng_for

LETTERS = ("A", "B", "C", "D")
NONE_LETTER = "D"
MISSING_CAPTION_MODES = ("error", "ignore")


class CapEvalInputError(ValueError):
    """Malformed captions, splits or ground truth; the message names the file or table, row and field."""


@dataclass
class CapEvalSettings:
    """Settings of stage 10 (config section `capeval`)."""

    n_bootstrap: int = field(
        default=1000,
        metadata={"help": "bootstrap resamples (over samples) for the confidence intervals; 0 leaves them empty"},
    )
    confidence: float = field(default=0.95, metadata={"help": "coverage of the bootstrap intervals"})
    seed_offset: int = field(
        default=0,
        metadata={
            "help": "extra key in every judge request's seed; change it to draw a fresh set of sampled judge "
            "answers (a second judge run) without changing the benchmark seed"
        },
    )
    concurrency: int | None = field(
        default=None, metadata={"help": "parallel judge requests; default: the judge's registry concurrency"}
    )
    max_attempts: int = field(
        default=1,
        metadata={
            "help": "judge calls per question: a reply with no readable letter (or a failed call) is asked again "
            "with a repair instruction up to this many calls in all; 1 (default) keeps the authors' protocol, "
            "where the first reply counts and an unreadable one is D"
        },
    )
    max_failure_rate: float = field(
        default=0.2,
        metadata={
            "help": "the stage fails (writes nothing, prints a summary) when more than this share of judge "
            "answers is unreadable or failed after all attempts; finished calls stay cached"
        },
    )
    missing_captions: str = field(
        default="error",
        metadata={
            "help": "what to do when a test sample has no caption row for a policy: 'error' (default), or "
            "'ignore' to score only the captioned samples"
        },
    )

    def __post_init__(self):
        validate_max_failure_rate(self.max_failure_rate, "capeval")
        if self.max_attempts < 1:
            raise ValueError(f"capeval.max_attempts must be >= 1, got {self.max_attempts}")
        if self.n_bootstrap < 0:
            raise ValueError(f"capeval.n_bootstrap must be >= 0, got {self.n_bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"capeval.confidence must be in (0, 1), got {self.confidence}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"capeval.concurrency must be >= 1 or null, got {self.concurrency}")
        if self.missing_captions not in MISSING_CAPTION_MODES:
            raise ValueError(
                f"capeval.missing_captions must be one of {list(MISSING_CAPTION_MODES)}, got {self.missing_captions!r}"
            )


# ---------------------------------------------------------------------------------------------------
# One judge request, one parsed answer


def judge_seed(seed: int, *keys: object) -> int:
    """A 31-bit seed for one judge request (servers such as llama.cpp take 32-bit seeds)."""
    return derive_seed(seed, "capeval", *keys) % (2**31)


def build_judge_request(caption: str, question: Mapping, prompts: PromptBook, *, seed: int | None) -> ChatRequest:
    """The judge's request for one question: the caption and the question with options A-D, nothing else.

    `question` is `{'question': str, 'options': {'A'..'D': str}}` (an answer key, if present, is
    never shown). `task` carries the same facts for offline stand-ins; sampling comes from the
    judge's registry entry.
    """
    options = {letter: str(question["options"][letter]) for letter in LETTERS}
    text = prompts.render(
        "capeval_judge",
        caption=caption,
        question=question["question"],
        option_a=options["A"],
        option_b=options["B"],
        option_c=options["C"],
        option_d=options["D"],
    )
    task = {"kind": "capeval", "caption": caption, "question": question["question"], "options": options}
    return ChatRequest((Message.user(text),), task=task, seed=seed)


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_MARKUP = re.compile(r"[*_`#>]")
_BARE = re.compile(r"[\(\[]?\s*([A-Da-d])\s*[\)\]]?\s*[.:]?")
_LABELLED = re.compile(r"[\(\[]?([A-D])[\)\].:]\s+\S")
# 'answer is B', 'Answer: b', 'option (C)', 'choice D.'; a lower-case letter only when nothing but
# punctuation or the end follows it, so 'the answer is a tough one' names no letter.
_KEYWORD = re.compile(
    r"(?i:\b(?:answer|option|choice)\b)(?:\s+(?i:is|would\s+be|should\s+be|will\s+be))?\s*[:\-=]?\s*[\(\[]?"
    r"(?:([A-D])(?![\w'’])|([a-d])(?=\s*(?:[\)\].:,;!]|$)))"
)
_LETTER_LIST = re.compile(r"(?<![\w'’])[\(\[]?[A-D][\)\]]?\s*(?:\bor\b|\band\b|/|,|&)\s*[\(\[]?[A-D](?![\w'’])")
_STANDALONE = re.compile(r"(?<![\w'’])[\(\[]?([A-D])[\)\]]?(?![\w'’-])")


def parse_judge_letter(text: str | None, options: Mapping[str, str] | None = None) -> str | None:
    """The letter A-D a judge's reply names, or None when it names none or more than one.

    Read, in this order: a bare letter ('B', 'b', '(B)', '**B**', 'B.'); two letters offered as
    alternatives ('A or B') -> None; a reply that starts with a labelled option ('B) Oak trees');
    a letter after 'answer', 'option' or 'choice' ('Answer: B', 'The answer is B) Oak trees';
    different letters there -> None); the reply being exactly one option's text (needs `options`);
    finally a single stand-alone capital letter ('I would pick C.'; the article 'A' before a word
    does not count). Reasoning inside <think>...</think> is ignored; an unclosed <think> gives None.
    """
    if text is None:
        return None
    text = _THINK_BLOCK.sub(" ", text)
    if re.search(r"<think>", text, re.IGNORECASE):
        return None  # the model ran out of tokens while still reasoning
    cleaned = _MARKUP.sub("", text).strip()
    if not cleaned:
        return None
    if match := _BARE.fullmatch(cleaned):
        return match[1].upper()
    if _LETTER_LIST.search(cleaned):
        return None
    if match := _LABELLED.match(cleaned):
        return match[1]
    named = {(upper or lower).upper() for upper, lower in _KEYWORD.findall(cleaned)}
    if len(named) == 1:
        return named.pop()
    if len(named) > 1:
        return None
    if options:
        reply = normalize_text(cleaned)
        same = [letter for letter in LETTERS if letter in options and normalize_text(str(options[letter])) == reply]
        if len(same) == 1:
            return same[0]
    standalone = set()
    for match in _STANDALONE.finditer(cleaned):
        letter = match[1]
        following = cleaned[match.end() :]
        if letter == "A" and not match[0].startswith(("(", "[")) and re.match(r"\s+[a-z]", following):
            continue  # the article 'A', as in 'A dog is ...'
        standalone.add(letter)
    return standalone.pop() if len(standalone) == 1 else None


# ---------------------------------------------------------------------------------------------------
# Inputs: the questions of each sample, the captions of each policy


@dataclass(frozen=True)
class _Item:
    """The ground truth of one test sample: its positive indices and the questions per context concept."""

    sample_id: str
    num_positives: int
    positive_indices: frozenset[int]
    questions: tuple[tuple[dict, ...], ...]  # per context index: {question_id, question, options, answer}


def _check_question(q, where: str, question_id: str) -> dict:
    if not isinstance(q, Mapping):
        raise CapEvalInputError(f"{where}: must be an object with question, options and answer, got {type(q).__name__}")
    text = q.get("question")
    if not isinstance(text, str) or not text.strip():
        raise CapEvalInputError(f"{where} field 'question': missing or empty")
    options = q.get("options")
    if not isinstance(options, Mapping):
        raise CapEvalInputError(f"{where} field 'options': must be an object of A-D, got {type(options).__name__}")
    for letter in LETTERS:
        if not isinstance(options.get(letter), str):
            raise CapEvalInputError(f"{where} field 'options'.{letter}: missing or not a string")
    answer = q.get("answer")
    if answer not in LETTERS:
        raise CapEvalInputError(f"{where} field 'answer': must be one of A-D, got {answer!r}")
    return {
        "question_id": str(q.get("question_id") or question_id),
        "question": text,
        "options": {letter: options[letter] for letter in LETTERS},
        "answer": answer,
    }


def _as_list(value) -> list:
    """A list from a list, tuple or numpy array (rows read through pandas hold arrays); None -> []."""
    return [] if value is None else list(value)


def _items_from_split(split_rows: Iterable[Mapping], where: str) -> dict[str, _Item]:
    """Test split rows (schemas.SPLIT) as ground truth. Questions are numbered Q1, Q2, ... per concept,
    the authors' convention, since the published split carries no question ids."""
    items: dict[str, _Item] = {}
    for position, row in enumerate(split_rows):
        sample_id = row.get("sample_id")
        at = f"{where} row {position} (sample_id={sample_id})"
        if not isinstance(sample_id, str) or not sample_id:
            raise CapEvalInputError(f"{at} field 'sample_id': missing or empty")
        if sample_id in items:
            raise CapEvalInputError(f"{at} field 'sample_id': appears twice")
        mcqa = row.get("mcqa")
        if mcqa is None:
            raise CapEvalInputError(f"{at} field 'mcqa': missing")
        positives = [int(i) for i in _as_list(row.get("positive_indices"))]
        names = row.get("context_names")
        if names is not None and len(names) != len(mcqa):
            raise CapEvalInputError(
                f"{at} field 'mcqa': {len(mcqa)} question lists for {len(names)} context concepts"
            )
        bad = [i for i in positives if not 0 <= i < len(mcqa)]
        if bad:
            raise CapEvalInputError(f"{at} field 'positive_indices': {bad} outside the {len(mcqa)} context concepts")
        questions = tuple(
            tuple(
                _check_question(q, f"{at} field 'mcqa'[{ci}][{qi}]", f"Q{qi + 1}")
                for qi, q in enumerate(_as_list(concept_questions))
            )
            for ci, concept_questions in enumerate(_as_list(mcqa))
        )
        num = row.get("num_positives")
        items[sample_id] = _Item(sample_id, int(num) if num is not None else len(positives), frozenset(positives), questions)
    return items


def _items_from_records(records: list[dict]) -> dict[str, _Item]:
    """Released ground-truth records (covip.formats.load_qas_gt) as ground truth."""
    items: dict[str, _Item] = {}
    for record in records:
        sample_id = record["sample_id"]
        at = f"qas_gt sample '{sample_id}'"
        questions = tuple(
            tuple(
                _check_question(q, f"{at} concept_{ci} qa[{qi}]", f"Q{qi + 1}") for qi, q in enumerate(concept_questions)
            )
            for ci, concept_questions in enumerate(record["questions"])
        )
        positives = frozenset(int(i) for i in record["positive_indices"])
        items[sample_id] = _Item(sample_id, len(positives), positives, questions)
    return items


def _caption_text(row: Mapping) -> str:
    """The text the judge reads: a failed or missing caption reads as an empty one (module docstring)."""
    if row.get("status", "ok") != "ok" or row.get("caption") is None:
        return ""
    return str(row["caption"])


def _pair_captions(captions_rows, items: dict[str, _Item], settings: CapEvalSettings, where: str):
    pairs = []
    seen: dict[str, set[str]] = defaultdict(set)
    for position, row in enumerate(captions_rows):
        policy, sample_id = row.get("policy"), row.get("sample_id")
        at = f"{where} row {position} (policy={policy}, sample_id={sample_id})"
        if not isinstance(policy, str) or not policy:
            raise CapEvalInputError(f"{at} field 'policy': missing or empty")
        if sample_id not in items:
            raise CapEvalInputError(f"{at} field 'sample_id': no such sample in the ground truth")
        if sample_id in seen[policy]:
            raise CapEvalInputError(f"{at}: a second caption for the same (policy, sample)")
        seen[policy].add(sample_id)
        pairs.append((row, items[sample_id]))
    if settings.missing_captions == "error":
        for policy, done in seen.items():
            missing = sorted(set(items) - done)
            if missing:
                raise CapEvalInputError(
                    f"{where}: policy '{policy}' has no caption for {len(missing)} of {len(items)} samples "
                    f"(first: {missing[:5]}); caption them, or set capeval.missing_captions: ignore"
                )
    return pairs


# ---------------------------------------------------------------------------------------------------
# Judging


def _complete_all(judge: ChatModel, requests: list[ChatRequest], concurrency: int | None, progress_file) -> list[ChatResponse]:
    many = getattr(judge, "complete_many", None)
    if many is not None:
        return many(requests, desc="capeval judge", progress_file=progress_file, concurrency=concurrency)
    workers = concurrency or int(getattr(getattr(judge, "spec", None), "concurrency", 1) or 1)

    def one(request):
        try:
            return judge.complete(request)
        except Exception as error:  # noqa: BLE001 - recorded on the row, never hidden
            return ChatResponse(None, getattr(judge, "identity", "judge"), error=f"{type(error).__name__}: {error}")

    return list(run_concurrently(one, requests, concurrency=workers, desc="capeval judge", file=progress_file))


def _repair_unreadable(judge, requests, responses, slots, prompts, settings, seed, progress_file) -> list[ChatResponse]:
    """Ask again, up to `settings.max_attempts` calls per question, where the reply named no letter
    (with the reply and a repair instruction appended) or the call failed (as it was, fresh seed).
    A reply that stays unreadable is kept (its text goes on the row); a later failed call does not
    replace an earlier reply."""
    responses = list(responses)
    for attempt in range(2, settings.max_attempts + 1):
        redo, retry = [], []
        for index, response in enumerate(responses):
            caption_row, item, ci, q = slots[index]
            if response.ok and parse_judge_letter(response.text, q["options"]) is not None:
                continue
            original = requests[index]
            messages = original.messages
            if response.ok:
                messages = messages + (Message.assistant(response.text), Message.user(prompts.render("capeval_repair")))
            retry_seed = judge_seed(seed, settings.seed_offset, caption_row["policy"], item.sample_id, ci,
                                    q["question_id"], attempt)
            task = dict(original.task or {}, attempt=attempt)
            retry.append(ChatRequest(messages, original.sampling, original.response_schema, task, retry_seed))
            redo.append(index)
        if not redo:
            break
        for index, answer in zip(redo, _complete_all(judge, retry, settings.concurrency, progress_file)):
            if answer.ok or not responses[index].ok:
                responses[index] = answer
    return responses


def _judge_pairs(pairs, judge, prompts, settings, seed, judge_name, progress_file) -> list[dict]:
    judge_identity = getattr(judge, "identity", judge_name)
    judge_stand_in = is_stand_in(judge)
    slots, requests = [], []
    for caption_row, item in pairs:
        caption = _caption_text(caption_row)
        policy = caption_row["policy"]
        for ci, concept_questions in enumerate(item.questions):
            for q in concept_questions:
                request_seed = judge_seed(seed, settings.seed_offset, policy, item.sample_id, ci, q["question_id"])
                requests.append(build_judge_request(caption, q, prompts, seed=request_seed))
                slots.append((caption_row, item, ci, q))
    responses = _complete_all(judge, requests, settings.concurrency, progress_file)
    responses = _repair_unreadable(judge, requests, responses, slots, prompts, settings, seed, progress_file)
    rows = []
    for (caption_row, item, ci, q), response in zip(slots, responses):
        failed = not response.ok
        letter = None if failed else parse_judge_letter(response.text, q["options"])
        parsed = letter or NONE_LETTER  # the authors' rule: no readable letter counts as D
        positive = ci in item.positive_indices
        rows.append(
            {
                "policy": caption_row["policy"],
                "judge": judge_name,
                "sample_id": item.sample_id,
                "num_positives": item.num_positives,
                "context_index": ci,
                "question_id": q["question_id"],
                "is_positive": positive,
                "answer": q["answer"],
                "raw_answer": None if failed else response.text,
                "parsed": parsed,
                "unparseable": letter is None,
                "correct": parsed == q["answer"] if positive else parsed == NONE_LETTER,
                "judge_identity": judge_identity,
                "stand_in": judge_stand_in or bool(caption_row.get("stand_in", False)),
            }
        )
    return rows


def judge_failures(answer_rows: list[dict]) -> FailureReport:
    """Judge answers that named no letter or whose call failed (they count as D; see the module docstring)."""
    return failure_report(
        answer_rows,
        "capeval",
        failed=lambda row: bool(row["unparseable"]),
        reason=lambda row: "judge call failed" if row.get("raw_answer") is None else "reply names no option",
    )


def judge_captions(
    captions_rows: list[dict],
    split_rows: list[dict],
    judge: ChatModel,
    prompts: PromptBook,
    settings: CapEvalSettings,
    seed: int,
    judge_name: str,
    progress_file=None,
) -> list[dict]:
    """Judge every question of every captioned sample; rows of schemas.CAPEVAL_ANSWERS.

    `captions_rows` (schemas.CAPTIONS, any number of policies) are paired with `split_rows`
    (schemas.SPLIT, the test split) by sample_id. Every context concept's questions are asked:
    positives (context index in positive_indices) and negatives. All requests go to the judge at
    once (`complete_many`: cache, batching or bounded concurrency). Each request's seed comes from
    (seed, seed_offset, policy, sample, concept, question), so a sampled judge is reproducible and
    its answers cacheable. `stand_in` is True when the judge or the caption's policy is a stand-in.
    """
    items = _items_from_split(split_rows, "test split")
    pairs = _pair_captions(captions_rows, items, settings, "captions")
    return _judge_pairs(pairs, judge, prompts, settings, seed, judge_name, progress_file)


# ---------------------------------------------------------------------------------------------------
# Aggregation


def _interval(correct: np.ndarray, total: np.ndarray, draws: np.ndarray, confidence: float):
    """Percentile interval (in percent) of the pooled ratio over bootstrap draws of samples."""
    c = correct[draws].sum(axis=1)
    t = total[draws].sum(axis=1)
    ratios = c[t > 0] / t[t > 0]  # a draw with no questions of this kind says nothing
    if ratios.size == 0:
        return None, None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(low) * 100.0, float(high) * 100.0


def bootstrap_draws(rng: np.random.Generator, n_samples: int, n_bootstrap: int) -> np.ndarray:
    """(n_bootstrap, n_samples) sample indices drawn with replacement, in chunks to bound memory."""
    chunk = max(1, 4_000_000 // max(1, n_samples))
    parts = [
        rng.integers(0, n_samples, size=(min(chunk, n_bootstrap - start), n_samples))
        for start in range(0, n_bootstrap, chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros((0, n_samples), dtype=np.int64)


def paired_drop_interval(
    base_correct: np.ndarray, base_total: np.ndarray, correct: np.ndarray, total: np.ndarray, draws: np.ndarray,
    confidence: float,
) -> tuple[float | None, float | None]:
    """Percentile interval (in points) of base ratio - ratio, both pooled over the SAME drawn samples.

    Arrays are per sample and aligned (sample k is the same sample in both); a draw in which either
    side has no questions is skipped. Pairing removes the between-sample spread from the difference.
    """
    bc, bt = base_correct[draws].sum(axis=1), base_total[draws].sum(axis=1)
    c, t = correct[draws].sum(axis=1), total[draws].sum(axis=1)
    keep = (bt > 0) & (t > 0)
    if not keep.any():
        return None, None
    drops = bc[keep] / bt[keep] - c[keep] / t[keep]
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(drops, [tail, 100.0 - tail])
    return float(low) * 100.0, float(high) * 100.0


def per_sample_counts(answer_rows: Iterable[Mapping]) -> dict[tuple[str, str], dict[str, list[int]]]:
    """(policy, judge) -> sample_id -> [num_positives, pos correct, pos total, neg correct, neg total,
    unparseable, judge failed], the per-sample tallies every Acc+/Acc- number is pooled from."""
    groups: dict[tuple[str, str], dict[str, list[int]]] = defaultdict(dict)
    for position, row in enumerate(answer_rows):
        sample = groups[(row["policy"], row["judge"])].setdefault(row["sample_id"], [row["num_positives"], 0, 0, 0, 0, 0, 0])
        if sample[0] != row["num_positives"]:
            raise CapEvalInputError(
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
    return groups


def _summary_row(policy, judge, count, per_sample, n_bootstrap, seed, confidence, policy_identity, judge_identity, stand_in):
    stats = np.array([s[1:] for s in per_sample], dtype=np.int64).reshape(-1, 6)
    pos_c, pos_t, neg_c, neg_t, unparseable, failed = stats.T
    row = {
        "policy": policy,
        "judge": judge,
        "num_positives": count,
        "acc_pos": 100.0 * pos_c.sum() / pos_t.sum() if pos_t.sum() else None,
        "acc_neg": 100.0 * neg_c.sum() / neg_t.sum() if neg_t.sum() else None,
        "acc_pos_low": None,
        "acc_pos_high": None,
        "acc_neg_low": None,
        "acc_neg_high": None,
        "n_pos_questions": int(pos_t.sum()),
        "n_neg_questions": int(neg_t.sum()),
        "n_unparseable": int(unparseable.sum()),
        "n_judge_failed": int(failed.sum()),
        "policy_identity": policy_identity,
        "judge_identity": judge_identity,
        "stand_in": stand_in,
    }
    if n_bootstrap > 0 and len(per_sample):
        # The same sample draws serve Acc+ and Acc-.
        draws = bootstrap_draws(rng_for(seed, "capeval-bootstrap", policy, judge, count), len(per_sample), n_bootstrap)
        row["acc_pos_low"], row["acc_pos_high"] = _interval(pos_c, pos_t, draws, confidence) if pos_t.sum() else (None, None)
        row["acc_neg_low"], row["acc_neg_high"] = _interval(neg_c, neg_t, draws, confidence) if neg_t.sum() else (None, None)
    return row


def summarize_capeval(
    answer_rows: list[dict],
    n_bootstrap: int = 1000,
    seed: int = 0,
    *,
    confidence: float = 0.95,
    policy_identities: Mapping[str, str] | None = None,
) -> list[dict]:
    """Acc+ / Acc- in percent per (policy, judge, number of positives), plus a pooled row (0).

    Acc+ pools every positive question of the group, Acc- every negative one (the pooled row pools
    questions over all counts, it does not average the per-count accuracies). Intervals are
    `confidence` percentile intervals of a cluster bootstrap: samples are drawn with replacement,
    each bringing all its questions, because the questions of one caption are not independent.
    Seeded per (seed, policy, judge, count), numpy only. `policy_identities` maps a policy to what
    produced its captions (see `policy_identities_from`); by default the policy name.
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    meta: dict[tuple[str, str], dict] = {}
    for position, row in enumerate(answer_rows):
        key = (row["policy"], row["judge"])
        info = meta.setdefault(key, {"judge_identity": row["judge_identity"], "stand_in": False})
        if row["judge_identity"] != info["judge_identity"]:
            raise CapEvalInputError(
                f"capeval answers row {position} (sample_id={row['sample_id']}): judge '{row['judge']}' has two "
                f"identities ({info['judge_identity']!r}, {row['judge_identity']!r}); give each judge its own name"
            )
        info["stand_in"] |= bool(row["stand_in"])
    groups = per_sample_counts(answer_rows)
    summary = []
    for (policy, judge), samples in groups.items():
        info = meta[(policy, judge)]
        identity = (policy_identities or {}).get(policy, policy)
        per_sample = [tuple(stats) for _, stats in sorted(samples.items())]
        for count in sorted({s[0] for s in per_sample}) + [0]:
            chosen = [s for s in per_sample if count == 0 or s[0] == count]
            summary.append(
                _summary_row(policy, judge, count, chosen, n_bootstrap, seed, confidence, identity,
                             info["judge_identity"], info["stand_in"])
            )
    return summary


def policy_identities_from(captions_rows: Iterable[Mapping]) -> dict[str, str]:
    """policy -> model_identity of its captions (several identities are joined with ' | ')."""
    found: dict[str, list[str]] = defaultdict(list)
    for row in captions_rows:
        identity = row.get("model_identity") or row["policy"]
        if identity not in found[row["policy"]]:
            found[row["policy"]].append(identity)
    return {policy: " | ".join(identities) for policy, identities in found.items()}


# ---------------------------------------------------------------------------------------------------
# Released-format scoring


def load_captions_file(path: str | os.PathLike) -> dict[str, str | None]:
    """Captions a user brings, as sample key -> caption (None: the caption failed).

    Accepted: JSON `{"sample_0": "caption", ...}`; JSONL with one `{"sample_id", "caption"}` object a
    line; Parquet with `sample_id` and `caption` columns (a captions artifact with several policies
    must be filtered to one first). Errors name the file and the row or key.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CapEvalInputError(f"{path}: captions file does not exist")
    out: dict[str, str | None] = {}

    def add(sample_id, caption, at: str):
        if not isinstance(sample_id, str) or not sample_id:
            raise CapEvalInputError(f"{path}: {at} field 'sample_id': missing or not a string ({sample_id!r})")
        if caption is not None and not isinstance(caption, str):
            raise CapEvalInputError(f"{path}: {at} field 'caption': must be a string or null, got {type(caption).__name__}")
        if sample_id in out:
            raise CapEvalInputError(f"{path}: {at}: sample '{sample_id}' has a second caption")
        out[sample_id] = caption

    if suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CapEvalInputError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(obj, dict):
            raise CapEvalInputError(f"{path}: must be an object of sample key -> caption, got {type(obj).__name__}")
        for key, caption in obj.items():
            add(key, caption, f"key '{key}'")
    elif suffix == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CapEvalInputError(f"{path}: line {number}: not valid JSON ({error})") from error
            if not isinstance(record, dict) or "sample_id" not in record or "caption" not in record:
                raise CapEvalInputError(f"{path}: line {number}: must be an object with 'sample_id' and 'caption'")
            add(record["sample_id"], record["caption"], f"line {number}")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = [c for c in ("sample_id", "caption") if c not in table.column_names]
        if missing:
            raise CapEvalInputError(f"{path}: missing column(s) {missing} (need 'sample_id' and 'caption')")
        if "policy" in table.column_names and len(set(table.column("policy").to_pylist())) > 1:
            raise CapEvalInputError(f"{path}: captions of several policies; keep one policy's rows")
        failed = table.column("status").to_pylist() if "status" in table.column_names else [None] * table.num_rows
        for index, (sample_id, caption, status) in enumerate(
            zip(table.column("sample_id").to_pylist(), table.column("caption").to_pylist(), failed)
        ):
            add(sample_id, None if status not in (None, "ok") else caption, f"row {index}")
    else:
        raise CapEvalInputError(f"{path}: unknown captions format '{suffix}' (use .json, .jsonl or .parquet)")
    return out


def score_released_captions(
    captions: Mapping[str, str | None],
    qas_gt,
    judge: ChatModel,
    prompts: PromptBook,
    settings: CapEvalSettings,
    seed: int,
    policy_name: str,
    *,
    judge_name: str = "judge",
    policy_identity: str | None = None,
    policy_stand_in: bool = False,
    progress_file=None,
) -> tuple[list[dict], list[dict]]:
    """Score captions against the authors' released ground truth; (answer rows, summary rows).

    `captions` maps the ground truth's sample keys ('sample_N') to caption text (None: failed);
    `qas_gt` is a path to QAS_GT_test.json or records from covip.formats.load_qas_gt.
    """
    records = load_qas_gt(qas_gt) if isinstance(qas_gt, (str, os.PathLike)) else list(qas_gt)
    items = _items_from_records(records)
    unknown = sorted(set(captions) - set(items))
    if unknown:
        example = next(iter(items), "sample_0")
        raise CapEvalInputError(
            f"captions: {len(unknown)} sample key(s) not in the ground truth (first: {unknown[:5]}); keys look like '{example}'"
        )
    identity = policy_identity or policy_name
    rows = [
        {
            "policy": policy_name,
            "sample_id": sample_id,
            "caption": caption,
            "status": "ok" if caption is not None else "failed",
            "model_identity": identity,
            "stand_in": policy_stand_in,
        }
        for sample_id, caption in captions.items()
    ]
    pairs = _pair_captions(rows, items, settings, "captions")
    answers = _judge_pairs(pairs, judge, prompts, settings, seed, judge_name, progress_file)
    summary = summarize_capeval(
        answers, settings.n_bootstrap, seed, confidence=settings.confidence, policy_identities={policy_name: identity}
    )
    return answers, summary


def format_summary(summary_rows: list[dict]) -> str:
    """A plain-text table of summary rows (for the CLI and logs)."""

    def pct(value):
        return "  n/a" if value is None else f"{value:5.1f}"

    def ci(low, high):
        return "" if low is None else f" [{low:5.1f}, {high:5.1f}]"

    lines = [f"{'policy':<20} {'judge':<12} {'#pos':>4}  {'Acc+':>5}{'':16}  {'Acc-':>5}{'':16}  unparseable  failed"]
    for r in summary_rows:
        count = "all" if r["num_positives"] == 0 else str(r["num_positives"])
        lines.append(
            f"{r['policy']:<20} {r['judge']:<12} {count:>4}  {pct(r['acc_pos'])}{ci(r['acc_pos_low'], r['acc_pos_high']):<16}"
            f"  {pct(r['acc_neg'])}{ci(r['acc_neg_low'], r['acc_neg_high']):<16}  {r['n_unparseable']:>11}  "
            f"{r['n_judge_failed']:>6}" + ("  (stand-in)" if r["stand_in"] else "")
        )
    return "\n".join(lines)


def _judge_from_args(args):
    from covip.clients.registry import ModelRegistry

    if args.judge_config is None:
        models = {args.judge: {"backend": "local_lexical_judge"}}
        prompt_overrides = None
    else:
        import yaml

        config = yaml.safe_load(Path(args.judge_config).read_text(encoding="utf-8")) or {}
        models = config.get("models") or {}
        if args.judge not in models:
            raise CapEvalInputError(f"{args.judge_config}: no entry '{args.judge}' under 'models' (have {sorted(models)})")
        models = {args.judge: models[args.judge]}
        prompt_overrides = config.get("prompts")
    registry = ModelRegistry(models, cache_path=args.cache)
    return registry.chat(args.judge), PromptBook(prompt_overrides)


def main(argv: list[str] | None = None) -> int:
    """Command line: `score-released` scores a captions file against released ground truth."""
    from covip import schemas
    from covip.io import write_artifact

    parser = argparse.ArgumentParser(prog="python -m covip.stages.capeval", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("score-released", help="score captions against the authors' QAS_GT_test.json")
    p.add_argument("--qas-gt", required=True, help="released ground truth (QAS_GT_test.json)")
    p.add_argument("--captions", required=True, help="captions: .json {sample_N: caption}, .jsonl or .parquet")
    p.add_argument("--out-dir", required=True, help="writes capeval_answers.parquet and capeval_summary.parquet here")
    p.add_argument("--judge-config", help="YAML with a 'models' registry (and optional 'prompts'); default: lexical judge")
    p.add_argument("--judge", default="judge", help="name of the judge's entry under 'models' (default: judge)")
    p.add_argument("--policy", default="released", help="policy name to record on the rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-bootstrap", type=int, default=CapEvalSettings.n_bootstrap)
    p.add_argument("--allow-missing", action="store_true", help="score only the samples that have captions")
    p.add_argument("--cache", help="response cache file for remote judges")
    args = parser.parse_args(argv)
    try:
        settings = CapEvalSettings(
            n_bootstrap=args.n_bootstrap, missing_captions="ignore" if args.allow_missing else "error"
        )
        judge, prompts = _judge_from_args(args)
        captions = load_captions_file(args.captions)
        answers, summary = score_released_captions(
            captions, args.qas_gt, judge, prompts, settings, args.seed, args.policy, judge_name=args.judge
        )
    except (CapEvalInputError, ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out_dir)
    write_artifact(answers, out / "capeval_answers.parquet", schemas.CAPEVAL_ANSWERS)
    write_artifact(summary, out / "capeval_summary.parquet", schemas.CAPEVAL_SUMMARY)
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
