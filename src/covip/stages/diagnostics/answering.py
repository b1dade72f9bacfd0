"""A policy's responses to a diagnostic set: asked directly, or after its own caption (CAG).

As the authors' downstream scripts: `direct` is one user turn with, per context entry, a header, the
image and the dialogue, then a header, the query image and the question, with the personalization
instruction as a system message for LAR and ITR (none for LSD). `cag` captions every item first
(greedy, the caption instruction last in the user turn), then asks with a system message (the caption
instruction for LSD, the personalization instruction for LAR and ITR), the context and query, the
caption as the assistant's turn and the question. The request layouts live in
`covip.protocol.requests`. A failed call is a row with status 'failed' and the error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from covip.clients.base import ChatResponse
from covip.clients.cached import CachedChatModel
from covip.clients.spec import is_stand_in
from covip.core.reliability import FailureReport, failure_report
from covip.core.seeding import derive_seed
from covip.prompts import PromptBook
from covip.protocol.requests import (
    build_cag_request,
    build_caption_request,
    build_direct_request,
    diagnostic_as_split_row,
    diagnostic_system,
    diagnostic_truth,
)
from covip.stages.diagnostics.scoring import score_diagnostics
from covip.stages.diagnostics.settings import MODES, SCORER, DiagnosticError, DiagnosticSettings


def _answer_seed(seed: int, item: Mapping, mode: str) -> int:
    return derive_seed(seed, "diagnostics-answer", item["task"], item["sample_id"], mode) % (2**31)


def _failure(response: ChatResponse, what: str) -> str:
    return f"{what}: {response.error or 'no text returned'}"


def answer_diagnostics(
    items: Sequence[Mapping],
    policy_name: str,
    model: CachedChatModel,
    prompts: PromptBook,
    settings: DiagnosticSettings,
    seed: int,
    mode: str,
    progress_file=None,
) -> list[dict]:
    """The policy's response to every item; rows of schemas.DIAGNOSTIC_RESPONSES, not scored yet.

    `mode='direct'` asks the question over the interleaved context; `mode='cag'` captions each item
    first (greedy) and asks the question with the caption as the assistant's previous turn. A failed
    call gives a row with status 'failed' and the error; it never stops the stage.
    """
    if mode not in MODES:
        raise DiagnosticError(f"diagnostics: unknown mode {mode!r}; choose from {list(MODES)}")
    identity = model.identity
    stand_in = is_stand_in(model)
    items = list(items)
    captions: list[str | None] = [None] * len(items)
    errors: list[str | None] = [None] * len(items)
    responses: list[ChatResponse | None] = [None] * len(items)

    if mode == "direct":
        requests = [build_direct_request(item, prompts, sampling=settings.answer_sampling, seed=_answer_seed(seed, item, "direct"))
                    for item in items]
        for k, response in enumerate(model.complete_many(requests, desc=f"{policy_name} diagnostics direct",
                                                         progress_file=progress_file, concurrency=settings.concurrency)):
            responses[k] = response
    else:
        caption_requests = [
            build_caption_request(diagnostic_as_split_row(item), prompts, sampling=dict(settings.caption_sampling),
                                  seed=_answer_seed(seed, item, "caption"), where=f"diagnostic set {item['task']}")
            for item in items
        ]
        caption_responses = model.complete_many(caption_requests, desc=f"{policy_name} diagnostics captions",
                                                progress_file=progress_file, concurrency=settings.concurrency)
        pending, answer_requests = [], []
        for k, (item, request, response) in enumerate(zip(items, caption_requests, caption_responses)):
            if not response.ok:
                errors[k] = _failure(response, "caption failed")
                continue
            captions[k] = response.text
            answer_requests.append(build_cag_request(
                request, response.text, item["question"], system=diagnostic_system(item["task"], "cag", prompts),
                sampling=dict(settings.answer_sampling), seed=_answer_seed(seed, item, "cag"), prompts=prompts,
                task_extra={"diagnostic_task": item["task"], **diagnostic_truth(item)},
            ))
            pending.append(k)
        answered = model.complete_many(answer_requests, desc=f"{policy_name} diagnostics CAG answers",
                                       progress_file=progress_file, concurrency=settings.concurrency)
        for k, response in zip(pending, answered):
            responses[k] = response

    rows = []
    for k, item in enumerate(items):
        response = responses[k]
        if response is not None and not response.ok:
            errors[k] = _failure(response, "answer failed")
        ok = errors[k] is None
        rows.append({
            "policy": policy_name,
            "task": item["task"],
            "mode": mode,
            "sample_id": item["sample_id"],
            "caption": captions[k],
            "response": response.text if ok else None,
            "extracted": None,
            "score": None,
            "scorer": SCORER[item["task"]],
            "model_identity": identity,
            "stand_in": stand_in,
            "status": "ok" if ok else "failed",
            "error": errors[k],
        })
    return rows


def response_failures(rows: list[dict]) -> FailureReport:
    """Failed model calls among a diagnose job's rows (see `DiagnosticSettings.max_failure_rate`). An
    answer without a readable answer is not a failure: it is scored (that is what LSD measures)."""
    return failure_report(rows, "diagnostic responses", reason=lambda row: row.get("error"))


@dataclass
class DiagnosticRun:
    """What one policy gave on every (task, mode): scored rows, and the failure summary of each."""

    rows: dict[tuple[str, str], list[dict]]
    failures: dict[tuple[str, str], FailureReport]


def diagnose_policy(sets: Mapping[str, Sequence[Mapping]], modes: Sequence[str], policy_name: str,
                    model: CachedChatModel, judge: CachedChatModel | None, prompts: PromptBook,
                    settings: DiagnosticSettings, seed: int, progress_file=None) -> DiagnosticRun:
    """Answer and score every set (task -> items) in every mode with one model: an in-process model
    is loaded once for the lot. The LAR judge is needed only when a 'lar' set is given."""
    result = DiagnosticRun({}, {})
    for task, items in sets.items():
        for mode in modes:
            rows = answer_diagnostics(items, policy_name, model, prompts, settings, seed, mode, progress_file=progress_file)
            rows = score_diagnostics(rows, items, judge=judge if task == "lar" else None, prompts=prompts,
                                     progress_file=progress_file, settings=settings)
            result.rows[(task, mode)] = rows
            result.failures[(task, mode)] = response_failures(rows)
    return result
