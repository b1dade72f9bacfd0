"""Per-row scores of diagnostic responses: LSD by token-set F1 of the boxed place, ITR by keyword
presence, LAR by a judge's verdict. A row without a score (failed response, failed or unreadable
judging) keeps score None and says why; it is never a silent 0."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from covip.clients.base import ChatResponse
from covip.clients.cached import CachedChatModel
from covip.clients.spec import is_stand_in
from covip.core.metrics import keyword_present, token_set_f1
from covip.core.text import extract_boxed
from covip.prompts import PromptBook
from covip.protocol.judging import build_lar_judge_request, lar_judge_seed, parse_lar_verdict
from covip.stages.diagnostics.settings import SCORER, DiagnosticError


def _failure(response: ChatResponse, what: str) -> str:
    return f"{what}: {response.error or 'no text returned'}"


def score_diagnostics(
    response_rows: Sequence[Mapping],
    items: Sequence[Mapping],
    judge: CachedChatModel | None = None,
    prompts: PromptBook | None = None,
    progress_file=None,
) -> list[dict]:
    """Fill `score`, `extracted` and `scorer` of every response row (new dicts, input order).

    LSD: token-set F1 of the last boxed answer (no box: 0). ITR: 1/0 keyword presence. LAR: the judge's
    verdict (1 correct / 0 wrong); an unparseable verdict or a failed judge call leaves score None and
    says why in `error`. A failed response keeps score None. A LAR row's `stand_in` is also set when
    the judge is a stand-in, since its score then comes from one.
    """
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
            row["extracted"] = extract_boxed(row["response"])
            row["score"] = token_set_f1(row["extracted"], item["answer"])
        elif row["task"] == "itr":
            found = keyword_present(row["response"], item["answer"])
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
        requests.append(build_lar_judge_request(item["question"], item["answer"], row["response"], prompts, seed=seed))
    for index, verdict in zip(lar_pending, judge.complete_many(requests, desc="LAR judge", progress_file=progress_file)):
        row = rows[index]
        row["scorer"] = identity
        row["stand_in"] = bool(row["stand_in"]) or judge_stand_in
        if not verdict.ok:
            row["score"], row["extracted"] = None, None
            row["error"] = _failure(verdict, "judge failed")
            continue
        parsed = parse_lar_verdict(verdict.text)
        if parsed is None:
            row["score"], row["extracted"] = None, None
            row["error"] = f"judge answer unparseable: {verdict.text[:200]!r}"
        else:
            row["score"] = float(parsed)
            row["extracted"] = "correct" if parsed else "wrong"
    return rows
