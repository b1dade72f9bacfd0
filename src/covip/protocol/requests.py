"""Requests whose prompt interleaves images and dialogues: captioning, caption-augmented generation
(CAG) and the direct diagnostic question, laid out as the authors' code lays them out.

Caption prompt (SPEC §2; the authors' captioning notebook and training script), ONE user turn:

    for every context concept k, in context order:
        [[context]] header for dialogue k, a line break   (text)
        [[image_label]] 'Picture N: '                     (text; the vision id the authors' chat
        the concept's reference image                      template adds; both absent under the
                                                           text-only control)
        the dialogue about it, then a blank line           (text)
    [[query]] header for the new image, a line break       (text)
    [[image_label]] and the query image
    [[instruction]] the captioning instruction             (text)

`layout` 'training' numbers the dialogues from 1 and ends each with a blank line, as the authors'
training and diagnostic scripts do; 'test_notebook' numbers from 0 with no blank line, as their
test-set captioning notebook does (switch `captioning.layout`, docs/protocol.md). Pictures are
numbered from 1 across the conversation either way.

Diagnostic answers (the authors' downstream scripts): `direct` is one user turn with the same context
and query and the question last; `cag` is the context and query (no instruction), the caption as the
assistant's turn, then the question as a user turn. Which instruction rides along as a system message
depends on task and mode (`DIAGNOSTIC_SYSTEM`). Every word lives in the sectioned prompt files
(`caption`, `diagnostic_questions`); this module only places sections, images and dialogues.

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
CAPTION_SECTIONS = ("context", "image_label", "query", "instruction", "cag_question")
DIAGNOSTIC_PROMPT = "diagnostic_questions"
LAYOUTS = ("training", "test_notebook")

GREEDY = {"temperature": 0.0}
# How the authors sample a downstream answer, direct or after a caption (SPEC §4); captions stay greedy.
ANSWER_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5}

# The system message of a diagnostic answer per (task, mode), as in the authors' downstream scripts:
# (prompt, section), or None for no system message (LSD asked directly has none).
DIAGNOSTIC_SYSTEM: dict[tuple[str, str], tuple[str, str] | None] = {
    ("lsd", "direct"): None,
    ("lar", "direct"): (DIAGNOSTIC_PROMPT, "personalization"),
    ("itr", "direct"): (DIAGNOSTIC_PROMPT, "personalization"),
    ("lsd", "cag"): (CAPTION_PROMPT, "instruction"),
    ("lar", "cag"): (DIAGNOSTIC_PROMPT, "personalization"),
    ("itr", "cag"): (DIAGNOSTIC_PROMPT, "personalization"),
}


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
                 image_label, layout: str, where: str) -> list[TextPart | ImagePart]:
    """Per context entry its header, its labelled image (when there are images) and its dialogue; then
    the query header and the labelled query image. `image_label(n)` is the label of picture n."""
    if layout not in LAYOUTS:
        raise ValueError(f"{where}: unknown caption layout {layout!r}; choose from {list(LAYOUTS)}")
    after_dialogue = "\n\n" if layout == "training" else ""
    parts: list[TextPart | ImagePart] = []
    number = 0
    for k, (header, dialogue) in enumerate(zip(headers, dialogues)):
        parts.append(TextPart(header + "\n"))
        if images:
            number += 1
            parts += [TextPart(image_label(number) + " "), image_part(images[k], f"{where} field 'context_images'[{k}]")]
        parts.append(TextPart(dialogue + after_dialogue))
    number += 1
    parts += [TextPart(query_header + "\n"), TextPart(image_label(number) + " "),
              image_part(query_image, f"{where} field 'query_image'")]
    return parts


def _context_turn(prompts: PromptBook, images: Sequence, dialogues: Sequence[str], query_image, layout: str,
                  where: str) -> list[TextPart | ImagePart]:
    """The interleaved context and query of the caption prompt's sections (no instruction)."""
    sections = prompts.sections(CAPTION_PROMPT, CAPTION_SECTIONS)
    n = len(dialogues)
    first = 1 if layout == "training" else 0
    headers = [fill_section(sections["context"], CAPTION_PROMPT, "context", index=k + first, num_contexts=n)
               for k in range(n)]
    query = fill_section(sections["query"], CAPTION_PROMPT, "query", num_contexts=n)
    return _interleaved(headers, images, dialogues, query, query_image,
                        lambda number: fill_section(sections["image_label"], CAPTION_PROMPT, "image_label", number=number),
                        layout, where)


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
                          seed: int | None = None, where: str = "split row", layout: str = "training") -> ChatRequest:
    """The captioning request for one split-style row (one user turn, the layout above).

    `sample_row` needs sample_id, context_images ({'bytes','path'} dicts; an empty list places the
    dialogues without images, the text-only control), context_dialogues, query_image, and may carry
    context_names, context_categories, context_facts (JSON text) and positive_indices (empty for rows,
    such as diagnostic items, that lack them). `where` prefixes error messages (e.g.
    "results/splits/test.parquet row 3"). Greedy unless `sampling` is given. `layout` is 'training'
    (the default) or 'test_notebook' (module docstring).
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

    parts = _context_turn(prompts, images, dialogues, sample_row.get("query_image"), layout, here)
    parts.append(TextPart(prompts.render_section(CAPTION_PROMPT, "instruction", num_contexts=n)))
    task = {
        "kind": "caption",
        "sample_id": sample_id,
        "context_names": names,
        "context_categories": categories,
        "context_dialogues": dialogues,
        "context_facts": facts,
        "positive_indices": positives,
    }
    return ChatRequest(messages=(Message("user", tuple(parts)),),
                       sampling=dict(GREEDY) if sampling is None else dict(sampling), task=task, seed=seed)


def diagnostic_system(task: str, mode: str, prompts: PromptBook) -> str | None:
    """The system message of a diagnostic answer (`DIAGNOSTIC_SYSTEM`), rendered; None for none."""
    where = DIAGNOSTIC_SYSTEM[(task, mode)]
    return None if where is None else prompts.render_section(*where)


def build_cag_request(caption_request: ChatRequest, caption: str, question: str, *, system: str | None = None,
                      sampling: dict[str, Any] | None = None, seed: int | None = None,
                      prompts: PromptBook | None = None, task_extra: Mapping[str, Any] | None = None) -> ChatRequest:
    """Caption-augmented generation, laid out as the authors' CAG scripts: `system` (if any) as the
    system message, the caption request's context and query WITHOUT its instruction as the user turn,
    the caption as the assistant's turn, then a user turn with `question` (section [[cag_question]]).

    Sampled as in the authors' code unless `sampling` is given; `seed` defaults to the caption
    request's seed. The task is the caption task with kind 'cag_answer', the caption, the question
    and `task_extra` (e.g. the diagnostic task's name and truth) merged in. `prompts` defaults to the
    built-in prompt book; pass the run's book so config overrides apply.
    """
    if caption_request.task is None or caption_request.task.get("kind") != "caption":
        raise ValueError("build_cag_request needs a request built by build_caption_request (task kind 'caption')")
    if caption is None:
        raise ValueError(f"sample {caption_request.task.get('sample_id')}: no caption to build a CAG request from")
    book = prompts if prompts is not None else PromptBook()
    follow_up = book.render_section(CAPTION_PROMPT, "cag_question", question=question)
    context = caption_request.messages[-1]
    turns = (Message("user", context.parts[:-1]),)  # the caption request's last part is its instruction
    if system:
        turns = (Message.system(system),) + turns
    task = {**caption_request.task, "kind": "cag_answer", "caption": caption, "question": question, **(task_extra or {})}
    return ChatRequest(
        messages=turns + (Message.assistant(caption), Message.user(follow_up)),
        sampling=dict(ANSWER_SAMPLING) if sampling is None else dict(sampling),
        task=task,
        seed=caption_request.seed if seed is None else seed,
    )


def target_index(item: Mapping) -> int:
    """The context entry a diagnostic item's answer comes from (-1 when the set does not say)."""
    target = item.get("target_index")
    return -1 if target is None else int(target)


def diagnostic_truth(item: Mapping) -> dict:
    """What a diagnostic item's answer is, for the reference policies' task (never shown to a model)."""
    return {"target_index": target_index(item), "answer": item.get("answer"), "last_action": item.get("last_action")}


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
    """A diagnostic question asked directly: the system message of the task (`DIAGNOSTIC_SYSTEM`), then
    one user turn with the context, the query and the question last (the caption prompt's layout)."""
    dialogues = list(item["dialogues_context"])
    where = f"diagnostic set {item['task']} item {item['sample_id']}"
    parts = _context_turn(prompts, list(item["images_context"]), dialogues, item["query_image"], "training", where)
    parts.append(TextPart(item["question"]))
    system = diagnostic_system(item["task"], "direct", prompts)
    turns = (Message("user", tuple(parts)),)
    if system:
        turns = (Message.system(system),) + turns
    task = {
        "kind": "diagnostic",
        "task": item["task"],
        "sample_id": item["sample_id"],
        "question": item["question"],
        "dialogues": dialogues,
        **diagnostic_truth(item),
    }
    return ChatRequest(messages=turns, sampling=dict(ANSWER_SAMPLING) if sampling is None else dict(sampling),
                       task=task, seed=seed)
