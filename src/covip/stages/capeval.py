"""Stage 10: CapEval-QA. A judge answers each test question from a policy's caption alone.

For every captioned test sample, every question of every context concept goes to the judge with
only the caption beside it (SPEC §3; the request and the letter parser live in
`covip.protocol.judging`). Questions of concepts that are in the query image (positives) score when
the judge picks the correct letter (Acc+); questions of concepts that are not (negatives) score when
it picks D, "cannot be determined" (Acc-), i.e. when the caption did not drag in memories of absent
concepts.

Decisions, recorded on every row so the summary can count them:

- A judge reply with no readable letter counts as 'D', as in the authors' code, with
  `unparseable=True`. It helps Acc- and hurts Acc+, so the summary reports how many there were.
- A judge call that failed (after the client layer's retries) is also counted as 'D', as the
  authors' code would, but it keeps `raw_answer=None` and `unparseable=True`, and the summary counts
  it again in `n_judge_failed`: such a number is a judging problem, not a property of the policy.
- With `max_attempts` > 1 (default 1, the authors' protocol) unreadable replies are repaired and
  failed calls repeated (`covip.protocol.judging.ask_with_repair`); only what is still unreadable
  after that counts as D. Above `max_failure_rate` unreadable or failed answers the job fails.
- A caption that could not be produced (status 'failed' or no text) is a failed row, never a score:
  its questions are not sent to the judge, their rows carry `caption_failed=True` (no letter, no
  `correct`), Acc+ and Acc- leave the sample out, and the summary counts it in `n_caption_failed`.
  Judging it as an empty caption would score its positives wrong and its negatives right, a silent
  bias against the concept counts whose long prompts fail most. The captioning stage's own
  `max_failure_rate` bounds how many may fail; the report shows the count beside every row.

Per-question rows first (`judge_captions`), aggregation second (`summarize_capeval`), so a rerun of
the summary never calls the judge again. `score_released_captions` runs the same judging on the
authors' released ground truth (QAS_GT_test.json) for captions a user brings (`covip score-released`).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from covip.clients.cached import CachedChatModel
from covip.clients.spec import is_stand_in
from covip.core.formats import load_qas_gt
from covip.core.io import as_list
from covip.core.metrics import TallyError, caption_failed, capeval_sample_tallies, failed_caption_samples
from covip.core.reliability import FailureReport, failure_report
from covip.core.schemas import NONE_LETTER, OPTION_LETTERS
from covip.core.seeding import rng_for
from covip.core.settings import IntervalSettings, ModelStageSettings
from covip.core.stats import bootstrap_draws, ratio_interval
from covip.prompts import PromptBook
from covip.protocol.judging import (
    CAPEVAL_REPAIR_PROMPT,
    ask_with_repair,
    build_judge_request,
    judge_seed,
    parse_judge_letter,
    reasked,
    repaired,
)

MISSING_CAPTION_MODES = ("error", "ignore")


class CapEvalInputError(ValueError):
    """Malformed captions, splits or ground truth; the message names the file or table, row and field."""


@dataclass
class CapEvalSettings(IntervalSettings, ModelStageSettings):
    """Settings of stage 10 (config section `capeval`)."""

    section = "capeval"

    seed_offset: int = field(
        default=0,
        metadata={"help": "Extra key in every judge request's seed; change it to draw a fresh set of sampled judge "
                          "answers (a second judge run) without changing the benchmark seed."},
    )
    max_attempts: int = field(
        default=1,
        metadata={"help": "Judge calls per question: a reply with no readable letter (or a failed call) is asked again "
                          "with a repair instruction up to this many calls in all; 1 (default) keeps the authors' "
                          "protocol, where the first reply counts and an unreadable one is D."},
    )
    missing_captions: str = field(
        default="error",
        metadata={"help": "What to do when a test sample has no caption row for a policy: 'error' (default), or "
                          "'ignore' to score only the captioned samples.", "enum": list(MISSING_CAPTION_MODES)},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.missing_captions not in MISSING_CAPTION_MODES:
            raise ValueError(
                f"capeval.missing_captions must be one of {list(MISSING_CAPTION_MODES)}, got {self.missing_captions!r}"
            )


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
    for letter in OPTION_LETTERS:
        if not isinstance(options.get(letter), str):
            raise CapEvalInputError(f"{where} field 'options'.{letter}: missing or not a string")
    answer = q.get("answer")
    if answer not in OPTION_LETTERS:
        raise CapEvalInputError(f"{where} field 'answer': must be one of A-D, got {answer!r}")
    return {
        "question_id": str(q.get("question_id") or question_id),
        "question": text,
        "options": {letter: options[letter] for letter in OPTION_LETTERS},
        "answer": answer,
    }


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
        positives = [int(i) for i in as_list(row.get("positive_indices"))]
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
                for qi, q in enumerate(as_list(concept_questions))
            )
            for ci, concept_questions in enumerate(as_list(mcqa))
        )
        num = row.get("num_positives")
        items[sample_id] = _Item(sample_id, int(num) if num is not None else len(positives), frozenset(positives), questions)
    return items


def _items_from_records(records: list[dict]) -> dict[str, _Item]:
    """Released ground-truth records (covip.core.formats.load_qas_gt) as ground truth."""
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


def _caption_text(row: Mapping) -> str | None:
    """The text the judge reads; None for a caption that could not be produced (module docstring)."""
    if row.get("status", "ok") != "ok" or row.get("caption") is None:
        return None
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


def _judge_pairs(pairs, judge: CachedChatModel, prompts: PromptBook, settings: CapEvalSettings, seed: int,
                 judge_name: str, progress_file) -> list[dict]:
    """Every question of every (caption row, item) pair, judged; rows of schemas.CAPEVAL_ANSWERS.

    With `max_attempts` > 1 a reply that names no letter goes back with the reply and the
    `capeval_repair` instruction, and a failed call is asked again as it was (with a fresh seed);
    a reply that stays unreadable is kept, and a later failed call never replaces an earlier reply.
    """
    judge_stand_in = is_stand_in(judge)
    slots, requests, failed_rows = [], [], []
    for caption_row, item in pairs:
        caption = _caption_text(caption_row)
        policy = caption_row["policy"]
        if caption is None:  # no caption, no question asked: a failed row per question, never a score
            failed_rows += [_answer_row(caption_row, item, ci, q, judge_name, judge.identity, judge_stand_in, None)
                            for ci, concept_questions in enumerate(item.questions) for q in concept_questions]
            continue
        for ci, concept_questions in enumerate(item.questions):
            for q in concept_questions:
                request_seed = judge_seed(seed, settings.seed_offset, policy, item.sample_id, ci, q["question_id"])
                requests.append(build_judge_request(caption, q, prompts, seed=request_seed))
                slots.append((caption_row, item, ci, q))

    def check(index: int, text: str):
        letter = parse_judge_letter(text, slots[index][3]["options"])
        return letter, [] if letter is not None else ["reply names no option"]

    def next_request(index: int, attempt: int, previous, response, problems):
        caption_row, item, ci, q = slots[index]
        retry_seed = judge_seed(seed, settings.seed_offset, caption_row["policy"], item.sample_id, ci, q["question_id"],
                                attempt)
        original = requests[index]
        if response.ok:
            return repaired(original, response.text, prompts.render(CAPEVAL_REPAIR_PROMPT), attempt=attempt, seed=retry_seed)
        return reasked(original, attempt=attempt, seed=retry_seed)

    outcomes = ask_with_repair(judge, requests, check, next_request, settings.max_attempts, desc="capeval judge",
                               progress_file=progress_file, concurrency=settings.concurrency)
    rows = [_answer_row(caption_row, item, ci, q, judge_name, judge.identity, judge_stand_in, outcome)
            for (caption_row, item, ci, q), outcome in zip(slots, outcomes)]
    return rows + failed_rows


def _answer_row(caption_row, item: _Item, ci: int, q: dict, judge_name: str, judge_identity: str,
                judge_stand_in: bool, outcome) -> dict:
    """One row of schemas.CAPEVAL_ANSWERS; `outcome` None: the caption failed and nothing was asked."""
    positive = ci in item.positive_indices
    row = {
        "policy": caption_row["policy"],
        "judge": judge_name,
        "sample_id": item.sample_id,
        "num_positives": item.num_positives,
        "context_index": ci,
        "question_id": q["question_id"],
        "is_positive": positive,
        "answer": q["answer"],
        "raw_answer": None,
        "parsed": None,
        "unparseable": False,
        "correct": None,
        "judge_identity": judge_identity,
        "stand_in": judge_stand_in or bool(caption_row.get("stand_in", False)),
        "caption_failed": outcome is None,
    }
    if outcome is not None:
        letter = outcome.value
        parsed = letter or NONE_LETTER  # the authors' rule: no readable letter counts as D
        row.update(raw_answer=outcome.raw, parsed=parsed, unparseable=letter is None,
                   correct=parsed == q["answer"] if positive else parsed == NONE_LETTER)
    return row


def judge_failures(answer_rows: list[dict]) -> FailureReport:
    """Judge answers that named no letter or whose call failed (they count as D; see the module docstring),
    among the questions that were asked (a failed caption's are not: the captioning stage counts those)."""
    return failure_report(
        answer_rows,
        "capeval",
        failed=lambda row: bool(row["unparseable"]),
        reason=lambda row: "judge call failed" if row.get("raw_answer") is None else "reply names no option",
        counted=lambda row: not caption_failed(row),
    )


def judge_captions(
    captions_rows: list[dict],
    split_rows: list[dict],
    judge: CachedChatModel,
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


def _summary_row(policy, judge, count, per_sample, n_bootstrap, seed, confidence, policy_identity, judge_identity, stand_in,
                 n_caption_failed=0):
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
        "n_caption_failed": int(n_caption_failed),
        "policy_identity": policy_identity,
        "judge_identity": judge_identity,
        "stand_in": stand_in,
    }
    if n_bootstrap > 0 and len(per_sample):
        # The same sample draws serve Acc+ and Acc-.
        draws = bootstrap_draws(rng_for(seed, "capeval-bootstrap", policy, judge, count), len(per_sample), n_bootstrap)
        row["acc_pos_low"], row["acc_pos_high"] = ratio_interval(pos_c, pos_t, draws, confidence) if pos_t.sum() else (None, None)
        row["acc_neg_low"], row["acc_neg_high"] = ratio_interval(neg_c, neg_t, draws, confidence) if neg_t.sum() else (None, None)
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
    produced its captions (see `policy_identities_from`); by default the policy name. Samples whose
    caption failed are in no accuracy; each row counts them in `n_caption_failed`.
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
    try:
        groups = capeval_sample_tallies(answer_rows)
    except TallyError as error:
        raise CapEvalInputError(str(error)) from None
    failed = failed_caption_samples(answer_rows)
    summary = []
    for policy, judge in sorted(set(groups) | set(failed)):
        info = meta[(policy, judge)]
        identity = (policy_identities or {}).get(policy, policy)
        per_sample = [tuple(stats) for _, stats in sorted(groups.get((policy, judge), {}).items())]
        lost = list(failed.get((policy, judge), {}).values())
        for count in sorted({s[0] for s in per_sample} | set(lost)) + [0]:
            chosen = [s for s in per_sample if count == 0 or s[0] == count]
            n_failed = sum(1 for n in lost if count == 0 or n == count)
            summary.append(
                _summary_row(policy, judge, count, chosen, n_bootstrap, seed, confidence, identity,
                             info["judge_identity"], info["stand_in"], n_failed)
            )
    return summary


# ---------------------------------------------------------------------------------------------------
# Released-format scoring


def score_released_captions(
    captions: Mapping[str, str | None],
    qas_gt,
    judge: CachedChatModel,
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
    `qas_gt` is a path to QAS_GT_test.json or records from covip.core.formats.load_qas_gt.
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

    lines = [f"{'policy':<20} {'judge':<12} {'#pos':>4}  {'Acc+':>5}{'':16}  {'Acc-':>5}{'':16}  unparseable  failed"
             "  captions failed"]
    for r in summary_rows:
        count = "all" if r["num_positives"] == 0 else str(r["num_positives"])
        lines.append(
            f"{r['policy']:<20} {r['judge']:<12} {count:>4}  {pct(r['acc_pos'])}{ci(r['acc_pos_low'], r['acc_pos_high']):<16}"
            f"  {pct(r['acc_neg'])}{ci(r['acc_neg_low'], r['acc_neg_high']):<16}  {r['n_unparseable']:>11}  "
            f"{r['n_judge_failed']:>6}  {r.get('n_caption_failed') or 0:>15}" + ("  (stand-in)" if r["stand_in"] else "")
        )
    return "\n".join(lines)
