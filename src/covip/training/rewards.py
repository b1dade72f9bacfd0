"""GSPO rewards (SPEC section 4) as plain functions, plus the TRL-shaped wrappers around them.

The scores per task (the shared ones are metrics of `covip.core.metrics`):

- `multi_vision`: `boxed_index_f1`, the set F1 between the indices in the FIRST ``\\boxed{[...]}``
  and the truth, concepts counted from 0 (the authors' reward); 0 when that box is not readable
  (missing, empty, or not a list of integers).
- `vision`: `yes_no_reward`, 1 when the reply's first yes/no word matches the truth, else 0.
- `caption`: `caption_score`, (1/3)·#positive questions answered correctly − #negative questions not
  answered D / #negative questions, from judge letters; −1 if the caption degenerates
  (`is_degenerate`, here) or is longer than the token limit.
- `joint`: the paper's form r = r_vis + r_caps (`joint_caption_score`: #correct positives −
  #negatives not D), −1 when the caption degenerates or runs past the limit.

`RewardSuite` turns them into TRL reward functions (``f(prompts, completions, completion_ids,
**columns) -> list[float | None]``). Each returns None for rows of another task type, so TRL's
per-function means are means over the rows that task owns. The caption and joint rewards send every
question of a batch to the judge at once through `CachedChatModel.complete_many`, the client and
SQLite cache CapEval-QA uses, with CapEval-QA's own request builder and letter parser.

A judge call that failed (after the client's retries) is not a letter: the completion it was asked
about gets no reward (None; TRL then gives it no advantage and leaves it out of its group's
baseline), never the D that would score a caption as if the judge had read it. Each batch logs its
judge calls and failures (`judge/calls`, `judge/failed`, `judge/failure_rate` in the training log),
and a batch where more than `max_judge_failure_rate` of the calls failed, over all ranks, stops
training with `JudgeFailureError`: with the judge down, the caption reward would otherwise be flat
for hours. `preflight` asks the judge one question, uncached, before training starts.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from covip.core.metrics import boxed_index_f1, caption_score, joint_caption_score
from covip.core.schemas import NONE_LETTER
from covip.core.text import strip_boxed
from covip.prompts import PromptBook
from covip.protocol.judging import build_judge_request, judge_seed, parse_judge_letter

log = logging.getLogger("covip.training")

TASKS = ("caption", "multi_vision", "vision", "joint")


class JudgeFailureError(RuntimeError):
    """The caption reward's judge failed too often (or did not answer the pre-flight call)."""

# ---------------------------------------------------------------------------------------------------
# vision: yes / no

_YES_NO = re.compile(r"\b(yes|no)\b", re.IGNORECASE)


def parse_yes_no(text: str | None) -> bool | None:
    """True/False for the first stand-alone 'yes'/'no' in the reply (any case, markup ignored), else None."""
    if not text:
        return None
    match = _YES_NO.search(re.sub(r"[*_`]", "", text))
    return None if match is None else match[1].lower() == "yes"


def yes_no_reward(completion: str | None, truth: bool) -> float:
    """The `vision` reward: 1 when the reply says yes/no correctly, else 0 (also when it says neither)."""
    answer = parse_yes_no(completion)
    return 1.0 if answer is not None and answer == bool(truth) else 0.0


# ---------------------------------------------------------------------------------------------------
# Degeneration (SPEC section 4, from the authors' code)

DUPLICATE_SENTENCE_RATIO = 0.3
MIN_SENTENCES = 4
DUPLICATE_NGRAM_RATIO = 0.3
NGRAM = 5
MIN_WORDS = 20
CHUNK_SIZES = (10, 20, 30)
REPEATED_CHUNK_RATIO = 0.2


def _normalize(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower()).strip()


def duplicate_sentence_ratio(text: str) -> tuple[float, int]:
    """(1 − distinct/total sentences, total) after normalizing; sentences end at '.', '!' or '?'."""
    sentences = [s.strip() for s in re.split(r"[.!?]+", _normalize(text)) if s.strip()]
    if not sentences:
        return 0.0, 0
    return (len(sentences) - len(set(sentences))) / len(sentences), len(sentences)


def duplicate_ngram_ratio(text: str, n: int = NGRAM) -> tuple[float, int]:
    """(1 − distinct/total word n-grams, word count) after normalizing."""
    words = _normalize(text).split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0, len(words)
    return (len(grams) - len(set(grams))) / len(grams), len(words)


