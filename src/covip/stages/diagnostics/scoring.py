"""Per-row scores of diagnostic responses, as the authors score them (docs/protocol.md): LSD by token-set
F1 of the boxed place, ITR by keyword presence, LAR by a judge's verdict against the set's
`last_action` (else its answer). A failed response or a failed judge call leaves the row unscored
(score None, the reason in `error`), never a silent 0; an unreadable verdict scores 0, as the authors
count it, and says so in `error`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from covip.clients.base import ChatResponse
from covip.clients.cached import CachedChatModel
from covip.clients.spec import is_stand_in
from covip.core.metrics import keyword_found, lsd_prediction, lsd_score
from covip.prompts import PromptBook
from covip.protocol.judging import build_lar_judge_request, lar_judge_seed, read_lar_verdict
from covip.stages.diagnostics.settings import SCORER, DiagnosticError, DiagnosticSettings


def _failure(response: ChatResponse, what: str) -> str:
    return f"{what}: {response.error or 'no text returned'}"


def score_diagnostics(
    response_rows: Sequence[Mapping],
    items: Sequence[Mapping],
    judge: CachedChatModel | None = None,
    prompts: PromptBook | None = None,
    progress_file=None,
    settings: DiagnosticSettings | None = None,
) -> list[dict]:
    """Fill `score`, `extracted` and `scorer` of every response row (new dicts, input order).

    LSD: F1 of the boxed place (`settings.lsd_box`, `settings.lsd_tokens`; no box: 0). ITR: 1/0 keyword
    presence (`settings.itr_match`). LAR: the judge's verdict (`settings.lar_verdict`; 1 correct, 0
    wrong or unreadable); a failed judge call leaves score None and says why in `error`. A failed
    response keeps score None. A LAR row's `stand_in` is also set when the judge is a stand-in, since
    its score then comes from one.
    """
    settings = settings or DiagnosticSettings()
    by_key = {(item["task"], item["sample_id"]): item for item in items}
    rows = [dict(row) for row in response_rows]
    lar_pending: list[int] = []
    for index, row in enumerate(rows):
        item = by_key.get((row["task"], row["sample_id"]))
        if item is None:
            raise DiagnosticError(f"responses row {index} (sample_id={row['sample_id']}, task={row['task']}): no such item in the diagnostic set")
        row["scorer"] = SCORER[row["task"]]
        if row["status"] != "ok" or row.get("response") is None:
            row["score"], row["extracted"] = None, None
            continue
        if row["task"] == "lsd":
            row["extracted"] = lsd_prediction(row["response"], settings.lsd_box) or None
            row["score"] = lsd_score(row["extracted"], item["answer"], settings.lsd_tokens)
        elif row["task"] == "itr":
            found = keyword_found(row["response"], item["answer"], settings.itr_match)
            row["extracted"] = item["answer"] if found else None
            row["score"] = float(found)
        else:
            lar_pending.append(index)
    if not lar_pending:
        return rows
    if judge is None:
        raise DiagnosticError(f"diagnostics: {len(lar_pending)} LAR response(s) to score but no judge model was given")
    prompts = prompts or PromptBook()
    identity = judge.identity
    judge_stand_in = is_stand_in(judge)
    requests = []
    for index in lar_pending:
        row = rows[index]
        item = by_key[(row["task"], row["sample_id"])]
        seed = lar_judge_seed(row["policy"], row["mode"], row["sample_id"])
        reference = item.get("last_action") or item["answer"]  # the authors judge against last_action
        requests.append(build_lar_judge_request(item["question"], reference, row["response"], prompts, seed=seed))
    for index, verdict in zip(lar_pending, judge.complete_many(requests, desc="LAR judge", progress_file=progress_file)):
        row = rows[index]
        row["scorer"] = identity
        row["stand_in"] = bool(row["stand_in"]) or judge_stand_in
        if not verdict.ok:
            row["score"], row["extracted"] = None, None
            row["error"] = _failure(verdict, "judge failed")
            continue
        parsed = read_lar_verdict(verdict.text, settings.lar_verdict)
        if parsed is None:  # counted as wrong, as the authors count it, and said
            row["score"], row["extracted"] = 0.0, None
            row["error"] = f"judge verdict unreadable, scored wrong: {verdict.text[:200]!r}"
        else:
            row["score"] = float(parsed)
            row["extracted"] = "correct" if parsed else "wrong"
    return rows
