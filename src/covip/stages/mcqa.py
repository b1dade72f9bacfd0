"""Stage 6: three multiple-choice questions per dialogue, parsed, repaired, validated and shuffled.

Each question tests one objective fact of its dialogue. Options A-C hold exactly one correct answer;
option D is always the same "cannot be determined" text, which is what a caption that never mentions
the concept should lead a judge to choose (Acc- in CapEval-QA). Model output is taken as leniently as
is safe (code fences, options as a list, answers like '(B)' or 'B) Oak'), then checked strictly; a
set that fails the check goes back to the model with the problem, and after the last attempt the row
fails with the reason. A-C are then shuffled so the correct letter carries no signal.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

import numpy as np

from covip.clients.base import ChatRequest, Message
from covip.clients.cached import CachedChatModel
from covip.content.facts import format_facts
from covip.prompts import PromptBook
from covip.core.reliability import FailureReport, failure_report
from covip.core.schemas import ANSWER_LETTERS, NONE_OPTION, OPTION_LETTERS
from covip.core.settings import ModelStageSettings
from covip.core.seeding import derive_seed, rng_for
from covip.core.text import normalize_text, token_coverage
from covip.protocol.judging import Outcome, ask_with_repair, reasked, repaired


_LIST_KEYS = ("questions", "qa", "qas", "mcqa", "items")
_ANSWER_KEYS = ("answer", "correct_answer", "correct", "correct_option")
_LABEL = re.compile(r"^\s*\(?\s*([A-Za-z])\s*[).:]\s+(.*)$", re.DOTALL)
_BARE_LETTER = re.compile(r"^\s*\(?\s*([A-Da-d])\s*\)?\s*\.?\s*$")
_LETTER_LIST = re.compile(r"^\s*\(?[A-D]\)?(?:\s*(?:,|and|&|/|\bor\b)\s*\(?[A-D]\)?)+\s*$", re.IGNORECASE)
_NAMED_LETTER = re.compile(r"\b(?:option|answer|choice)\s*(?:is\s*)?:?\s*\(?([A-D])\b\)?", re.IGNORECASE)


class MCQAParseError(ValueError):
    """Model output that cannot be read as a set of questions; the message says what is wrong."""


@dataclass
class MCQASettings(ModelStageSettings):
    """Settings of stage 6 (config section `mcqa`)."""

    section = "mcqa"

    questions_per_dialogue: int = field(default=3, metadata={"help": "questions per dialogue (SPEC: 3)"})
    max_attempts: int = field(
        default=3, metadata={"help": "model calls per dialogue (first try plus repair requests) before the row fails"}
    )
    support_threshold: float = field(
        default=0.5,
        metadata={
            "help": "share of the correct option's content words that must occur in the dialogue; "
            "below it the question is flagged supported=False"
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.questions_per_dialogue < 1:
            raise ValueError(f"mcqa.questions_per_dialogue must be >= 1, got {self.questions_per_dialogue}")
        if not 0.0 < self.support_threshold <= 1.0:
            raise ValueError(f"mcqa.support_threshold must be in (0, 1], got {self.support_threshold}")


def response_schema(n: int) -> dict:
    """JSON schema of the expected answer, for backends with structured output."""
    option = {"type": "string"}
    question = {
        "type": "object",
        "properties": {
            "question": {"type": "string"},
            "options": {
                "type": "object",
                "properties": {"A": option, "B": option, "C": option, "D": {"type": "string", "enum": [NONE_OPTION]}},
                "required": list(OPTION_LETTERS),
                "additionalProperties": False,
            },
            "answer": {"type": "string", "enum": list(ANSWER_LETTERS)},
        },
        "required": ["question", "options", "answer"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"questions": {"type": "array", "items": question, "minItems": n, "maxItems": n}},
        "required": ["questions"],
        "additionalProperties": False,
    }


# ---------------------------------------------------------------------------------------------------
# Parsing and repair


def _extract_json(text: str):
    fenced = re.search(r"```(?:json|JSON)?\s*\n?(.*?)```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1)
    candidates = []
    for open_, close in (("{", "}"), ("[", "]")):
        start, end = text.find(open_), text.rfind(close)
        if start != -1 and end > start:
            candidates.append((start, text[start : end + 1]))
    if not candidates:
        if "{" in text or "[" in text:
            raise MCQAParseError("the reply is not valid JSON (it ends before the JSON is closed)")
        raise MCQAParseError("the reply contains no JSON object")
    candidates.sort()  # the outermost structure is the one that starts first
    errors = []
    for _, blob in candidates:
        for attempt in (blob, re.sub(r",\s*([}\]])", r"\1", blob)):  # tolerate trailing commas
            try:
                return json.loads(attempt)
            except json.JSONDecodeError as error:
                errors.append(str(error))
    raise MCQAParseError(f"the reply is not valid JSON ({errors[0]})")


def _as_text(value) -> str:
    return "" if value is None else str(value).strip()


def _option_key(key) -> str:
    text = _as_text(key)
    match = re.fullmatch(r"(?:option\s*)?\(?\s*([A-Za-z])\s*[).:]?", text, re.IGNORECASE)
    return match[1].upper() if match else text


def _strip_label(letter: str, text: str) -> str:
    match = _LABEL.match(text)
    if match and match[1].upper() == letter:
        return match[2].strip()
    return text


def _normalize_options(raw, where: str) -> dict[str, str]:
    options: dict[str, str] = {}
    if isinstance(raw, dict):
        for key, value in raw.items():
            letter = _option_key(key)
            options[letter] = _strip_label(letter, _as_text(value))
    elif isinstance(raw, list):
        items = []
        for item in raw:
            if isinstance(item, dict):
                label = next((item[k] for k in ("label", "letter", "key") if k in item), None)
                text = next((item[k] for k in ("text", "option", "value") if k in item), "")
                items.append((_option_key(label) if label is not None else None, _as_text(text)))
            else:
                text = _as_text(item)
                match = _LABEL.match(text)
                items.append((match[1].upper(), match[2].strip()) if match else (None, text))
        labels = [label for label, _ in items]
        use_labels = all(labels) and len(set(labels)) == len(labels)
        for position, (label, text) in enumerate(items):
            letter = label if use_labels else chr(ord("A") + position)
            options[letter] = text
    else:
        raise MCQAParseError(f"{where}: 'options' must be an object or a list, got {type(raw).__name__}")
    if "D" not in options and len(options) == 3:
        options["D"] = NONE_OPTION
    if "D" in options and normalize_text(options["D"]) == normalize_text(NONE_OPTION):
        options["D"] = NONE_OPTION
    return {letter: options[letter] for letter in sorted(options)}


def _normalize_answer(raw, options: dict[str, str]) -> str:
    if isinstance(raw, list):
        letters = [_normalize_answer(item, options) for item in raw]
        return ",".join(letters)
    text = _as_text(raw)
    if match := _BARE_LETTER.match(text):
        return match[1].upper()
    by_text = [letter for letter, option in options.items() if normalize_text(option) == normalize_text(text)]
    if len(by_text) == 1:
        return by_text[0]
    if _LETTER_LIST.match(text):
        return ",".join(re.findall(r"[A-D]", text.upper()))
    if match := _LABEL.match(text):
        if match[1].upper() in OPTION_LETTERS:
            return match[1].upper()
    if match := _NAMED_LETTER.search(text):
        return match[1].upper()
    return text


def parse_mcqa_json(text: str) -> list[dict]:
    """Read a model's reply as a list of {'question', 'options': {letter: text}, 'answer'}.

    Repairs what is unambiguous: code fences, prose around the JSON, trailing commas, options given
    as a list or with 'A) ' labels, option D missing (added) or written loosely, answers written as
    'B', '(B)', 'B) Oak', 'Option B' or the option's text. Several letters become 'A,B' so that
    validation can name the problem. Raises MCQAParseError when there is nothing to repair.
    """
    data = _extract_json(text or "")
    if isinstance(data, dict):
        key = next((k for k in data if str(k).lower() in _LIST_KEYS), None)
        if key is not None:
            data = data[key]
        elif "question" in data:
            data = [data]
        else:
            raise MCQAParseError(f"the JSON object has no 'questions' list (keys: {sorted(map(str, data))})")
    if not isinstance(data, list):
        raise MCQAParseError(f"'questions' must be a list, got {type(data).__name__}")
    questions = []
    for index, item in enumerate(data, 1):
        where = f"question {index}"
        if not isinstance(item, dict):
            raise MCQAParseError(f"{where} must be an object, got {type(item).__name__}")
        if "options" not in item:
            raise MCQAParseError(f"{where} has no 'options'")
        options = _normalize_options(item["options"], where)
        answer_key = next((k for k in _ANSWER_KEYS if k in item), None)
        answer = _normalize_answer(item[answer_key], options) if answer_key else ""
        questions.append({"question": _as_text(item.get("question")), "options": options, "answer": answer})
    return questions


# ---------------------------------------------------------------------------------------------------
# Validation, shuffling, support


def validate_questions(questions: list[dict], n: int) -> list[str]:
    """Problems that make a parsed question set unusable (empty list: accepted).

    Exactly `n` questions, no question asked twice; each with options exactly A-D; question and
    option texts that contain words (a copied '...' placeholder does not count); D exactly
    NONE_OPTION; no two options alike (ignoring case, spacing and punctuation); and an answer naming
    exactly one of A-C.
    """
    problems = []
    if len(questions) != n:
        problems.append(f"expected {n} questions, got {len(questions)}")
    seen_questions: dict[str, int] = {}
    for index, q in enumerate(questions, 1):
        where = f"question {index}"
        text = _as_text(q.get("question"))
        if not normalize_text(text):  # '' or a copied placeholder such as '...'
            problems.append(f"{where}: the question text is empty")
        elif normalize_text(text) in seen_questions:
            problems.append(f"{where}: same question as question {seen_questions[normalize_text(text)]}")
        else:
            seen_questions[normalize_text(text)] = index
        options = q.get("options") or {}
        missing = [letter for letter in OPTION_LETTERS if letter not in options]
        extra = [letter for letter in options if letter not in OPTION_LETTERS]
        if missing:
            problems.append(f"{where}: option(s) {', '.join(missing)} missing")
        if extra:
            problems.append(f"{where}: unexpected option(s) {', '.join(map(str, extra))}; use exactly A, B, C and D")
        empty = [letter for letter in OPTION_LETTERS if letter in options and not normalize_text(_as_text(options[letter]))]
        if empty:
            problems.append(f"{where}: option(s) {', '.join(empty)} empty (no words)")
        if "D" in options and options["D"] != NONE_OPTION:
            problems.append(f"{where}: option D must be exactly '{NONE_OPTION}', got '{options['D']}'")
        seen: dict[str, str] = {}
        for letter in OPTION_LETTERS:
            value = normalize_text(_as_text(options.get(letter)))
            if not value:
                continue
            if value in seen:
                problems.append(f"{where}: options {seen[value]} and {letter} are the same ('{options[letter]}')")
            else:
                seen[value] = letter
        answer = _as_text(q.get("answer"))
        letters = [a.strip() for a in answer.split(",") if a.strip()]
        if len(letters) > 1:
            problems.append(f"{where}: answer '{answer}' marks {len(letters)} options correct; exactly one of A, B, C must be")
        elif answer == "D":
            problems.append(f"{where}: answer is D, but exactly one of A, B, C must be correct")
        elif answer not in ANSWER_LETTERS:
            problems.append(f"{where}: answer '{answer}' is not one of A, B, C")
    return problems


def shuffle_options(question: dict, rng: np.random.Generator) -> dict:
    """A copy of `question` with options A-C permuted by `rng` and the answer letter following its text.

    D stays last and unchanged. The question must be valid (see validate_questions).
    """
    options = question["options"]
    order = [ANSWER_LETTERS[i] for i in rng.permutation(len(ANSWER_LETTERS))]
    shuffled = {letter: options[source] for letter, source in zip(ANSWER_LETTERS, order)}
    shuffled["D"] = options["D"]
    answer = ANSWER_LETTERS[order.index(question["answer"])]
    return {**question, "options": shuffled, "answer": answer}


def is_supported(option_text: str, dialogue: str, threshold: float = 0.5) -> bool:
    """Whether enough of the option's content words occur in the dialogue (normalised token overlap)."""
    return token_coverage(option_text, dialogue) >= threshold


