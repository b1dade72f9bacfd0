"""Stage 11, answering and scoring (covip.stages.diagnostics.answering, .scoring, .summary): direct and
CAG responses, per-row scores, the summary, and the whole path with the offline backends. The sets
themselves are tested in test_diagnostic_sets.py, the request layouts in tests/protocol/test_requests.py."""

from __future__ import annotations

import io

import pytest

from covip.clients.base import Usage
from covip.clients.registry import ModelRegistry
from covip.core import schemas
from covip.core.io import to_table
from covip.core.metrics import whitespace_f1
from covip.core.names import DIAGNOSTIC_MODES, DIAGNOSTIC_TASKS
from covip.stages.diagnostics.answering import answer_diagnostics, response_failures
from covip.stages.diagnostics.scoring import score_diagnostics
from covip.stages.diagnostics.settings import DiagnosticError, DiagnosticSettings
from covip.stages.diagnostics.summary import summarize_diagnostics
from support.fakes import scripted

QUIET = io.StringIO()


@pytest.fixture(scope="module")
def sets(diagnostic_sets):
    return diagnostic_sets


# ---------------------------------------------------------------------------------------------------
# Answering with a scripted model


def scripted_policy(reply):
    """(the model a stage takes, the fake that records what it was asked); `reply(request)` gives the text,
    None for a failed call, or an exception to raise."""
    return scripted(reply, error="server said no", usage=lambda text: Usage(10, len(text.split())))


def test_answer_direct_rows_and_failures(sets, prompts):
    items = sets["lsd"][:3]
    bad = items[1]["sample_id"]

    def reply(request):
        if request.task["sample_id"] == bad:
            return RuntimeError("connection reset")
        return rf"I think \boxed{{{sets['lsd'][0]['answer']}}}"

    model, fake = scripted_policy(reply)
    rows = answer_diagnostics(items, "scripted", model, prompts, DiagnosticSettings(), seed=0, mode="direct", progress_file=QUIET)
    to_table(rows, schemas.DIAGNOSTIC_RESPONSES, "responses")
    # The answers are sampled as the settings say (SPEC §4), capped at 1024 tokens as the authors.
    assert all(r.sampling == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5, "max_tokens": 1024}
               for r in fake.requests)
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "connection reset" in rows[1]["error"] and rows[1]["response"] is None
    assert all(r["score"] is None and r["scorer"] == "token_f1" and r["caption"] is None for r in rows)
    assert all(r["model_identity"] == "scripted:test" and r["stand_in"] is False for r in rows)

    scored = score_diagnostics(rows, items)
    assert scored[0]["score"] == 1.0 and scored[0]["extracted"] == items[0]["answer"]
    assert scored[1]["score"] is None
    assert scored[2]["score"] == pytest.approx(whitespace_f1(items[0]["answer"], items[2]["answer"]))
    # One failed call in three; a reply without a readable answer would not count (it is scored).
    report = response_failures(scored)
    assert (report.failed, report.total) == (1, 3)
    assert "connection reset" in next(iter(report.reasons))


def test_direct_and_cag_answers_carry_a_seed_per_item_and_mode(sets, prompts):
    """A sampled policy draws each item's answer from its own seed (run seed, task, sample, mode): the
    same whatever the order of the items, different between items, modes and runs."""
    items = [item for task in DIAGNOSTIC_TASKS for item in sets[task][:2]]

    def seeds(mode, order, seed=0):
        model, fake = scripted_policy(lambda request: "A reply.")
        answer_diagnostics(order, "p", model, prompts, DiagnosticSettings(), seed=seed, mode=mode, progress_file=QUIET)
        return {(r.task["kind"], r.task["sample_id"]): r.seed for r in fake.requests}

    direct = seeds("direct", items)
    assert len(direct) == len(items) and len(set(direct.values())) == len(items)
    assert seeds("direct", list(reversed(items))) == direct
    assert set(seeds("direct", items, seed=1).values()).isdisjoint(direct.values())
    cag = seeds("cag", items)
    assert len(set(cag.values())) == 2 * len(items)  # one caption and one answer seed per item
    assert set(cag.values()).isdisjoint(direct.values())
    assert all(0 <= s < 2**31 for s in (*direct.values(), *cag.values()))