def repeated_chunk_ratio(text: str, size: int) -> float:
    """Share of the sliding `size`-word windows (stride 1) whose words occur as another window too.

    As the authors' degeneration test: every window of `size` consecutive words is a chunk; the
    windows whose chunk appears more than once, counted with all their occurrences, over all windows.
    0 when the text has fewer than 2 x `size` words (no chunk of that size can repeat without
    overlapping itself).
    """
    words = _normalize(text).split()
    if len(words) < 2 * size:
        return 0.0
    windows = Counter(tuple(words[i : i + size]) for i in range(len(words) - size + 1))
    return sum(count for count in windows.values() if count > 1) / (len(words) - size + 1)


def degeneration_reasons(text: str | None) -> list[str]:
    """Which of SPEC section 4's repetition rules `text` trips (empty list: none)."""
    if not text:
        return []
    reasons = []
    ratio, sentences = duplicate_sentence_ratio(text)
    if sentences >= MIN_SENTENCES and ratio >= DUPLICATE_SENTENCE_RATIO:
        reasons.append("duplicate_sentences")
    ratio, words = duplicate_ngram_ratio(text)
    if words >= MIN_WORDS and ratio >= DUPLICATE_NGRAM_RATIO:
        reasons.append("duplicate_5grams")
    for size in CHUNK_SIZES:
        if repeated_chunk_ratio(text, size) >= REPEATED_CHUNK_RATIO:
            reasons.append(f"repeated_{size}_word_chunks")
    return reasons


def is_degenerate(text: str | None) -> bool:
    """True when any degeneration rule fires."""
    return bool(degeneration_reasons(text))


# ---------------------------------------------------------------------------------------------------
# TRL reward functions


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a conversational list of assistant messages."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion or []:
        content = message.get("content") if isinstance(message, Mapping) else message
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text") or "") for p in content if isinstance(p, Mapping) and p.get("type") == "text")
    return "".join(parts)


