"""Train split rows -> TRL's multimodal conversational records (SPEC section 2 layout).

Each record is ``{"prompt": [one user message], "images": [{"bytes", "path"}], "task": str, "truth":
JSON, "sample_id": str}``. The user message's content interleaves ``{"type": "text"}`` and
``{"type": "image"}`` parts; TRL fills the image placeholders from ``images`` in order.

Images stay encoded: `write_records` streams the records into one Arrow file (a row group at a time)
and `load_records` memory-maps it as a `datasets.Dataset` whose image column decodes to RGB PIL
images only when the trainer reads a batch, so memory stays flat however large the train split
(decoding every train image up front is ~20 GB at paper scale).

The `caption` prompt is exactly the evaluation prompt (`covip.protocol.requests.build_caption_request`),
so the policy is trained on what it is scored on. `joint` keeps that context layout and swaps the final
instruction. `multi_vision` is laid out as the authors lay it out: the concept photos alone, each
under a header numbered from 0, then the instruction, then the query photo. `vision` shows one
context concept's photo and the query photo. The task types and their truth:

- caption      {"sample_id", "positive_indices", "questions"} (questions per context concept, A-D)
- multi_vision {"indices"}: the context indices (from 0, as the authors number concepts) of the
               concepts in the query image
- joint        caption truth plus "indices": the 1-based memory numbers its prompt shows
- vision       {"present"}: whether the named concept (image 1) is in the query (image 2)

Which task a sample gets is drawn per sample from the run seed, in the configured proportions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from covip.clients.base import ChatRequest, ImagePart, Message, TextPart
from covip.prompts import PromptBook
from covip.core.seeding import pyrandom_for
from covip.protocol.requests import build_caption_request, image_part

TRAIN_PROMPT = "train_tasks"


class TrainingDataError(ValueError):
    """A train split row that cannot become a training record; the message names row and field."""


def _content(message: Message) -> tuple[list[dict], list[dict]]:
    """A covip Message as TRL content parts plus its images (in order, still encoded)."""
    parts, images = [], []
    for part in message.parts:
        if isinstance(part, TextPart):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, ImagePart):
            parts.append({"type": "image", "text": None})
            images.append({"bytes": part.data, "path": None})
        else:  # pragma: no cover - Message only holds these two
            raise TypeError(f"unexpected message part {type(part).__name__}")
    return parts, images


def _record(request: ChatRequest, task: str, truth: Mapping, sample_id: str) -> dict:
    (message,) = request.messages
    content, images = _content(message)
    return {
        "prompt": [{"role": "user", "content": content}],
        "images": images,
        "task": task,
        "truth": json.dumps(truth),
        "sample_id": sample_id,
    }


def row_questions(row: Mapping, where: str) -> list[list[dict]]:
    mcqa = row.get("mcqa")
    if mcqa is None:
        raise TrainingDataError(f"{where} field 'mcqa': missing (the caption reward needs the questions)")
    out = []
    for ci, concept in enumerate(mcqa):
        qs = []
        for qi, q in enumerate(concept):
            options = q.get("options") or {}
            if q.get("answer") not in ("A", "B", "C", "D") or not all(isinstance(options.get(k), str) for k in "ABCD"):
                raise TrainingDataError(f"{where} field 'mcqa'[{ci}][{qi}]: needs options A-D and an answer letter")
            qs.append({"question": str(q["question"]), "options": {k: options[k] for k in "ABCD"}, "answer": q["answer"]})
        out.append(qs)
    return out


def build_record(row: Mapping, task: str, prompts: PromptBook, *, seed: int, where: str) -> dict:
    """One training record of type `task` from one train split row (schemas.SPLIT)."""
    sample_id = str(row.get("sample_id"))
    here = f"{where} (sample_id={sample_id})"
    caption_request = build_caption_request(row, prompts, where=where)
    positives = sorted(int(i) for i in row.get("positive_indices") or [])
    if task == "caption":
        truth = {"sample_id": sample_id, "positive_indices": positives, "questions": row_questions(row, here)}
        return _record(caption_request, task, truth, sample_id)
    sections = prompts.sections(TRAIN_PROMPT)
    if task == "multi_vision":
        images = list(row.get("context_images") or [])
        parts: list = []
        for k, image in enumerate(images):  # numbered from 0, photos only, as the authors' task
            parts += [TextPart(sections["multi_vision_concept"].substitute(index=k).strip()),
                      image_part(image, f"{here} field 'context_images'[{k}]")]
        parts += [TextPart(sections["multi_vision"].substitute().strip()),
                  image_part(row.get("query_image"), f"{here} field 'query_image'")]
        return _record(ChatRequest((Message("user", tuple(parts)),)), task, {"indices": list(positives)}, sample_id)
    if task == "joint":
        (message,) = caption_request.messages
        # Same context and query layout as the caption prompt; only the final instruction differs, and
        # it asks for the memory numbers that layout shows (from 1).
        parts = message.parts[:-1] + (TextPart(sections[task].substitute().strip()),)
        truth: dict = {"indices": [i + 1 for i in positives], "sample_id": sample_id, "positive_indices": positives,
                       "questions": row_questions(row, here)}
        return _record(ChatRequest((Message("user", parts),)), task, truth, sample_id)
    if task == "vision":
        names = list(row.get("context_names") or [])
        images = list(row.get("context_images") or [])
        if not names or len(names) != len(images):
            raise TrainingDataError(f"{here} fields 'context_names'/'context_images': need one name per context image")
        # Half the vision questions ask about a concept that is present, when there is one.
        rng = pyrandom_for(seed, "train_vision", sample_id)
        absent = [k for k in range(len(names)) if k not in positives]
        pool = positives if positives and (not absent or rng.random() < 0.5) else absent
        k = rng.choice(pool)
        name = str(names[k])
        parts = (
            TextPart(sections["vision_first"].substitute(name=name).strip()),
            image_part(images[k], f"{here} field 'context_images'[{k}]"),
            TextPart(sections["vision_second"].substitute().strip()),
            image_part(row.get("query_image"), f"{here} field 'query_image'"),
            TextPart(sections["vision_question"].substitute(name=name).strip()),
        )
        return _record(ChatRequest((Message("user", parts),)), task, {"present": k in positives}, sample_id)
    raise TrainingDataError(f"{here}: unknown task type {task!r}")


def assign_tasks(sample_ids: Sequence[str], mixture: Mapping[str, float], seed: int) -> list[str]:
    """One task type per sample, drawn independently per sample id with the mixture's weights."""
    tasks = [t for t, w in mixture.items() if w > 0]
    weights = [float(mixture[t]) for t in tasks]
    if not tasks:
        raise ValueError(f"training.task_mixture has no positive weight: {dict(mixture)}")
    return [pyrandom_for(seed, "train_task", sid).choices(tasks, weights)[0] for sid in sample_ids]


