"""Judging: every question of every captioned sample to the judge, one answer row per question."""


from __future__ import annotations

from covip.clients.cached import CachedChatModel
from covip.clients.spec import is_stand_in
from covip.core.metrics import caption_failed
from covip.core.reliability import FailureReport, failure_report
from covip.core.schemas import NONE_LETTER
from covip.prompts import PromptBook
from covip.protocol.judging import (
    CAPEVAL_REPAIR_PROMPT,
    ask_with_repair,
    build_judge_request,
    judge_seed,
    read_judge_reply,
    reasked,
    repaired,
    score_reading,
)
from covip.stages.capeval.inputs import (
    CapEvalItem,
    caption_text,
    items_from_split,
    pair_captions,
)
from covip.stages.capeval.settings import CapEvalSettings


def judge_pairs(pairs, judge: CachedChatModel, prompts: PromptBook, settings: CapEvalSettings, seed: int,
                 judge_name: str, progress_file) -> list[dict]:
    """Every question of every (caption row, item) pair, judged; rows of schemas.CAPEVAL_ANSWERS.

    With `max_attempts` > 1 a reply that names no letter goes back with the reply and the
    `capeval_repair` instruction, and a failed call is asked again as it was (with a fresh seed);
    a reply that stays unreadable is kept, and a later failed call never replaces an earlier reply.
    """
    return _judge_groups([pairs], judge, prompts, settings, seed, judge_name, progress_file)[0]


def _judge_groups(groups: list[list], judge: CachedChatModel, prompts: PromptBook, settings: CapEvalSettings,
                  seed: int, judge_name: str, progress_file) -> list[list[dict]]:
    """judge_pairs for several groups of pairs in one `complete_many`; each group's rows in the order
    judge_pairs gives them for that group alone (asked questions first, then failed captions')."""
    judge_stand_in = is_stand_in(judge)
    slots, requests, owners = [], [], []
    failed_rows: list[list[dict]] = [[] for _ in groups]
    for group, caption_row, item in ((g, c, i) for g, pairs in enumerate(groups) for c, i in pairs):
        caption = caption_text(caption_row, settings.truncated_captions == "judge")
        policy = caption_row["policy"]
        if caption is None:  # no caption, no question asked: a failed row per question, never a score
            failed_rows[group] += [_answer_row(caption_row, item, ci, q, judge_name, judge.identity, judge_stand_in,
                                               None, settings.letter_match)
                                   for ci, concept_questions in enumerate(item.questions) for q in concept_questions]
            continue
        for ci, concept_questions in enumerate(item.questions):
            for q in concept_questions:
                request_seed = judge_seed(seed, settings.seed_offset, policy, item.sample_id, ci, q["question_id"])
                requests.append(build_judge_request(caption, q, prompts, seed=request_seed))
                slots.append((caption_row, item, ci, q))
                owners.append(group)

    rule = settings.letter_match

    def check(index: int, text: str):
        reading = read_judge_reply(text, slots[index][3]["options"], rule)
        readable = reading.letter is not None or (rule == "substring" and reading.box is not None)
        return reading, [] if readable else ["reply names no option"]

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
    rows: list[list[dict]] = [[] for _ in groups]
    for group, (caption_row, item, ci, q), outcome in zip(owners, slots, outcomes):
        rows[group].append(_answer_row(caption_row, item, ci, q, judge_name, judge.identity, judge_stand_in, outcome,
                                       rule))
    return [asked + failed for asked, failed in zip(rows, failed_rows)]


def _answer_row(caption_row, item: CapEvalItem, ci: int, q: dict, judge_name: str, judge_identity: str,
                judge_stand_in: bool, outcome, rule: str) -> dict:
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
        reading = outcome.value or read_judge_reply(outcome.raw, q["options"], rule)  # kept even when unreadable
        # The authors' rule: no readable letter counts as D.
        parsed, correct = score_reading(reading, q["answer"] if positive else NONE_LETTER, rule)
        row.update(raw_answer=outcome.raw, parsed=parsed, unparseable=reading.letter is None, correct=correct)
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
    items = items_from_split(split_rows, "test split")
    pairs = pair_captions(captions_rows, items, settings, "captions")
    return judge_pairs(pairs, judge, prompts, settings, seed, judge_name, progress_file)


def judge_caption_tables(
    tables: list[tuple[list[dict], list[dict], str]],
    judge: CachedChatModel,
    prompts: PromptBook,
    settings: CapEvalSettings,
    seed: int,
    judge_name: str,
    progress_file=None,
) -> list[list[dict]]:
    """Judge several caption tables in one pass; per table, the rows `judge_captions` gives for it alone.

    `tables` holds (captions_rows, split_rows, what) per table, `what` naming it in errors (e.g. the
    captions file). Every table is paired and checked before the judge is called, and every question
    of every table then goes to the judge in one `complete_many`: an in-process engine schedules them
    all at once and identical requests (a text-only policy's captions repeat across the control
    conditions) are sent once. Request seeds do not depend on the table, so a table's answers are the
    ones its own job would get.
    """
    groups = []
    for captions_rows, split_rows, what in tables:
        items = items_from_split(split_rows, f"test split of {what}")
        groups.append(pair_captions(captions_rows, items, settings, what))
    return _judge_groups(groups, judge, prompts, settings, seed, judge_name, progress_file)
