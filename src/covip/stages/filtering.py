"""Stage 3: keep or drop every synthesized query, with the reason for every drop.

Two kinds of checks, in order (SPEC section 2):

1. Instruction consistency, cheap and local: the generation succeeded, the row's positives agree
   with its count and its instruction, the image decodes, is large enough, not absurdly elongated and
   not blank.
2. Visual fidelity: a VLM (the registry's verifier) sees, for each positive concept, a text label and
   its reference image, then the generated image and a yes/no question rendered from the prompt
   `visual_fidelity`: yes only if every concept is present, not occluded or cut off, and not
   significantly different from its reference. The answer is parsed leniently (yes/no at the start,
   any case, punctuation, a reasoning block or an explanation after it); anything else is a drop
   with reason 'unparseable_verifier_answer' and the raw text as detail.

The `visual_fidelity` prompt file holds three sections, each a `string.Template`: `[[reference]]`
(the label before each reference image: $index, $name, $category), `[[query]]` (the label before the
generated image) and `[[question]]` ($num_concepts, $names). Keeping the labels in the file keeps
every word sent to the model in one place.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from covip.clients.base import ChatModel, ChatRequest, ImagePart, Message, TextPart
from covip.core.concurrency import run_concurrently
from covip.core.io import BadImageError, decode_image
from covip.prompts import PromptBook, fill_section

FIDELITY_PROMPT = "visual_fidelity"
FIDELITY_SECTIONS = ("reference", "query", "question")
CHECKS = "consistency_checks"  # the `verifier` of rows decided before any model saw them


class FilterError(ValueError):
    """Inputs that do not fit together (a query naming an unknown concept); names file, row and field."""


@dataclass
class FilterSettings:
    """Settings of stage 3 (config section `filtering`)."""

    min_image_side: int = field(default=64, metadata={"help": "Drop images whose shorter side is below this many pixels ('image_too_small')."})
    max_aspect_ratio: float = field(default=3.0, metadata={"help": "Drop images whose longer side exceeds this multiple of the shorter ('bad_aspect_ratio')."})
    blank_std: float = field(default=3.0, metadata={"help": "Drop images whose grey-level standard deviation (0-255) is below this ('blank_image')."})
    check_instruction_names: bool = field(default=True, metadata={"help": "Drop rows whose instruction does not mention every positive concept's name ('instruction_mismatch')."})
    visual_fidelity: bool = field(default=True, metadata={"help": "Ask the verifier model the visual-fidelity question; false keeps every row that passes the consistency checks (an ablation, not the paper's filter)."})

    def __post_init__(self):
        if not 1 <= self.min_image_side <= 8192:
            raise ValueError(f"filtering.min_image_side must be in [1, 8192], got {self.min_image_side}")
        if self.max_aspect_ratio < 1.0:
            raise ValueError(f"filtering.max_aspect_ratio must be >= 1, got {self.max_aspect_ratio}")
        if not 0.0 <= self.blank_std < 128.0:
            raise ValueError(f"filtering.blank_std must be in [0, 128), got {self.blank_std}")


# ---------------------------------------------------------------------------------------------------
# Answer parsing and prompt building (each testable alone)

_THINK = re.compile(r"<think>.*?(</think>|$)", re.IGNORECASE | re.DOTALL)
_YES_NO = re.compile(r"^[\W_]*(?:(?:final\s+)?answer\s*[:\-]?[\W_]*)?(yes|no)\b", re.IGNORECASE)


def parse_yes_no(text: str | None) -> bool | None:
    """True for an answer that starts with yes, False for no, None when it starts with neither.

    Tolerates case, leading quotes/markdown/punctuation, an 'Answer:' prefix, a <think> block before
    the answer and anything after the first word ('No: the mug is cut off.').
    """
    if not text:
        return None
    match = _YES_NO.match(_THINK.sub("", text).strip())
    if match is None:
        return None
    return match.group(1).lower() == "yes"


def build_fidelity_request(prompts: PromptBook, concepts: Sequence[Mapping], query_image: bytes) -> ChatRequest:
    """The visual-fidelity question: label + reference image per concept, then the query and question."""
    sections = prompts.sections(FIDELITY_PROMPT, FIDELITY_SECTIONS)
    parts: list[TextPart | ImagePart] = []
    for index, concept in enumerate(concepts, start=1):
        label = fill_section(sections["reference"], FIDELITY_PROMPT, "reference", index=index, name=concept["name"], category=concept["category"])
        parts += [TextPart(label), ImagePart(concept["image"])]
    parts.append(TextPart(fill_section(sections["query"], FIDELITY_PROMPT, "query", num_concepts=len(concepts))))
    query_index = sum(isinstance(p, ImagePart) for p in parts)
    parts.append(ImagePart(query_image))
    names = ", ".join(concept["name"] for concept in concepts)
    parts.append(TextPart(fill_section(sections["question"], FIDELITY_PROMPT, "question", num_concepts=len(concepts), names=names)))
    task = {
        "kind": "visual_fidelity",
        "concept_ids": [concept["concept_id"] for concept in concepts],
        "concept_names": [concept["name"] for concept in concepts],
        "query_image_index": query_index,
    }
    return ChatRequest(messages=(Message("user", tuple(parts)),), task=task)


# ---------------------------------------------------------------------------------------------------
# The stage


def filter_queries(
    queries_rows: Sequence[Mapping],
    concepts_rows: Sequence[Mapping],
    verifier: ChatModel | None,
    prompts: PromptBook,
    settings: FilterSettings,
    progress_file=None,
    first_row: int = 0,
) -> list[dict]:
    """One keep/drop decision per query row, in input order; rows fit `schemas.FILTER_DECISIONS`.

    Each decision depends on its own row only, so the queries may come in batches (the workflow
    streams them); `first_row` is the batch's position in the queries table, for messages.

    A query that names a concept missing from the pool, or a pool image that cannot be decoded, is an
    input error and raises (naming the row and field); everything wrong with a sample itself is a
    drop with a reason.
    """
    by_id = {row["concept_id"]: (index, row) for index, row in enumerate(concepts_rows)}
    checked_refs: set[str] = set()
    decisions: list[dict | None] = [None] * len(queries_rows)
    pending: list[tuple[int, list[Mapping], bytes]] = []
    for index, row in enumerate(queries_rows):
        concepts = _positives(row, first_row + index, by_id)
        for concept_id in {c["concept_id"] for c in concepts} - checked_refs:
            k, concept = by_id[concept_id]
            decode_image(concept["image"], f"concepts row {k} (concept_id={concept_id}) field 'image'")
            checked_refs.add(concept_id)
        problem = _consistency(row, first_row + index, concepts, settings)
        if problem is not None:
            decisions[index] = _decision(row, False, *problem, CHECKS)
        elif not settings.visual_fidelity:
            decisions[index] = _decision(row, True, "", "visual fidelity not checked (filtering.visual_fidelity is false)", CHECKS)
        else:
            pending.append((index, concepts, row["image"]))

    if pending:
        if verifier is None:
            raise FilterError("filtering.visual_fidelity is true but no verifier model was given")
        identity = getattr(verifier, "identity", type(verifier).__name__)
        concurrency = verifier.spec.concurrency
        requests = [(index, build_fidelity_request(prompts, concepts, image)) for index, concepts, image in pending]

        def ask(item):
            index, request = item
            return index, _judge(verifier, request)

        for index, (kept, reason, detail) in run_concurrently(ask, requests, concurrency=concurrency, desc="visual fidelity", file=progress_file):
            decisions[index] = _decision(queries_rows[index], kept, reason, detail, identity)
    return decisions  # type: ignore[return-value]


def summarize_decisions(decisions: Sequence[Mapping]) -> dict[str, int]:
    """Counts for a log or report: 'kept' plus one entry per drop reason."""
    counts = Counter(d["reason"] for d in decisions if not d["kept"])
    return {"kept": sum(bool(d["kept"]) for d in decisions), **dict(sorted(counts.items()))}


def _judge(verifier: ChatModel, request: ChatRequest) -> tuple[bool, str, str]:
    try:
        response = verifier.complete(request)
    except Exception as error:  # noqa: BLE001 - a backend that raises is recorded, never hidden
        return False, "verifier_error", f"{type(error).__name__}: {error}"
    if not response.ok:
        return False, "verifier_error", response.error or "verifier returned no text"
    verdict = parse_yes_no(response.text)
    if verdict is None:
        return False, "unparseable_verifier_answer", response.text
    return (True, "", response.text) if verdict else (False, "verifier_no", response.text)


def _positives(row: Mapping, index: int, by_id: Mapping) -> list[Mapping]:
    ids = list(row.get("positive_concept_ids") or [])
    for concept_id in ids:
        if concept_id not in by_id:
            raise FilterError(
                f"queries row {index} (sample_id={row.get('sample_id')}) field 'positive_concept_ids': "
                f"concept '{concept_id}' is not in the concept pool"
            )
    return [by_id[concept_id][1] for concept_id in ids]


def _consistency(row: Mapping, index: int, concepts: list[Mapping], settings: FilterSettings) -> tuple[str, str] | None:
    """The first instruction-consistency problem of a row as (reason, detail), or None."""
    where = f"queries row {index} (sample_id={row.get('sample_id')})"
    status = row.get("status")
    if status == "failed":
        return "generation_failed", row.get("error") or "generator failed without an error message"
    if status != "ok":
        return "bad_status", f"{where} field 'status': {status!r} is neither 'ok' nor 'failed'"
    ids = [c["concept_id"] for c in concepts]
    if not ids or len(ids) != row.get("num_positives"):
        return "positive_count_mismatch", f"{where}: num_positives={row.get('num_positives')} but {len(ids)} positive concept id(s)"
    if len(set(ids)) != len(ids):
        return "duplicate_concept", f"{where} field 'positive_concept_ids': {ids} repeats a concept"
    if settings.check_instruction_names:
        instruction = row.get("instruction") or ""
        missing = [f"{c['concept_id']} ({c['name']})" for c in concepts if c["name"] not in instruction]
        if missing:
            return "instruction_mismatch", f"{where} field 'instruction' does not name {', '.join(missing)}"
    try:
        image = decode_image(row.get("image"), f"{where} field 'image'", mode="L")
    except BadImageError as error:
        return "undecodable_image", str(error)
    width, height = image.size
    if min(width, height) < settings.min_image_side:
        return "image_too_small", f"{where}: image is {width}x{height}, shorter side below {settings.min_image_side}"
    if max(width, height) > settings.max_aspect_ratio * min(width, height):
        return "bad_aspect_ratio", f"{where}: image is {width}x{height}, more elongated than {settings.max_aspect_ratio}:1"
    spread = float(np.asarray(image, np.float32).std())
    if spread < settings.blank_std:
        return "blank_image", f"{where}: image is blank (grey-level std {spread:.2f} < {settings.blank_std})"
    return None


def _decision(row: Mapping, kept: bool, reason: str, detail: str, verifier: str) -> dict:
    return {"sample_id": row["sample_id"], "kept": kept, "reason": reason, "detail": detail or "", "verifier": verifier}
