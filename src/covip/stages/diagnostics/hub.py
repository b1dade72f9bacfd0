"""Reading a diagnostic set in the hub layout (images_context, dialogues_context, query_image, answer)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from covip.core.io import BadImageError, decode_image
from covip.prompts import PromptBook
from covip.stages.diagnostics.settings import BOX_MARKER, HUB_COLUMNS, QUESTIONS_PROMPT, TASKS, DiagnosticError


def _image_cell(value, where: str, base: Path) -> dict:
    """Normalise an image cell (HF struct {'bytes','path'}, raw bytes) to a struct with bytes."""
    if isinstance(value, (bytes, bytearray)):
        data, path = bytes(value), None
    elif isinstance(value, Mapping):
        data, path = value.get("bytes"), value.get("path")
        if not data and path:
            file = Path(path) if Path(path).is_absolute() else base / path
            if not file.is_file():
                raise DiagnosticError(f"{where}: image has no bytes and its path {path!r} is not a file")
            data = file.read_bytes()
    else:
        raise DiagnosticError(f"{where}: expected an image ({{'bytes','path'}} struct or bytes), got {type(value).__name__}")
    try:
        decode_image(data, where)
    except BadImageError as error:
        raise DiagnosticError(str(error)) from None
    return {"bytes": bytes(data), "path": path}


def load_diagnostic_set(path, task: str, prompts: PromptBook | None = None, lsd_box: str = "latex") -> list[dict]:
    """Read a diagnostic set in the hub layout (images_context, dialogues_context, query_image, answer).

    Other columns are optional: a missing `sample_id` becomes '<task><row>', a missing `question` the
    task's question from the prompt file (LSD's asking for the box `lsd_box` names), a missing
    `target_index` -1, a missing `last_action` (the LAR set's reference for the judge) null. A `task`
    column must agree with `task`. Returns rows of schemas.DIAGNOSTIC_SET; bad cells raise naming file,
    row and field.
    """
    if task not in TASKS:
        raise DiagnosticError(f"diagnostics: unknown task {task!r}; choose from {list(TASKS)}")
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise DiagnosticError(f"{path}: cannot read as Parquet ({error})") from error
    missing = [c for c in HUB_COLUMNS if c not in table.column_names]
    if missing:
        raise DiagnosticError(f"{path}: missing hub column(s) {missing}; a diagnostic set needs {list(HUB_COLUMNS)}")
    default_question = None
    rows = []
    for index, raw in enumerate(table.to_pylist()):
        where = f"{path} row {index}"
        sample_id = raw.get("sample_id") or f"{task}{index:04d}"
        where = f"{where} (sample_id={sample_id})"
        if raw.get("task") not in (None, task):
            raise DiagnosticError(f"{where} field 'task': {raw['task']!r} but the set was loaded as {task!r}")
        images = raw["images_context"]
        dialogues = raw["dialogues_context"]
        if not images:
            raise DiagnosticError(f"{where} field 'images_context' is empty")
        if not isinstance(dialogues, list) or not all(isinstance(d, str) and d.strip() for d in dialogues):
            raise DiagnosticError(f"{where} field 'dialogues_context' must be a list of non-empty strings")
        if len(dialogues) != len(images):
            raise DiagnosticError(f"{where}: {len(images)} images_context but {len(dialogues)} dialogues_context")
        answer = raw["answer"]
        if answer is None or not str(answer).strip():
            raise DiagnosticError(f"{where} field 'answer' is empty")
        question = raw.get("question")
        if not question:
            if default_question is None:
                default_question = (prompts or PromptBook()).render_section(QUESTIONS_PROMPT, task, box=BOX_MARKER[lsd_box])
            question = default_question
        target = raw.get("target_index")
        target = -1 if target is None else int(target)
        if not -1 <= target < len(images):
            raise DiagnosticError(f"{where} field 'target_index': {target} is outside the {len(images)} context entries")
        rows.append({
            "sample_id": str(sample_id),
            "task": task,
            "images_context": [_image_cell(v, f"{where} field 'images_context'[{k}]", path.parent) for k, v in enumerate(images)],
            "dialogues_context": list(dialogues),
            "query_image": _image_cell(raw["query_image"], f"{where} field 'query_image'", path.parent),
            "question": str(question),
            "answer": str(answer).strip(),
            "target_index": target,
            "last_action": str(raw["last_action"]).strip() if raw.get("last_action") else None,
        })
    ids = [row["sample_id"] for row in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DiagnosticError(f"{path} field 'sample_id': {dup!r} appears more than once")
    return rows
