"""Requests whose prompt interleaves images and dialogues: captioning, caption-augmented generation
(CAG) and the direct diagnostic question.

Caption prompt (SPEC §2, from the authors' code), all in ONE user turn:

    for every context concept k, in context order:
        [[context]] header for memory k   (text)
        the concept's reference image      (image; absent under the text-only control)
        the dialogue about it              (text)
    [[query]] header for the new image     (text)
    the query image                        (image)
    [[instruction]] the captioning request (text)

Every word lives in the sectioned prompt files (`caption`, `diagnostic_questions`); this module only
places sections, images and dialogues. CAG (SPEC §4): the caption request, the caption as the
assistant's previous turn, then a user turn with the question ([[cag_question]]). A direct
diagnostic request has the same layout with the diagnostic headers and the question last.

`ChatRequest.task` carries the structured facts the prompt was built from (kind 'caption',
'cag_answer' or 'diagnostic'); production backends ignore it, the reference policies answer from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from covip.clients.base import ChatRequest, ImagePart, Message, TextPart
from covip.core.io import as_list, decode_image
from covip.prompts import PromptBook, fill_section

CAPTION_PROMPT = "caption"
CAPTION_SECTIONS = ("context", "query", "instruction", "cag_question")
DIAGNOSTIC_PROMPT = "diagnostic_questions"
DIAGNOSTIC_LAYOUT_SECTIONS = ("context", "query")

GREEDY = {"temperature": 0.0}
# How the authors sample a downstream answer, direct or after a caption (SPEC §4); captions stay greedy.
ANSWER_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5}


class RequestError(ValueError):
    """A row that cannot be turned into a request; the message names the row and field."""


def image_part(image, where: str) -> ImagePart:
    """An image cell as a request part: a Hugging Face image struct ({'bytes', 'path'}; the path is read
    when the bytes were not embedded) or raw bytes. Undecodable data raises naming `where`."""
    data = None
    if isinstance(image, Mapping):
        data = image.get("bytes")
        if not data and image.get("path"):
            path = Path(image["path"])
            if not path.is_file():
                raise RequestError(f"{where}: no image bytes and the path {path} does not exist")
            data = path.read_bytes()
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    decoded = decode_image(data, where)  # raises BadImageError naming `where`
    return ImagePart(bytes(data), Image.MIME.get(decoded.format or "", "image/png"))


def _interleaved(headers: Sequence[str], images: Sequence, dialogues: Sequence[str], query_header: str, query_image,
                 closing: str, where: str) -> tuple[TextPart | ImagePart, ...]:
    """Per context entry its header, its image (when there are images) and its dialogue; then the query
    header, the query image and the closing text."""
    parts: list[TextPart | ImagePart] = []
    for k, (header, dialogue) in enumerate(zip(headers, dialogues)):
        image = [image_part(images[k], f"{where} field 'context_images'[{k}]")] if images else []
        parts += [TextPart(header), *image, TextPart(dialogue)]
    parts += [TextPart(query_header), image_part(query_image, f"{where} field 'query_image'"), TextPart(closing)]
    return tuple(parts)


def parse_facts(value, n: int, here: str) -> list[list[dict]]:
    """The `context_facts` cell (JSON text or a list): one list of {'kind', 'text'} per context concept."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            facts = json.loads(value)
        except json.JSONDecodeError as error:
            raise RequestError(f"{here} field 'context_facts': not valid JSON ({error})") from error
    else:
        facts = value
    if not isinstance(facts, list) or (facts and len(facts) != n):
        size = len(facts) if isinstance(facts, list) else type(facts).__name__
        raise RequestError(f"{here} field 'context_facts': expected a JSON list with one entry per context concept ({n}), got {size}")
    out = []
    for k, entry in enumerate(facts):
        if not isinstance(entry, list) or not all(isinstance(f, Mapping) and "text" in f for f in entry):
            raise RequestError(f"{here} field 'context_facts'[{k}]: expected a list of {{'kind', 'text'}} objects")
        out.append([{"kind": str(f.get("kind", "")), "text": str(f["text"])} for f in entry])
    return out


