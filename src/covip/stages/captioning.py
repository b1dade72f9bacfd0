"""Stage 9: one personalized caption per test sample (of this job's shard), with one policy.

The request layout lives in `covip.protocol.requests` (shared with the diagnostics and the GSPO
records, so a policy is trained and scored on the same prompt; `layout` picks the authors' training
numbering or their test notebook's, docs/protocol.md). The caption is greedy, up to 1024 tokens, by
default, as in the authors' code.
A call that failed is a row with status 'failed' and the error, never an empty caption. A caption cut off
at the token cap (finish_reason "length") is a row with status 'truncated': its text is kept for
inspection, but CapEval does not judge it and counts it with the failed captions (`n_caption_failed`,
so the report shows it), because a half caption scored as a whole one is a silent bias
(`capeval.truncated_captions: judge` scores it as written, as the authors' notebook does). It does not
count towards `max_failure_rate`: the model answered, and the guard stops a job only for calls that
failed (an endpoint down), which a rerun can repair.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from covip.clients.base import ChatResponse
from covip.clients.cached import CachedChatModel
from covip.clients.spec import is_stand_in
from covip.core.reliability import FailureReport, failure_report
from covip.core.seeding import derive_seed
from covip.core.presets import resolve, switch_help
from covip.core.settings import ModelStageSettings
from covip.core.sharding import Shard
from covip.core.text import strip_think
from covip.prompts import PromptBook
from covip.protocol.requests import GREEDY, LAYOUTS, RequestError, build_caption_request


@dataclass
class CaptioningSettings(ModelStageSettings):
    """Settings of stage 9 (config section `captioning`)."""

    section = "captioning"

    max_samples: int | None = field(default=None, metadata={"help": "Caption only the first N rows of the split, in file order (null: all); for quick runs."})
    chunk_size: int = field(default=256, metadata={"help": "Split rows read and sent to the model at a time: bounds the images held in memory; a batching backend (vLLM) batches within a chunk."})
    sampling: dict[str, Any] | None = field(default=None, metadata={"help": "Sampling of the caption request (null: greedy, {'temperature': 0.0}, as in the authors' code)."})
    max_tokens: int | None = field(default=1024, metadata={"help": "Longest caption in tokens, sent as sampling 'max_tokens' unless `sampling` sets it (the authors' captioning limit is 1024; null: the backend's default)."})
    strip_thinking: bool | None = field(default=None, metadata={"help": switch_help("captioning", "strip_thinking", "Remove <think>...</think> blocks from the model's reply before storing the caption (reasoning models); the authors keep the reply as it is.")})
    layout: str | None = field(default=None, metadata={"enum": [*LAYOUTS, None], "help": switch_help("captioning", "layout", "The caption prompt's layout: 'training' (dialogues numbered from 1, a blank line after each, as the authors train and run the diagnostics) or 'test_notebook' (numbered from 0, no blank line, as the authors' test-set captioning notebook).")})

    def __post_init__(self):
        super().__post_init__()
        self.strip_thinking = resolve(self.strip_thinking, "captioning", "strip_thinking")
        self.layout = resolve(self.layout, "captioning", "layout")
        if self.layout not in LAYOUTS:
            raise ValueError(f"captioning.layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        if self.chunk_size < 1:
            raise ValueError(f"captioning.chunk_size must be >= 1, got {self.chunk_size}")
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"captioning.max_samples must be >= 1 or null, got {self.max_samples}")
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
# The stage


def caption_samples(
    split_rows: Iterable[Mapping],
    policy_name: str,
    model: CachedChatModel,
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
    `model.complete_many` (cache, batching, concurrency). A failed call gives a row with status 'failed', caption None and the
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
    identity = model.identity
    stand_in = is_stand_in(model)
    seen: dict[str, int] = {}
    captions: list[dict] = []
    while chunk := list(islice(positioned, settings.chunk_size)):
        requests = []
        for index, row in chunk:
            sample_id = str(row.get("sample_id"))
            if sample_id in seen:
                raise RequestError(f"{where} row {index} field 'sample_id': '{sample_id}' repeats row {seen[sample_id]}")
            seen[sample_id] = index
            requests.append(build_caption_request(
                row, prompts, sampling=sampling, seed=derive_seed(seed, "caption", row.get("sample_id")),
                where=f"{where} row {index}", layout=settings.layout))
        responses = model.complete_many(requests, desc=f"captions {policy_name}", progress_file=progress_file,
                                        concurrency=settings.concurrency)
        captions += [
            _caption_row(policy_name, str(row.get("sample_id")), response, identity, stand_in, settings.strip_thinking)
            for (_, row), response in zip(chunk, responses)
        ]
    return captions


def clean_caption(text: str, strip_thinking: bool = True) -> str:
    """The caption as stored: reasoning blocks removed (when asked) and outer whitespace stripped."""
    return (strip_think(text) if strip_thinking else text).strip()


def _caption_row(policy: str, sample_id: str, response: ChatResponse, identity: str, stand_in: bool, strip: bool) -> dict:
    ok = response.ok
    usage = response.usage
    cut = ok and response.truncated
    return {
        "policy": policy,
        "sample_id": sample_id,
        "caption": clean_caption(response.text, strip) if ok else None,
        "prompt_tokens": int(usage.prompt_tokens) if usage else None,
        "completion_tokens": int(usage.completion_tokens) if usage else None,
        "latency_s": float(response.latency_s),
        "model_identity": identity,
        "stand_in": stand_in,
        "status": "truncated" if cut else "ok" if ok else "failed",
        "error": TRUNCATED_REASON if cut else None if ok else (response.error or "the model returned no text"),
    }


TRUNCATED_REASON = "cut off at the token cap (finish_reason 'length')"


def caption_failures(rows: list[dict]) -> FailureReport:
    """Failed caption calls among all rows (see `CaptioningSettings.max_failure_rate`)."""
    return failure_report(rows, "captions", failed=lambda row: row["status"] == "failed", reason=lambda row: row.get("error"))

