"""Stage 9: one personalized caption per test sample, and the caption-augmented generation turn.

Prompt layout (SPEC section 2, from the authors' code), all in ONE user turn:

    for every context concept k, in context order:
        [[context]] header for memory k   (text)
        the concept's reference image      (image)
        the dialogue about it              (text)
    [[query]] header for the new image     (text)
    the query image                        (image)
    [[instruction]] the captioning request (text)

Every word of it lives in the sectioned prompt file `caption.txt`; this module only places the
sections, images and dialogues. The caption is greedy by default (`{'temperature': 0.0}`).

Caption-augmented generation (CAG, SPEC section 4): the caption request's messages, then the caption
as the assistant's previous turn, then a new user turn with the downstream question (rendered from
the `[[cag_question]]` section), sampled as in the authors' code (temperature 0.7, top-p 0.8,
top-k 20, presence penalty 1.5).

`ChatRequest.task` carries the structured facts the prompt was built from (kind 'caption' or
'cag_answer'); production backends ignore it, the reference policies
(`covip.local.reference_policies`) answer from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from PIL import Image

from covip.clients.base import ChatModel, ChatRequest, ChatResponse, ImagePart, Message, TextPart
from covip.clients.registry import run_concurrently, is_stand_in
from covip.io import decode_image
from covip.prompts import PromptBook, fill_section
from covip.seeding import derive_seed
from covip.sharding import Shard
from covip.reliability import FailureReport, failure_report, validate_max_failure_rate

CAPTION_PROMPT = "caption"
CAPTION_SECTIONS = ("context", "query", "instruction", "cag_question")

GREEDY = {"temperature": 0.0}
# The CAG answer's sampling in the authors' code (SPEC section 4); the caption itself stays greedy.
CAG_SAMPLING = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5}

_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.IGNORECASE | re.DOTALL)


class CaptioningError(ValueError):
    """A split row that cannot be turned into a caption prompt; the message names row and field."""


@dataclass
class CaptioningSettings:
    """Settings of stage 9 (config section `captioning`)."""

    max_samples: int | None = field(default=None, metadata={"help": "Caption only the first N rows of the split, in file order (null: all); for quick runs."})
    chunk_size: int = field(default=256, metadata={"help": "Split rows read and sent to the model at a time: bounds the images held in memory; a batching backend (vLLM) batches within a chunk."})
    concurrency: int | None = field(default=None, metadata={"help": "Parallel requests for backends that do not batch (null: the model's registry `concurrency`)."})
    sampling: dict[str, Any] | None = field(default=None, metadata={"help": "Sampling of the caption request (null: greedy, {'temperature': 0.0}, as in the authors' code)."})
    max_tokens: int | None = field(default=512, metadata={"help": "Longest caption in tokens, sent as sampling 'max_tokens' unless `sampling` sets it (the authors' limit is 512; null: the backend's default)."})
    strip_thinking: bool = field(default=True, metadata={"help": "Remove <think>...</think> blocks from the model's reply before storing the caption (reasoning models)."})
    max_failure_rate: float = field(
        default=0.2,
        metadata={"help": "The stage fails (writes nothing, prints a summary) when more than this share of its model "
                          "calls failed after the client's retries; finished calls stay cached, so a rerun repeats none."},
    )

    def __post_init__(self):
        validate_max_failure_rate(self.max_failure_rate, "captioning")
        if self.chunk_size < 1:
            raise ValueError(f"captioning.chunk_size must be >= 1, got {self.chunk_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"captioning.max_samples must be >= 1 or null, got {self.max_samples}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"captioning.concurrency must be >= 1 or null, got {self.concurrency}")
        if self.sampling is not None and not isinstance(self.sampling, dict):
            raise ValueError(f"captioning.sampling must be a mapping or null, got {type(self.sampling).__name__}")
        if self.max_tokens is not None and not 1 <= self.max_tokens <= 32768:
            raise ValueError(f"captioning.max_tokens must be in [1, 32768] or null, got {self.max_tokens}")

    def request_sampling(self) -> dict[str, Any]:
        """The sampling every caption request carries: `sampling` (or greedy) plus `max_tokens`."""
        sampling = dict(self.sampling) if self.sampling is not None else dict(GREEDY)
        if self.max_tokens is not None:
            sampling.setdefault("max_tokens", self.max_tokens)
        return sampling


# ---------------------------------------------------------------------------------------------------
# Prompt building


def build_caption_request(
    sample_row: Mapping,
    prompts: PromptBook,
    *,
    sampling: dict[str, Any] | None = None,
    seed: int | None = None,
    where: str = "split row",
) -> ChatRequest:
    """The captioning request for one split-style row (SPEC section 2 layout, one user turn).

    `sample_row` needs sample_id, context_images ({'bytes','path'} dicts; an empty list places the
    dialogues without images, the text-only control), context_dialogues,
    query_image, and may carry context_names, context_categories, context_facts (JSON text) and
    positive_indices (empty for rows, such as diagnostic items, that lack them). `where` prefixes
    error messages (e.g. "results/splits/test.parquet row 3"). Greedy unless `sampling` is given.
    """
    sample_id = str(sample_row.get("sample_id", "?"))
    here = f"{where} (sample_id={sample_id})"
    images = _as_list(sample_row.get("context_images"))
    dialogues = [str(d) for d in _as_list(sample_row.get("context_dialogues"))]
    # No context images at all is the text-only control (covip.stages.controls): dialogues alone.
    if images and len(images) != len(dialogues):
        raise CaptioningError(
            f"{here} fields 'context_images' and 'context_dialogues': {len(images)} images but {len(dialogues)} dialogues"
        )
    n = len(dialogues)
    names = [str(x) for x in _as_list(sample_row.get("context_names"))]
    categories = [str(x) for x in _as_list(sample_row.get("context_categories"))]
    for column, values in (("context_names", names), ("context_categories", categories)):
        if values and len(values) != n:
            raise CaptioningError(f"{here} field '{column}': {len(values)} entries for {n} context concepts")
    facts = _parse_facts(sample_row.get("context_facts"), n, here)
    positives = [int(i) for i in _as_list(sample_row.get("positive_indices"))]
    bad = [i for i in positives if not 0 <= i < n]
    if bad:
        raise CaptioningError(f"{here} field 'positive_indices': {bad} out of range for {n} context concepts")

    sections = prompts.sections(CAPTION_PROMPT, CAPTION_SECTIONS)
    parts: list[TextPart | ImagePart] = []
    for k, dialogue in enumerate(dialogues):
        header = fill_section(sections["context"], CAPTION_PROMPT, "context", index=k + 1, num_contexts=n)
        image = [_image_part(images[k], f"{here} field 'context_images'[{k}]")] if images else []
        parts += [TextPart(header), *image, TextPart(dialogue)]
    parts.append(TextPart(fill_section(sections["query"], CAPTION_PROMPT, "query", num_contexts=n)))
    parts.append(_image_part(sample_row.get("query_image"), f"{here} field 'query_image'"))
    parts.append(TextPart(fill_section(sections["instruction"], CAPTION_PROMPT, "instruction", num_contexts=n)))
    task = {
        "kind": "caption",
        "sample_id": sample_id,
        "context_names": names,
        "context_categories": categories,
        "context_dialogues": dialogues,
        "context_facts": facts,
        "positive_indices": positives,
    }
    return ChatRequest(
        messages=(Message("user", tuple(parts)),),
        sampling=dict(GREEDY) if sampling is None else dict(sampling),
        task=task,
        seed=seed,
    )


def build_cag_request(
    caption_request: ChatRequest,
    caption: str,
    question: str,
    *,
    sampling: dict[str, Any] | None = None,
    seed: int | None = None,
    prompts: PromptBook | None = None,
    task_extra: Mapping[str, Any] | None = None,
) -> ChatRequest:
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
        sampling=dict(CAG_SAMPLING) if sampling is None else dict(sampling),
        task=task,
        seed=caption_request.seed if seed is None else seed,
    )


# ---------------------------------------------------------------------------------------------------
# The stage


def caption_samples(
    split_rows: Iterable[Mapping],
    policy_name: str,
    model: ChatModel,
    prompts: PromptBook,
    settings: CaptioningSettings,
    seed: int,
    progress_file=None,
    where: str = "split",
    shard: Shard | None = None,
) -> list[dict]:
    """One row of `schemas.CAPTIONS` per split row (the first `settings.max_samples`, then those of
    `shard`), in input order.

    `split_rows` may be a lazy iterable (a streamed split): rows are read and captioned
    `settings.chunk_size` at a time, so only one chunk's images are held at once. Each chunk goes to
    `model.complete_many` (cache, batching, concurrency) when the model has it, else `model.complete`
    with bounded concurrency. A failed call gives a row with status 'failed', caption None and the
    error text, never a silent drop. Each request's seed is derived from the run seed and the sample
    id, so a sampled policy reproduces per sample whatever the order, chunking or sharding.
    """
    positioned: Iterable[tuple[int, Mapping]] = enumerate(split_rows)
    if settings.max_samples:
        positioned = islice(positioned, settings.max_samples)  # the first N of the split, before sharding
    if shard is not None:
        positioned = (
            (index, row) for index, row in positioned if shard.holds(row.get("sample_id"), f"{where} row {index}: ")
        )
    sampling = settings.request_sampling()
    identity = getattr(model, "identity", type(model).__name__)
    stand_in = is_stand_in(model)
    seen: dict[str, int] = {}
    captions: list[dict] = []
    while chunk := list(islice(positioned, settings.chunk_size)):
        requests = []
        for index, row in chunk:
            sample_id = str(row.get("sample_id"))
            if sample_id in seen:
                raise CaptioningError(f"{where} row {index} field 'sample_id': '{sample_id}' repeats row {seen[sample_id]}")
            seen[sample_id] = index
            requests.append(build_caption_request(
                row, prompts, sampling=sampling, seed=derive_seed(seed, "caption", row.get("sample_id")),
                where=f"{where} row {index}"))
        responses = _complete_all(model, requests, settings.concurrency, f"captions {policy_name}", progress_file)
        captions += [
            _caption_row(policy_name, str(row.get("sample_id")), response, identity, stand_in, settings.strip_thinking)
            for (_, row), response in zip(chunk, responses)
        ]
    return captions


def _complete_all(model, requests, concurrency, desc, progress_file) -> list[ChatResponse]:
    many = getattr(model, "complete_many", None)
    if many is not None:
        return many(requests, desc=desc, progress_file=progress_file, concurrency=concurrency)
    workers = concurrency or int(getattr(getattr(model, "spec", None), "concurrency", 1) or 1)

    def ask(request: ChatRequest) -> ChatResponse:
        try:
            return model.complete(request)
        except Exception as error:  # noqa: BLE001 - a backend that raises is recorded on the row
            return ChatResponse(None, getattr(model, "identity", "?"), error=f"{type(error).__name__}: {error}")

    return list(run_concurrently(ask, requests, concurrency=workers, desc=desc, file=progress_file))


def clean_caption(text: str, strip_thinking: bool = True) -> str:
    """The caption as stored: reasoning blocks removed (when asked) and outer whitespace stripped."""
    return (_THINK.sub("", text) if strip_thinking else text).strip()


def _caption_row(policy: str, sample_id: str, response: ChatResponse, identity: str, stand_in: bool, strip: bool) -> dict:
    ok = response.ok
    usage = response.usage
    return {
        "policy": policy,
        "sample_id": sample_id,
        "caption": clean_caption(response.text, strip) if ok else None,
        "prompt_tokens": int(usage.prompt_tokens) if usage else None,
        "completion_tokens": int(usage.completion_tokens) if usage else None,
        "latency_s": float(response.latency_s),
        "model_identity": identity,
        "stand_in": stand_in,
        "status": "ok" if ok else "failed",
        "error": None if ok else (response.error or "the model returned no text"),
    }


# ---------------------------------------------------------------------------------------------------
# Row helpers


def _as_list(value) -> list:
    # Split rows come from pyarrow (lists) or pandas (numpy arrays); absent means empty.
    if value is None:
        return []
    return list(value)


def _parse_facts(value, n: int, here: str) -> list[list[dict]]:
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            facts = json.loads(value)
        except json.JSONDecodeError as error:
            raise CaptioningError(f"{here} field 'context_facts': not valid JSON ({error})") from error
    else:
        facts = value
    if not isinstance(facts, list) or (facts and len(facts) != n):
        size = len(facts) if isinstance(facts, list) else type(facts).__name__
        raise CaptioningError(f"{here} field 'context_facts': expected a JSON list with one entry per context concept ({n}), got {size}")
    out = []
    for k, entry in enumerate(facts):
        if not isinstance(entry, list) or not all(isinstance(f, Mapping) and "text" in f for f in entry):
            raise CaptioningError(f"{here} field 'context_facts'[{k}]: expected a list of {{'kind', 'text'}} objects")
        out.append([{"kind": str(f.get("kind", "")), "text": str(f["text"])} for f in entry])
    return out


def _image_part(image, where: str) -> ImagePart:
    # Hugging Face image structs hold bytes, or a path when the bytes were not embedded.
    data = None
    if isinstance(image, Mapping):
        data = image.get("bytes")
        if not data and image.get("path"):
            path = Path(image["path"])
            if not path.is_file():
                raise CaptioningError(f"{where}: no image bytes and the path {path} does not exist")
            data = path.read_bytes()
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    decoded = decode_image(data, where)  # raises BadImageError naming `where`
    return ImagePart(bytes(data), Image.MIME.get(decoded.format or "", "image/png"))


def caption_failures(rows: list[dict]) -> FailureReport:
    """Failed caption calls among all rows (see `CaptioningSettings.max_failure_rate`)."""
    return failure_report(rows, "captions", reason=lambda row: row.get("error"))

