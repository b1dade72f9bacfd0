"""The authors' released CapEval-QA ground truth format, read and written losslessly.

Their `QAS_GT_test.json` maps every test sample to the questions of each of its context concepts and
the indices of the concepts that appear in the query image:

    {"sample_N": {"qas": {"concept_J": {"qa": [{"id", "question", "options": {"A", "B", "C", "D"},
                                                 "correct_answer"}]}},
                  "gts": [positive concept indices]}}

`concept_J` is the J-th concept of the sample's context (0-based), the same index `gts` uses. We hold
the same content as records shaped like our own MCQA table:

    {"sample_id": "sample_N", "positive_indices": [...],
     "questions": [[{"question_id", "question", "options": {...}, "answer"}, ...],  # context index 0
                   ...]}

and convert back so that `dump_qas_gt(records_to_qas_gt(load_qas_gt(p)))` reproduces the file byte for
byte (key order, two-space indent, non-ASCII characters kept as they are).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_CONCEPT_KEY = re.compile(r"concept_(\d+)")


class QasGtError(ValueError):
    """Malformed ground truth; the message names the sample, concept, question and field."""


def _require(condition: bool, where: str, message: str) -> None:
    if not condition:
        raise QasGtError(f"{where}: {message}")


def _question_record(item, where: str) -> dict:
    _require(isinstance(item, dict), where, f"must be an object, got {type(item).__name__}")
    for field in ("id", "question", "options", "correct_answer"):
        _require(field in item, where, f"field '{field}' is missing")
    for field in ("id", "question", "correct_answer"):
        _require(isinstance(item[field], str), where, f"field '{field}' must be a string, got {type(item[field]).__name__}")
    _require(item["question"].strip() != "", where, "field 'question' is empty")
    options = item["options"]
    _require(isinstance(options, dict) and options, where, "field 'options' must be a non-empty object of letter -> text")
    for letter, text in options.items():
        _require(isinstance(text, str), where, f"field 'options'.{letter} must be a string, got {type(text).__name__}")
    _require(
        item["correct_answer"] in options,
        where,
        f"field 'correct_answer' is {item['correct_answer']!r}, not one of the options {list(options)}",
    )
    unknown = sorted(set(item) - {"id", "question", "options", "correct_answer"})
    _require(not unknown, where, f"unexpected field(s) {unknown}")
    return {
        "question_id": item["id"],
        "question": item["question"],
        "options": dict(options),
        "answer": item["correct_answer"],
    }


def qas_gt_to_records(obj: dict, where: str = "qas_gt") -> list[dict]:
    """Convert the released ground truth (parsed JSON) into one record per sample, in file order.

    Concepts are ordered by their index J; indices must run 0..K-1 without gaps, and every `gts`
    entry must name one of them.
    """
    _require(isinstance(obj, dict), where, f"top level must be an object of samples, got {type(obj).__name__}")
    records = []
    for sample_id, sample in obj.items():
        at = f"{where}: sample '{sample_id}'"
        _require(isinstance(sample, dict), at, f"must be an object, got {type(sample).__name__}")
        for field in ("qas", "gts"):
            _require(field in sample, at, f"field '{field}' is missing")
        unknown = sorted(set(sample) - {"qas", "gts"})
        _require(not unknown, at, f"unexpected field(s) {unknown}")
        qas = sample["qas"]
        _require(isinstance(qas, dict), at, f"field 'qas' must be an object of concepts, got {type(qas).__name__}")
        by_index: dict[int, list[dict]] = {}
        for concept_key, concept in qas.items():
            c_at = f"{at} concept '{concept_key}'"
            match = _CONCEPT_KEY.fullmatch(str(concept_key))
            _require(match is not None, c_at, "key must look like 'concept_<index>'")
            _require(isinstance(concept, dict) and "qa" in concept, c_at, "must be an object with field 'qa'")
            unknown = sorted(set(concept) - {"qa"})
            _require(not unknown, c_at, f"unexpected field(s) {unknown}")
            _require(isinstance(concept["qa"], list), c_at, f"field 'qa' must be a list, got {type(concept['qa']).__name__}")
            index = int(match[1])
            _require(index not in by_index, c_at, f"concept index {index} appears twice")
            by_index[index] = [
                _question_record(item, f"{c_at} qa[{position}]") for position, item in enumerate(concept["qa"])
            ]
        missing = sorted(set(range(len(by_index))) - set(by_index))
        if missing:
            raise QasGtError(f"{at}: field 'qas' has no concept_{missing[0]} (indices must run 0..{len(by_index) - 1})")
        gts = sample["gts"]
        _require(isinstance(gts, list), at, f"field 'gts' must be a list of concept indices, got {type(gts).__name__}")
        for position, value in enumerate(gts):
            _require(
                isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(by_index),
                at,
                f"field 'gts'[{position}] is {value!r}, not a concept index in 0..{len(by_index) - 1}",
            )
        records.append(
            {
                "sample_id": str(sample_id),
                "positive_indices": list(gts),
                "questions": [by_index[i] for i in range(len(by_index))],
            }
        )
    return records


def records_to_qas_gt(records: list[dict]) -> dict:
    """Convert records (see module docstring) back into the released ground-truth structure."""
    out: dict = {}
    for position, record in enumerate(records):
        sample_id = record.get("sample_id")
        at = f"records[{position}] (sample_id={sample_id!r})"
        _require(isinstance(sample_id, str) and sample_id != "", at, "field 'sample_id' is missing or empty")
        _require(sample_id not in out, at, "sample_id appears twice")
        questions = record.get("questions")
        _require(isinstance(questions, list), at, "field 'questions' must be a list (one list per context concept)")
        qas = {}
        for index, concept_questions in enumerate(questions):
            qas[f"concept_{index}"] = {
                "qa": [
                    {
                        "id": q["question_id"],
                        "question": q["question"],
                        "options": dict(q["options"]),
                        "correct_answer": q["answer"],
                    }
                    for q in concept_questions
                ]
            }
        out[sample_id] = {"qas": qas, "gts": list(record.get("positive_indices") or [])}
    return out


def load_qas_gt(path: str | os.PathLike) -> list[dict]:
    """Read and check a released ground-truth file; returns records (see qas_gt_to_records)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise QasGtError(f"{path}: cannot read ({error})") from error
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as error:
        raise QasGtError(f"{path}: not valid JSON ({error})") from error
    return qas_gt_to_records(obj, where=str(path))


