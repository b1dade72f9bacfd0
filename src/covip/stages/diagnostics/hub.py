"""Reading a diagnostic set in the hub layout (images_context, dialogues_context, query_image, answer,
and last_action for LAR), from the files `datasets` writes:

- one Parquet file;
- a folder of Parquet files, as the hub repository holds them (e.g. `data/train-00000-of-00001.parquet`,
  read in name order; several splits in one folder are an error naming them);
- a folder written by `Dataset.save_to_disk` (`state.json` naming Arrow files, as the authors'
  scripts read with `load_from_disk`), or by `DatasetDict.save_to_disk` with a single split.
"""

from __future__ import annotations

import json
import re
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


_SHARD = re.compile(r"(?P<split>.+?)-\d{5}-of-\d{5}\.parquet$")


def _arrow_files(folder: Path) -> list[Path]:
    """The Arrow files of a `Dataset.save_to_disk` folder, in the order its state.json lists them."""
    try:
        state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
        return [folder / entry["filename"] for entry in state["_data_files"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
        raise DiagnosticError(f"{folder}/state.json: not a datasets save_to_disk state ({error})") from error


def _read_arrow(file: Path) -> pa.Table:
    """One Arrow file as datasets writes it (IPC stream; the file format is accepted too)."""
    try:
        with pa.memory_map(str(file)) as source:
            try:
                return pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                source.seek(0)
                return pa.ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as error:
        raise DiagnosticError(f"{file}: cannot read as Arrow ({error})") from error


def read_hub_table(path: Path) -> pa.Table:
    """The table of a diagnostic set in any layout of the module docstring, rows in file order."""
    if path.is_file():
        try:
            return pq.read_table(path)
        except (OSError, pa.ArrowInvalid) as error:
            raise DiagnosticError(f"{path}: cannot read as Parquet ({error})") from error
    if not path.is_dir():
        raise DiagnosticError(f"{path}: no such file or folder (a diagnostic set: Parquet file, hub folder, or save_to_disk folder)")
    if (path / "dataset_dict.json").is_file():  # DatasetDict.save_to_disk: one folder per split
        try:
            splits = json.loads((path / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
        except (OSError, json.JSONDecodeError, KeyError) as error:
            raise DiagnosticError(f"{path}/dataset_dict.json: unreadable ({error})") from error
        if len(splits) != 1:
            raise DiagnosticError(f"{path}: a dataset with splits {splits}; point at one of its split folders")
        return read_hub_table(path / splits[0])
    if (path / "state.json").is_file():
        tables = [_read_arrow(file) for file in _arrow_files(path)]
    else:
        files = sorted(path.rglob("*.parquet"))
        if not files:
            raise DiagnosticError(f"{path}: no Parquet files and no datasets state.json in this folder")
        splits = sorted({m["split"] for f in files if (m := _SHARD.match(f.name))})
        if len(splits) > 1:
            raise DiagnosticError(f"{path}: Parquet files of several splits {splits}; point at one split's file")
        try:
            tables = [pq.read_table(file) for file in files]
        except (OSError, pa.ArrowInvalid) as error:
            raise DiagnosticError(f"{path}: cannot read its Parquet files ({error})") from error
    if not tables:
        raise DiagnosticError(f"{path}: the dataset has no data files")
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise DiagnosticError(f"{path}: its data files disagree on the columns ({error})") from error


def _last_action(value, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise DiagnosticError(f"{where} field 'last_action': expected text, got {type(value).__name__}")
    return value.strip() or None


def load_diagnostic_set(path, task: str, prompts: PromptBook | None = None, lsd_box: str = "latex") -> list[dict]:
    """Read a diagnostic set in the hub layout (images_context, dialogues_context, query_image, answer),
    from any layout of the module docstring; every row is kept (no items_per_task cap).

    Other columns are optional: a missing `sample_id` becomes '<task><row>', a missing `question` the
    task's question from the prompt file (LSD's asking for the box `lsd_box` names), a missing
    `target_index` -1, a missing `last_action` null (the hub's LAR set has it: the reference its judge
    uses). A `task` column must agree with `task`. Returns rows of schemas.DIAGNOSTIC_SET; bad cells
    raise naming file, row and field.
    """
    if task not in TASKS:
        raise DiagnosticError(f"diagnostics: unknown task {task!r}; choose from {list(TASKS)}")
    path = Path(path)
    table = read_hub_table(path)
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
            "last_action": _last_action(raw.get("last_action"), where),
        })
    ids = [row["sample_id"] for row in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DiagnosticError(f"{path} field 'sample_id': {dup!r} appears more than once")
    return rows