def iter_records(rows: Iterable[Mapping], mixture: Mapping[str, float], prompts: PromptBook, *, seed: int,
                 where: str = "train split") -> Iterator[dict]:
    """Training records for every row, one at a time; task types drawn per sample from `mixture`
    (task -> weight), independently per sample id, so streaming changes nothing."""
    for i, row in enumerate(rows):
        (task,) = assign_tasks([str(row.get("sample_id"))], mixture, seed)
        yield build_record(row, task, prompts, seed=seed, where=f"{where} row {i}")


def build_records(rows: Sequence[Mapping], mixture: Mapping[str, float], prompts: PromptBook, *, seed: int,
                  where: str = "train split") -> list[dict]:
    """Training records for every row (a list; `write_records` streams them instead)."""
    return list(iter_records(rows, mixture, prompts, seed=seed, where=where))


def record_features():
    """The `datasets` features of a record: images decode to RGB PIL images when a batch is read."""
    from datasets import Features, Image, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    return Features({"prompt": List({"role": Value("string"), "content": List(part)}), "images": List(Image(mode="RGB")),
                     "task": Value("string"), "truth": Value("string"), "sample_id": Value("string")})


def write_records(records: Iterable[dict], path: str | Path) -> int:
    """Stream records into one Arrow file at `path` (written beside it, then renamed into place); the
    number written. Memory holds one writer batch of encoded records, not the split."""
    from datasets.arrow_writer import ArrowWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with ArrowWriter(features=record_features(), path=str(partial), writer_batch_size=64) as writer:
        for record in records:
            writer.write(record)
        count, _ = writer.finalize()
    os.replace(partial, path)
    return int(count)


def load_records(path: str | Path):
    """The records Arrow file as a memory-mapped `datasets.Dataset` (images decoded per access)."""
    import datasets

    return datasets.Dataset.from_file(str(path))


def to_dataset(records: Sequence[dict]):
    """A `datasets.Dataset` of in-memory records (tests; images as PIL or encoded {'bytes','path'})."""
    import datasets

    return datasets.Dataset.from_list(list(records), features=record_features())