def dumps_qas_gt(obj: dict) -> str:
    """Serialise in the released file's layout (two-space indent, UTF-8 kept, no trailing newline)."""
    return json.dumps(obj, indent=2, ensure_ascii=False)


def dump_qas_gt(records: list[dict], path: str | os.PathLike) -> None:
    """Write records as a released-format ground-truth file."""
    Path(path).write_text(dumps_qas_gt(records_to_qas_gt(records)), encoding="utf-8")


def mcqa_rows_to_records(mcqa_rows: list[dict], contexts_rows: list[dict]) -> list[dict]:
    """Our MCQA table (plus contexts, for the positive indices) as released-format records.

    Every context concept of every listed sample needs an 'ok' MCQA row; a missing or failed one is
    an error naming it, because the released format has no way to say "no questions".
    """
    by_key = {(row["sample_id"], row["context_index"]): row for row in mcqa_rows}
    records = []
    for context in contexts_rows:
        sample_id = context["sample_id"]
        questions = []
        for index, concept_id in enumerate(context["context_concept_ids"]):
            row = by_key.get((sample_id, index))
            at = f"mcqas: sample '{sample_id}' context index {index} (concept_id={concept_id})"
            _require(row is not None, at, "no MCQA row")
            _require(row["status"] == "ok", at, f"MCQA row failed ({row.get('failure_reason')})")
            questions.append(
                [
                    {
                        "question_id": q["question_id"],
                        "question": q["question"],
                        "options": {letter: q["options"][letter] for letter in "ABCD"},
                        "answer": q["answer"],
                    }
                    for q in row["questions"]
                ]
            )
        records.append({"sample_id": sample_id, "positive_indices": list(context["positive_indices"]), "questions": questions})
    return records


# ---------------------------------------------------------------------------------------------------
# Captions made elsewhere, to score against the released ground truth


class CaptionsFileError(ValueError):
    """A captions file that cannot be read; the message names the file and the row or key."""


def load_captions_file(path: str | os.PathLike) -> dict[str, str | None]:
    """Captions a user brings, as sample key -> caption (None: the caption failed).

    Accepted: JSON `{"sample_0": "caption", ...}`; JSONL with one `{"sample_id", "caption"}` object a
    line; Parquet with `sample_id` and `caption` columns (a captions artifact with several policies
    must be filtered to one first). Errors name the file and the row or key.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise CaptionsFileError(f"{path}: captions file does not exist")
    out: dict[str, str | None] = {}

    def add(sample_id, caption, at: str):
        if not isinstance(sample_id, str) or not sample_id:
            raise CaptionsFileError(f"{path}: {at} field 'sample_id': missing or not a string ({sample_id!r})")
        if caption is not None and not isinstance(caption, str):
            raise CaptionsFileError(f"{path}: {at} field 'caption': must be a string or null, got {type(caption).__name__}")
        if sample_id in out:
            raise CaptionsFileError(f"{path}: {at}: sample '{sample_id}' has a second caption")
        out[sample_id] = caption

    if suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise CaptionsFileError(f"{path}: not valid JSON ({error})") from error
        if not isinstance(obj, dict):
            raise CaptionsFileError(f"{path}: must be an object of sample key -> caption, got {type(obj).__name__}")
        for key, caption in obj.items():
            add(key, caption, f"key '{key}'")
    elif suffix == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CaptionsFileError(f"{path}: line {number}: not valid JSON ({error})") from error
            if not isinstance(record, dict) or "sample_id" not in record or "caption" not in record:
                raise CaptionsFileError(f"{path}: line {number}: must be an object with 'sample_id' and 'caption'")
            add(record["sample_id"], record["caption"], f"line {number}")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        missing = [c for c in ("sample_id", "caption") if c not in table.column_names]
        if missing:
            raise CaptionsFileError(f"{path}: missing column(s) {missing} (need 'sample_id' and 'caption')")
        if "policy" in table.column_names and len(set(table.column("policy").to_pylist())) > 1:
            raise CaptionsFileError(f"{path}: captions of several policies; keep one policy's rows")
        failed = table.column("status").to_pylist() if "status" in table.column_names else [None] * table.num_rows
        for index, (sample_id, caption, status) in enumerate(
            zip(table.column("sample_id").to_pylist(), table.column("caption").to_pylist(), failed)
        ):
            add(sample_id, None if status not in (None, "ok") else caption, f"row {index}")
    else:
        raise CaptionsFileError(f"{path}: unknown captions format '{suffix}' (use .json, .jsonl or .parquet)")
    return out