def test_answer_cag_message_structure(sets, prompts):
    items = sets["itr"][:3]
    no_caption = items[2]["sample_id"]

    def reply(request):
        if request.task["kind"] == "caption":
            return None if request.task["sample_id"] == no_caption else f"A photo of someone ({request.task['sample_id']})."
        return f"I see a person. Reminder: {next(i['answer'] for i in items if i['sample_id'] == request.task['sample_id'])}"

    model, fake = scripted_policy(reply)
    rows = answer_diagnostics(items, "scripted", model, prompts, DiagnosticSettings(), seed=0, mode="cag", progress_file=QUIET)
    to_table(rows, schemas.DIAGNOSTIC_RESPONSES, "cag responses")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[2]["error"].startswith("caption failed") and rows[2]["response"] is None
    assert rows[0]["caption"] == f"A photo of someone ({items[0]['sample_id']})."
    captions = [r for r in fake.requests if r.task["kind"] == "caption"]
    answers = [r for r in fake.requests if r.task["kind"] == "cag_answer"]
    assert len(captions) == 3 and len(answers) == 2  # no answer without a caption
    assert all(r.sampling["temperature"] == 0.0 for r in captions)  # greedy caption
    first = answers[0]
    # The authors' CAG layout for ITR: the personalization instruction as the system message, the context
    # and query without the caption instruction, the caption, then the question.
    assert [m.role for m in first.messages] == ["system", "user", "assistant", "user"]
    assert first.messages[0].text == prompts.render_section("diagnostic_questions", "personalization")
    assert first.messages[2].text == rows[0]["caption"]
    assert items[0]["question"] in first.messages[3].text
    assert len(first.messages[1].images) == len(items[0]["images_context"]) + 1
    assert first.messages[1].images[-1].data == items[0]["query_image"]["bytes"]
    assert prompts.render_section("caption", "instruction") not in first.messages[1].text
    assert first.sampling["temperature"] == 0.7 and first.sampling["presence_penalty"] == 1.5
    assert first.task["diagnostic_task"] == "itr" and first.task["positive_indices"] == [items[0]["target_index"]]
    assert first.task["answer"] == items[0]["answer"]  # the truth, for the reference policies only

    scored = score_diagnostics(rows, items)
    assert [r["score"] for r in scored] == [1.0, 1.0, None]
    assert scored[0]["extracted"] == items[0]["answer"]


def test_lar_scoring_with_a_scripted_judge(sets, prompts):
    items = sets["lar"][:4]
    rows = [
        {"policy": "p", "task": "lar", "mode": "direct", "sample_id": item["sample_id"], "caption": None,
         "response": f"You had to {item['answer']}.", "extracted": None, "score": None, "scorer": "lar_judge",
         "model_identity": "m", "stand_in": False, "status": "ok", "error": None}
        for item in items
    ]
    verdicts = iter(["Correct.", "**wrong**", "hmm, hard to say", None])
    judge, fake = scripted_policy(lambda request: next(verdicts))
    scored = score_diagnostics(rows, items, judge=judge, prompts=prompts)
    # An unreadable verdict is wrong, as the authors count it (and said); a failed judge call is unscored.
    assert [r["score"] for r in scored] == [1.0, 0.0, 0.0, None]
    assert [r["extracted"] for r in scored] == ["correct", "wrong", None, None]
    assert "unreadable, scored wrong" in scored[2]["error"] and "judge failed" in scored[3]["error"]
    assert all(r["scorer"] == "scripted:test" for r in scored)
    request = fake.requests[0]
    # The reference is the set's last_action, the user's own words, as the authors' judge sees it.
    assert items[0]["last_action"] and items[0]["answer"] in items[0]["last_action"]
    assert request.task == {"kind": "lar_judge", "question": items[0]["question"], "reference": items[0]["last_action"],
                            "response": rows[0]["response"]}
    text = request.messages[0].text
    assert f'The user said "{items[0]["last_action"]}"' in text and rows[0]["response"] in text
    assert items[0]["question"] in text
    with pytest.raises(DiagnosticError, match="no judge"):
        score_diagnostics(rows, items)
    with pytest.raises(DiagnosticError, match="no such item"):
        score_diagnostics(rows, sets["lsd"])