def build_caption_request(sample_row: Mapping, prompts: PromptBook, *, sampling: dict[str, Any] | None = None,
                          seed: int | None = None, where: str = "split row") -> ChatRequest:
    """The captioning request for one split-style row (one user turn, the layout above).

    `sample_row` needs sample_id, context_images ({'bytes','path'} dicts; an empty list places the
    dialogues without images, the text-only control), context_dialogues, query_image, and may carry
    context_names, context_categories, context_facts (JSON text) and positive_indices (empty for rows,
    such as diagnostic items, that lack them). `where` prefixes error messages (e.g.
    "results/splits/test.parquet row 3"). Greedy unless `sampling` is given.
    """
    sample_id = str(sample_row.get("sample_id", "?"))
    here = f"{where} (sample_id={sample_id})"
    images = as_list(sample_row.get("context_images"))
    dialogues = [str(d) for d in as_list(sample_row.get("context_dialogues"))]
    if images and len(images) != len(dialogues):
        raise RequestError(
            f"{here} fields 'context_images' and 'context_dialogues': {len(images)} images but {len(dialogues)} dialogues"
        )
    n = len(dialogues)
    names = [str(x) for x in as_list(sample_row.get("context_names"))]
    categories = [str(x) for x in as_list(sample_row.get("context_categories"))]
    for column, values in (("context_names", names), ("context_categories", categories)):
        if values and len(values) != n:
            raise RequestError(f"{here} field '{column}': {len(values)} entries for {n} context concepts")
    facts = parse_facts(sample_row.get("context_facts"), n, here)
    positives = [int(i) for i in as_list(sample_row.get("positive_indices"))]
    bad = [i for i in positives if not 0 <= i < n]
    if bad:
        raise RequestError(f"{here} field 'positive_indices': {bad} out of range for {n} context concepts")

    sections = prompts.sections(CAPTION_PROMPT, CAPTION_SECTIONS)
    headers = [fill_section(sections["context"], CAPTION_PROMPT, "context", index=k + 1, num_contexts=n) for k in range(n)]
    parts = _interleaved(
        headers, images, dialogues,
        fill_section(sections["query"], CAPTION_PROMPT, "query", num_contexts=n), sample_row.get("query_image"),
        fill_section(sections["instruction"], CAPTION_PROMPT, "instruction", num_contexts=n), here,
    )
    task = {
        "kind": "caption",
        "sample_id": sample_id,
        "context_names": names,
        "context_categories": categories,
        "context_dialogues": dialogues,
        "context_facts": facts,
        "positive_indices": positives,
    }
    return ChatRequest(messages=(Message("user", parts),), sampling=dict(GREEDY) if sampling is None else dict(sampling),
                       task=task, seed=seed)


def build_cag_request(caption_request: ChatRequest, caption: str, question: str, *, sampling: dict[str, Any] | None = None,
                      seed: int | None = None, prompts: PromptBook | None = None,
                      task_extra: Mapping[str, Any] | None = None) -> ChatRequest:
    """Caption-augmented generation: the caption request's turn(s), the caption as the assistant's
    previous turn, then a user turn with `question` (wrapped by the prompt section [[cag_question]]).

    Sampled as in the authors' code unless `sampling` is given; `seed` defaults to the caption
    request's seed. The task is the caption task with kind 'cag_answer', the caption, the question
    and `task_extra` (e.g. the diagnostic task's name) merged in. `prompts` defaults to the built-in
    prompt book; pass the run's book so config overrides apply.
    """
    if caption_request.task is None or caption_request.task.get("kind") != "caption":
        raise ValueError("build_cag_request needs a request built by build_caption_request (task kind 'caption')")
    if caption is None:
        raise ValueError(f"sample {caption_request.task.get('sample_id')}: no caption to build a CAG request from")
    book = prompts if prompts is not None else PromptBook()
    follow_up = book.render_section(CAPTION_PROMPT, "cag_question", question=question)
    task = {**caption_request.task, "kind": "cag_answer", "caption": caption, "question": question, **(task_extra or {})}
    return ChatRequest(
        messages=caption_request.messages + (Message.assistant(caption), Message.user(follow_up)),
        sampling=dict(ANSWER_SAMPLING) if sampling is None else dict(sampling),
        task=task,
        seed=caption_request.seed if seed is None else seed,
    )


def target_index(item: Mapping) -> int:
    """The context entry a diagnostic item's answer comes from (-1 when the set does not say)."""
    target = item.get("target_index")
    return -1 if target is None else int(target)


def diagnostic_as_split_row(item: Mapping) -> dict:
    """A diagnostic item in the split-row shape the caption request reads.

    The set stores no names or facts apart from the dialogues, so those are empty; the one known
    positive is the entry the answer comes from (`target_index`), which only reference policies read.
    """
    target = target_index(item)
    return {
        "sample_id": item["sample_id"],
        "context_images": list(item["images_context"]),
        "context_dialogues": list(item["dialogues_context"]),
        "context_names": [],
        "context_facts": "[]",
        "positive_indices": [target] if target >= 0 else [],
        "query_image": item["query_image"],
    }


def build_direct_request(item: Mapping, prompts: PromptBook, *, sampling: dict | None = None, seed: int = 0) -> ChatRequest:
    """A diagnostic question asked directly: per context entry a header, its image and its dialogue;
    then the query header, the query image and the question (one user turn)."""
    sections = prompts.sections(DIAGNOSTIC_PROMPT, DIAGNOSTIC_LAYOUT_SECTIONS)
    dialogues = list(item["dialogues_context"])
    n = len(dialogues)
    headers = [fill_section(sections["context"], DIAGNOSTIC_PROMPT, "context", index=k + 1, num_context=n) for k in range(n)]
    parts = _interleaved(
        headers, list(item["images_context"]), dialogues,
        fill_section(sections["query"], DIAGNOSTIC_PROMPT, "query", num_context=n), item["query_image"],
        item["question"], f"diagnostic set {item['task']} item {item['sample_id']}",
    )
    task = {
        "kind": "diagnostic",
        "task": item["task"],
        "sample_id": item["sample_id"],
        "question": item["question"],
        "dialogues": dialogues,
        "target_index": target_index(item),
    }
    return ChatRequest(messages=(Message("user", parts),),
                       sampling=dict(ANSWER_SAMPLING) if sampling is None else dict(sampling), task=task, seed=seed)
