"""The authors' released test set, imported as our test split (schemas.SPLIT).

They publish the test set as a JSONL of sample records plus an image folder (their notebook
generate_caption_qwen.ipynb reads `meta_CoViP_testset_cleaned.jsonl`), and its CapEval-QA questions
as `QAS_GT_test.json` (covip.core.formats). One JSONL record per sample:

    {"imgs": "<query image path>",
     "concepts": ["<context image path>", ...],          # in context order
     "dialogues": {"<key>": "<dialogue text>", ...}}      # in the same order (the keys are not read)

with paths relative to an image root (an absolute path that exists is taken as it is). The N-th
non-empty line is `sample_N` of the ground truth (their notebook keys captions the same way), so a
record and its questions are joined by position. Every record is checked before it becomes a row:
a missing or unreadable image, a count that differs between `concepts`, `dialogues` and the ground
truth's `qas`, a bad `gts` index, a ground-truth sample without a record (or the reverse) is an error
naming the file, the line and the field. `iter_released_test` yields rows one at a time, so a
caller that writes them through `covip.core.io.ArtifactWriter` never leaves a half-written split: the
first error aborts the write.

What the released files do not hold stays empty: `context_names` and `context_categories` are ''
per concept (the names live only in the dialogues), `context_facts` is null. `context_concept_ids`
are content hashes of the context images, so the same photo has the same id in every sample (the
controls' "unrelated query" pairing relies on it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from covip.core.formats import QasGtError, qas_gt_to_records
from covip.core.io import BadImageError, decode_image
from covip.core.schemas import OPTION_LETTERS

FIELDS = ("imgs", "concepts", "dialogues")


class ReleasedDataError(ValueError):
    """A released test set that cannot become a split; the message names the file, line and field."""


def resolve_image(path_text, image_root: Path, where: str) -> Path:
    """The file a record's image path names: under `image_root` (a leading '/' is ignored, as the
    authors' notebook concatenates root and path), or the path itself when it is absolute and exists."""
    if not isinstance(path_text, str) or not path_text.strip():
        raise ReleasedDataError(f"{where}: expected an image path (a non-empty string), got {path_text!r}")
    path = Path(path_text)
    if path.is_absolute() and path.is_file():
        return path
    candidate = image_root / path_text.lstrip("/\\")
    if not candidate.is_file():
        raise ReleasedDataError(f"{where}: image {path_text!r} not found (looked for {candidate})")
    return candidate


def _image_cell(path_text, image_root: Path, where: str) -> dict:
    file = resolve_image(path_text, image_root, where)
    data = file.read_bytes()
    try:
        decode_image(data, where)
    except BadImageError as error:
        raise ReleasedDataError(str(error)) from None
    return {"bytes": data, "path": path_text}


def _concept_id(cell: Mapping) -> str:
    return "img-" + hashlib.sha256(cell["bytes"]).hexdigest()[:16]


def _published_question(question: Mapping, where: str) -> dict:
    options = question["options"]
    missing = [letter for letter in OPTION_LETTERS if letter not in options]
    extra = sorted(set(options) - set(OPTION_LETTERS))
    if missing or extra:
        raise ReleasedDataError(f"{where} field 'options': needs exactly the letters {list(OPTION_LETTERS)}, "
                                f"got {list(options)}")
    return {"question": question["question"], "options": {k: options[k] for k in OPTION_LETTERS},
            "answer": question["answer"]}


def _read_records(meta_path: Path) -> Iterator[tuple[int, int, dict]]:
    """(line number, sample ordinal, record) for every non-empty line of the JSONL."""
    try:
        handle = meta_path.open(encoding="utf-8")
    except OSError as error:
        raise ReleasedDataError(f"{meta_path}: cannot read ({error})") from error
    with handle:
        ordinal = 0
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ReleasedDataError(f"{meta_path} line {number}: not valid JSON ({error})") from error
            if not isinstance(record, dict):
                raise ReleasedDataError(f"{meta_path} line {number}: expected a JSON object, got {type(record).__name__}")
            yield number, ordinal, record
            ordinal += 1


