"""What CapEval-QA judges: the questions of each test sample, paired with each policy's captions."""


from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from covip.core.io import as_list
from covip.core.schemas import OPTION_LETTERS
from covip.stages.capeval.settings import CapEvalInputError, CapEvalSettings


@dataclass(frozen=True)
class CapEvalItem:
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


def items_from_split(split_rows: Iterable[Mapping], where: str) -> dict[str, CapEvalItem]:
    """Test split rows (schemas.SPLIT) as ground truth. Questions are numbered Q1, Q2, ... per concept,
    the authors' convention, since the published split carries no question ids."""
    items: dict[str, CapEvalItem] = {}
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
        items[sample_id] = CapEvalItem(sample_id, int(num) if num is not None else len(positives), frozenset(positives), questions)
    return items


def items_from_records(records: list[dict]) -> dict[str, CapEvalItem]:
    """Released ground-truth records (covip.core.formats.load_qas_gt) as ground truth."""
    items: dict[str, CapEvalItem] = {}
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
        items[sample_id] = CapEvalItem(sample_id, len(positives), positives, questions)
    return items


def caption_text(row: Mapping, judge_truncated: bool = False) -> str | None:
    """The text the judge reads; None for a caption that could not be produced (module docstring), and
    for one cut off at the token cap unless `judge_truncated` (CapEvalSettings.truncated_captions)."""
    status = row.get("status", "ok")
    if not (status == "ok" or (judge_truncated and status == "truncated")) or row.get("caption") is None:
        return None
    return str(row["caption"])


def pair_captions(captions_rows, items: dict[str, CapEvalItem], settings: CapEvalSettings, where: str):
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