# ---------------------------------------------------------------------------------------------------
# The stage


def write_mcqas(
    dialogues_rows: list[dict],
    writer: CachedChatModel,
    prompts: PromptBook,
    settings: MCQASettings,
    seed: int,
    progress_file=None,
) -> list[dict]:
    """Write, check and shuffle the questions of every dialogue; returns rows of schemas.MCQAS.

    One row per dialogue row, in the same order. A failed dialogue gives a failed row with reason
    'dialogue_failed' and no model call. All first requests go to the writer together, then all
    repairs (`covip.protocol.judging.ask_with_repair`).
    """
    for index, row in enumerate(dialogues_rows):
        if row.get("status") == "ok" and not row.get("dialogue"):
            raise ValueError(
                f"dialogues row {index} (sample_id={row.get('sample_id')}, concept_id={row.get('concept_id')}) "
                "field 'dialogue' is empty although status is 'ok'"
            )
    asked = [index for index, row in enumerate(dialogues_rows) if row.get("status") == "ok"]
    n = settings.questions_per_dialogue
    requests = [_first_request(dialogues_rows[index], prompts, n, seed) for index in asked]

    def check(position: int, text: str):
        try:
            questions = parse_mcqa_json(text)
        except MCQAParseError as error:
            return None, [str(error)]
        return questions, validate_questions(questions, n)

    def next_request(position, attempt, previous, response, problems):
        retry_seed = _attempt_seed(seed, dialogues_rows[asked[position]], attempt)
        if response.ok:
            repair = prompts.render("mcqa_repair", problem="; ".join(problems), n=n, none_option=NONE_OPTION)
            return repaired(requests[position], response.text, repair, attempt=attempt, seed=retry_seed)
        return reasked(previous, attempt=attempt, seed=retry_seed)

    outcomes = ask_with_repair(writer, requests, check, next_request, settings.max_attempts, desc="mcqas",
                               progress_file=progress_file, concurrency=settings.concurrency)
    outcome_of = dict(zip(asked, outcomes))
    return [
        _mcqa_row(row, outcome_of[index], writer, settings, seed) if index in outcome_of else
        _row(row, writer, questions=None, status="failed", failure_reason="dialogue_failed", attempts=0, raw_response=None)
        for index, row in enumerate(dialogues_rows)
    ]