def _row(record: dict, truth: Mapping, image_root: Path, where: str) -> dict:
    for name in FIELDS:
        if name not in record:
            raise ReleasedDataError(f"{where}: field '{name}' is missing (a record needs {list(FIELDS)})")
    concepts, dialogues = record["concepts"], record["dialogues"]
    if not isinstance(concepts, list) or not concepts:
        raise ReleasedDataError(f"{where} field 'concepts': expected a non-empty list of image paths")
    if not isinstance(dialogues, dict):
        raise ReleasedDataError(f"{where} field 'dialogues': expected an object of dialogue texts, "
                                f"got {type(dialogues).__name__}")
    texts = list(dialogues.values())
    for key, text in dialogues.items():
        if not isinstance(text, str) or not text.strip():
            raise ReleasedDataError(f"{where} field 'dialogues'.{key}: expected a non-empty dialogue text")
    questions = truth["questions"]
    if not len(concepts) == len(texts) == len(questions):
        raise ReleasedDataError(
            f"{where}: fields 'concepts' ({len(concepts)}), 'dialogues' ({len(texts)}) and the ground truth's "
            f"'qas' ({len(questions)} concepts) must count the same context concepts"
        )
    gts = truth["positive_indices"]
    for position, index in enumerate(gts):
        if not 0 <= index < len(concepts):
            raise ReleasedDataError(f"{where} field 'gts'[{position}]: {index} is not a concept index in 0..{len(concepts) - 1}")
    if len(set(gts)) != len(gts):
        raise ReleasedDataError(f"{where} field 'gts': {gts} names a concept twice")
    if not gts:
        raise ReleasedDataError(f"{where} field 'gts': no positive concept")
    query = _image_cell(record["imgs"], image_root, f"{where} field 'imgs'")
    images = [_image_cell(path, image_root, f"{where} field 'concepts'[{k}]") for k, path in enumerate(concepts)]
    mcqa = [[_published_question(q, f"{where} qas concept_{ci} qa[{qi}]") for qi, q in enumerate(concept)]
            for ci, concept in enumerate(questions)]
    return {
        "sample_id": truth["sample_id"],
        "split": "test",
        "query_image": query,
        "context_images": images,
        "context_names": [""] * len(concepts),
        "context_dialogues": [text.strip() for text in texts],
        "context_concept_ids": [_concept_id(cell) for cell in images],
        "context_categories": [""] * len(concepts),
        "positive_indices": sorted(int(i) for i in gts),
        "num_positives": len(gts),
        "mcqa": mcqa,
        "context_facts": None,
    }


def iter_released_test(meta: str | os.PathLike, qas_gt: str | os.PathLike, image_root: str | os.PathLike,
                       limit: int | None = None) -> Iterator[dict]:
    """The released test set as split rows (schemas.SPLIT), in file order; see the module docstring.

    `limit` keeps the first N samples only (a quick look; the ground truth's other samples are then
    not required to have records). Raises ReleasedDataError naming file, line and field.
    """
    meta_path, root = Path(meta), Path(image_root)
    if not root.is_dir():
        raise ReleasedDataError(f"{root}: the image root is not a folder")
    try:
        truth = json.loads(Path(qas_gt).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ReleasedDataError(f"{qas_gt}: cannot read as JSON ({error})") from error
    if not isinstance(truth, dict):
        raise ReleasedDataError(f"{qas_gt}: top level must be an object of samples, got {type(truth).__name__}")
    seen = 0
    for number, ordinal, record in _read_records(meta_path):
        if limit is not None and seen >= limit:
            return
        sample_id = f"sample_{ordinal}"
        where = f"{meta_path} line {number} ({sample_id})"
        if sample_id not in truth:
            raise ReleasedDataError(f"{where}: {qas_gt} has no '{sample_id}' (the N-th record is sample_N)")
        try:  # the sample's ground truth, checked now so that an error names the line it belongs to
            [sample_truth] = qas_gt_to_records({sample_id: truth[sample_id]}, where=f"{qas_gt} (for {where})")
        except QasGtError as error:
            raise ReleasedDataError(str(error)) from error
        yield _row(record, sample_truth, root, where)
        seen += 1
    if seen == 0:
        raise ReleasedDataError(f"{meta_path}: no records")
    if limit is None and seen < len(truth):
        extra = [sid for sid in truth if sid not in {f"sample_{i}" for i in range(seen)}]
        raise ReleasedDataError(f"{qas_gt}: {len(extra)} sample(s) without a record in {meta_path} ({seen} records), "
                                f"e.g. {extra[:3]}")


def load_released_test(meta, qas_gt, image_root, limit: int | None = None) -> list[dict]:
    """All rows of `iter_released_test` (for tests and small sets; the workflow streams them)."""
    return list(iter_released_test(meta, qas_gt, image_root, limit))