def test_summary_in_percent_with_failures_counted():
    def row(score, policy="p", mode="direct"):
        return {"policy": policy, "task": "lsd", "mode": mode, "sample_id": "x", "caption": None, "response": "r",
                "extracted": None, "score": score, "scorer": "token_f1", "model_identity": "m", "stand_in": policy == "ref",
                "status": "ok" if score is not None else "failed", "error": None}

    rows = [row(1.0), row(0.5), row(0.0), row(None), row(1.0, mode="cag"), row(0.0, policy="ref")]
    summary = summarize_diagnostics(rows, n_bootstrap=200, seed=1)
    to_table(summary, schemas.DIAGNOSTIC_SUMMARY, "summary")
    by = {(s["policy"], s["mode"]): s for s in summary}
    direct = by[("p", "direct")]
    assert direct["score"] == pytest.approx(50.0) and direct["n"] == 3 and direct["n_failed"] == 1
    assert 0.0 <= direct["score_low"] <= 50.0 <= direct["score_high"] <= 100.0
    assert by[("p", "cag")]["score"] == 100.0 and by[("ref", "direct")]["stand_in"] is True
    assert summarize_diagnostics(rows, n_bootstrap=200, seed=1) == summary
    only_failed = summarize_diagnostics([row(None)], n_bootstrap=10)
    assert only_failed[0]["score"] is None and only_failed[0]["n_failed"] == 1


# ---------------------------------------------------------------------------------------------------
# End to end with the offline backends (reference policies + local lexical judge)


def test_end_to_end_with_reference_policies_and_lexical_judge(sets, prompts):
    registry = ModelRegistry({
        "oracle": {"backend": "reference_oracle"},
        "blind": {"backend": "reference_blind"},
        "judge": {"backend": "local_lexical_judge"},
    })
    settings = DiagnosticSettings()
    items = [item for task in DIAGNOSTIC_TASKS for item in sets[task][:3]]
    all_rows = []
    for policy in ("oracle", "blind"):
        for mode in DIAGNOSTIC_MODES:
            rows = answer_diagnostics(items, policy, registry.chat(policy), prompts, settings, seed=0, mode=mode, progress_file=QUIET)
            all_rows += score_diagnostics(rows, items, judge=registry.chat("judge"), prompts=prompts, progress_file=QUIET)
    to_table(all_rows, schemas.DIAGNOSTIC_RESPONSES, "e2e responses")
    assert all(r["status"] == "ok" and r["stand_in"] for r in all_rows)
    lar = [r for r in all_rows if r["task"] == "lar"]
    assert lar and all(r["scorer"] == "judge:local_lexical_judge" and r["extracted"] in ("correct", "wrong") for r in lar)
    summary = summarize_diagnostics(all_rows, n_bootstrap=50, seed=0)
    assert len(summary) == 2 * len(DIAGNOSTIC_TASKS) * len(DIAGNOSTIC_MODES)
    score = {(s["policy"], s["task"], s["mode"]): s["score"] for s in summary}
    for task in DIAGNOSTIC_TASKS:
        for mode in DIAGNOSTIC_MODES:
            # The blind policy knows no memories: it never finds the place, the action or the keyword;
            # the oracle answers from the truth in the form each metric reads, so it scores 100.
            assert score[("blind", task, mode)] == 0.0
            assert score[("oracle", task, mode)] == 100.0


def test_one_job_answers_every_task_and_mode_with_one_model(sets, prompts):
    """diagnose_policy (one workflow job per condition and policy) equals answering and scoring each
    (task, mode) alone, and only the LAR set reaches the judge."""
    from covip.stages.diagnostics.answering import diagnose_policy

    registry = ModelRegistry({"oracle": {"backend": "reference_oracle"}, "judge": {"backend": "local_lexical_judge"}})
    settings = DiagnosticSettings()
    chosen = {task: sets[task][:2] for task in DIAGNOSTIC_TASKS}
    model, judge = registry.chat("oracle"), registry.chat("judge")
    result = diagnose_policy(chosen, DIAGNOSTIC_MODES, "oracle", model, judge, prompts, settings, 0, progress_file=QUIET)
    assert set(result.rows) == {(task, mode) for task in DIAGNOSTIC_TASKS for mode in DIAGNOSTIC_MODES}
    for (task, mode), rows in result.rows.items():
        alone = answer_diagnostics(chosen[task], "oracle", model, prompts, settings, seed=0, mode=mode, progress_file=QUIET)
        alone = score_diagnostics(alone, chosen[task], judge=judge if task == "lar" else None, prompts=prompts,
                                  progress_file=QUIET, settings=settings)
        assert rows == alone
        assert result.failures[(task, mode)].failed == 0
    assert judge.usage.requests == 2 * 2 * len(DIAGNOSTIC_MODES)  # each LAR item judged once per mode, twice over
    with pytest.raises(DiagnosticError, match="no judge"):
        diagnose_policy({"lar": chosen["lar"]}, ["direct"], "oracle", model, None, prompts, settings, 0, progress_file=QUIET)