class RewardSuite:
    """The TRL reward functions of one training run.

    `judge` is a chat model (from `ModelRegistry.chat`) used by the caption and joint rewards;
    `max_tokens` is the caption token limit (authors: 511: a longer caption gets −1); `seed` keys the
    judge requests so a sampled judge is reproducible and cacheable.
    """

    def __init__(self, judge=None, prompts: PromptBook | None = None, *, max_tokens: int = 511, seed: int = 0,
                 max_judge_failure_rate: float = 0.2):
        self.judge = judge
        self.prompts = prompts or PromptBook()
        self.max_tokens = max_tokens
        self.seed = seed
        self.max_judge_failure_rate = max_judge_failure_rate
        self.judge_calls = 0  # over the run, this rank
        self.judge_failures = 0
        self.unrewarded = 0  # completions left without a reward by a failed judge call

    def preflight(self, question: Mapping) -> None:
        """One judge call (a real question, an empty caption), past the response cache, before training
        starts: a judge that is down fails the job now, not after hours of flat rewards. A stand-in
        judge (code in this process) cannot be down, so it is not called: a rerun from the cache then
        calls nothing."""
        spec = getattr(self.judge, "spec", None)
        if self.judge is None or (spec is not None and spec.is_local):
            return
        request = build_judge_request("", question, self.prompts, seed=judge_seed(self.seed, "preflight"))
        probe = getattr(self.judge, "probe", None)
        response = probe(request) if probe is not None else self.judge.complete(request)
        if not response.ok:
            raise JudgeFailureError(f"the caption reward's judge ({getattr(self.judge, 'identity', 'judge')}) did not answer "
                                    f"a pre-flight call: {response.error}; training has not started")

    def functions(self, tasks: Sequence[str]) -> list[Callable]:
        """One TRL reward function per task type used by the run, named so TRL logs `rewards/<task>`."""
        table = {"multi_vision": self.multi_vision, "vision": self.vision, "caption": self.caption, "joint": self.joint}
        unknown = [t for t in tasks if t not in table]
        if unknown:
            raise ValueError(f"unknown task type(s) {unknown}; known: {sorted(table)}")
        return [table[t] for t in tasks]

    # TRL calls these with the batch's dataset columns as keyword lists.
    def multi_vision(self, prompts, completions, task, truth, **_) -> list[float | None]:
        return [
            boxed_index_f1(completion_text(c), json.loads(t)["indices"]) if k == "multi_vision" else None
            for c, k, t in zip(completions, task, truth)
        ]

    def vision(self, prompts, completions, task, truth, **_) -> list[float | None]:
        return [
            yes_no_reward(completion_text(c), json.loads(t)["present"]) if k == "vision" else None
            for c, k, t in zip(completions, task, truth)
        ]

    def caption(self, prompts, completions, task, truth, completion_ids=None, log_metric=None, **_) -> list[float | None]:
        return self._judged(completions, task, truth, completion_ids, "caption", log_metric)

    def joint(self, prompts, completions, task, truth, completion_ids=None, log_metric=None, **_) -> list[float | None]:
        return self._judged(completions, task, truth, completion_ids, "joint", log_metric)

    def _judged(self, completions, task, truth, completion_ids, kind: str, log_metric=None) -> list[float | None]:
        """Judge and score every row of `kind`; then account for the judge calls of this batch (every
        rank gets here once per batch, so the failure share is summed over ranks)."""
        rewards, calls, errors, unrewarded = self._score(completions, task, truth, completion_ids, kind)
        self.judge_calls += calls
        self.judge_failures += len(errors)
        all_calls, all_failed = _sum_over_ranks(calls, len(errors))
        if log_metric is not None:
            log_metric("judge/calls", float(calls))
            log_metric("judge/failed", float(len(errors)))
            log_metric("judge/failure_rate", len(errors) / calls if calls else 0.0)
        if errors:
            log.warning("%s reward: %d of %d judge calls failed in this batch (%d completions get no reward), e.g. %s",
                        kind, len(errors), calls, unrewarded, errors[0])
        if all_calls and all_failed / all_calls > self.max_judge_failure_rate:
            raise JudgeFailureError(
                f"{kind} reward: {all_failed} of {all_calls} judge calls failed in one generation batch "
                f"({all_failed / all_calls:.0%} > training.max_judge_failure_rate {self.max_judge_failure_rate:.0%}); "
                f"first error: {errors[0] if errors else 'on another rank'}. Training stopped: check the judge, then "
                "rerun (the run resumes from its last checkpoint)")
        return rewards

    def _score(self, completions, task, truth, completion_ids, kind: str):
        """(rewards, judge calls, errors of the failed calls, completions left without a reward): every
        question of every row of `kind` goes to the judge in one `complete_many` call; a row with a failed
        call gets None."""
        rewards: list[float | None] = [None] * len(completions)
        jobs = []  # (row, caption, positive questions, negative questions, ground truth)
        for row, (completion, k, t) in enumerate(zip(completions, task, truth)):
            if k != kind:
                continue
            text = completion_text(completion)
            caption = strip_boxed(text) if kind == "joint" else text.strip()
            n_tokens = len(completion_ids[row]) if completion_ids is not None else 0
            if n_tokens > self.max_tokens or is_degenerate(caption):
                rewards[row] = -1.0
                continue
            jobs.append((row, caption, json.loads(t)))
        if not jobs:
            return rewards, 0, [], 0
        if self.judge is None:
            raise ValueError(f"the '{kind}' reward needs a judge model (training.judge)")
        requests, slots = [], []
        for row, caption, gt in jobs:
            for ci, questions in enumerate(gt["questions"]):
                for qi, q in enumerate(questions):
                    seed = judge_seed(self.seed, "train", gt["sample_id"], ci, qi, caption)
                    requests.append(build_judge_request(caption, q, self.prompts, seed=seed))
                    slots.append((row, ci, q))
        responses = self.judge.complete_many(requests, desc=f"{kind} reward judge")
        letters: dict[int, tuple[list, list]] = {row: ([], []) for row, _, _ in jobs}
        positives = {row: set(gt["positive_indices"]) for row, _, gt in jobs}
        errors, unjudged = [], set()
        for (row, ci, q), response in zip(slots, responses):
            if not response.ok:  # not a letter: this completion gets no reward (module docstring)
                errors.append(response.error or "no text returned")
                unjudged.add(row)
                continue
            judged = parse_judge_letter(response.text, q["options"]) or NONE_LETTER  # unreadable: D, the authors' rule
            if ci in positives[row]:
                letters[row][0].append((judged, q["answer"]))
            else:
                letters[row][1].append(judged)
        self.unrewarded += len(unjudged)
        for row, _, gt in jobs:
            if row in unjudged:
                continue
            pos, neg = letters[row]
            if kind == "caption":
                rewards[row] = caption_score(pos, neg)
            else:
                text = completion_text(completions[row])
                rewards[row] = boxed_index_f1(text, gt["indices"]) + joint_caption_score(pos, neg)
        return rewards, len(requests), errors, len(unjudged)


def _sum_over_ranks(calls: int, failed: int) -> tuple[int, int]:
    """(calls, failed) summed over every training process (itself alone when not distributed)."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - training always has torch
        return calls, failed
    if not (dist.is_available() and dist.is_initialized()):
        return calls, failed
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    totals = torch.tensor([calls, failed], dtype=torch.long, device=device)
    dist.all_reduce(totals)
    return int(totals[0]), int(totals[1])