def mcqa_failures(rows: list[dict]) -> FailureReport:
    """Failed question sets among the dialogues that were asked (a failed dialogue is not counted again)."""
    return failure_report(rows, "mcqa", counted=lambda row: row.get("failure_reason") != "dialogue_failed")


def _row(dialogue_row: dict, writer: CachedChatModel, **fields) -> dict:
    return {
        "sample_id": dialogue_row["sample_id"],
        "concept_id": dialogue_row["concept_id"],
        "context_index": dialogue_row["context_index"],
        "writer": writer.identity,
        **fields,
    }


def _attempt_seed(seed: int, row: dict, attempt: int) -> int:
    return derive_seed(seed, "mcqa", row["sample_id"], row["concept_id"], attempt) % (2**31)


def _first_request(row: dict, prompts: PromptBook, n: int, seed: int) -> ChatRequest:
    facts = [dict(fact) for fact in row.get("facts") or []]
    dialogue = row["dialogue"]
    prompt = prompts.render(
        "mcqa_writer", concept_name=row["name"], dialogue=dialogue, facts=format_facts(facts), n=n, none_option=NONE_OPTION
    )
    return ChatRequest(
        (Message.user(prompt),),
        response_schema=response_schema(n),
        task={"kind": "mcqa", "name": row["name"], "facts": facts, "dialogue": dialogue, "n": n, "attempt": 1},
        seed=_attempt_seed(seed, row, 1),
    )


def _mcqa_row(row: dict, outcome: Outcome, writer: CachedChatModel, settings: MCQASettings, seed: int) -> dict:
    if not outcome.ok:
        return _row(row, writer, questions=None, status="failed", failure_reason=outcome.failure,
                    attempts=outcome.attempts, raw_response=outcome.raw)
    questions = []
    for index, question in enumerate(outcome.value):
        rng = rng_for(seed, "mcqa-shuffle", row["sample_id"], row["concept_id"], index)
        shuffled = shuffle_options(question, rng)
        questions.append(
            {
                "question_id": f"Q{index + 1}",
                "question": shuffled["question"],
                "options": dict(shuffled["options"]),
                "answer": shuffled["answer"],
                "supported": is_supported(
                    shuffled["options"][shuffled["answer"]], row["dialogue"], settings.support_threshold
                ),
            }
        )
    return _row(row, writer, questions=questions, status="ok", failure_reason="", attempts=outcome.attempts,
                raw_response=None)
