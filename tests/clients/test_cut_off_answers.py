"""A cut-off answer (finish_reason "length") is a counted outcome, never a silent ok: a cut-off caption
is a 'truncated' row that CapEval does not judge and counts with the failed captions, and a cut-off
judge reply with no letter is re-asked like any unreadable reply. Through the openai client against
tests/support/fault_server.py."""

from __future__ import annotations

import io

from covip.core import schemas
from covip.core.io import to_table
from covip.clients.registry import ModelRegistry
from covip.stages.capeval import CapEvalSettings, judge_captions, summarize_capeval
from covip.stages.captioning import CaptioningSettings, caption_failures, caption_samples
from support.fault_server import FaultServer

QUIET = io.StringIO()


def chat(server, tmp_path, name="m"):
    entry = {"backend": "openai", "model": "fault-model", "base_url": server.base_url, "max_retries": 2,
             "timeout_s": 2.0, "concurrency": 4}
    return ModelRegistry({name: entry}, cache_path=str(tmp_path / f"{name}.sqlite")).chat(name)


def test_cut_off_captions_are_truncated_rows_counted_as_failed_captions(tmp_path, benchmark_splits, prompts):
    _, test = benchmark_splits
    with FaultServer({"length": 0.5}, max_faults=1000, seed=3) as server:
        rows = caption_samples(test, "p", chat(server, tmp_path), prompts, CaptioningSettings(), seed=0, progress_file=QUIET)
        cut = server.faults["length"]
    to_table(rows, schemas.CAPTIONS, "captions")
    truncated = [row for row in rows if row["status"] == "truncated"]
    assert 0 < len(truncated) == cut < len(rows)
    assert all(row["caption"] == "O" and "finish_reason 'length'" in row["error"] for row in truncated)
    assert all(row["caption"] == "OK" and row["error"] is None for row in rows if row["status"] == "ok")
    assert caption_failures(rows).failed == 0  # answered: no failed call for the job's failure guard

    # A rerun reads every answer from the cache, and a cut-off one stays cut off.
    with FaultServer() as clean:
        again = caption_samples(test, "p", chat(clean, tmp_path), prompts, CaptioningSettings(), seed=0, progress_file=QUIET)
        assert sum(clean.attempts.values()) == 0
    assert [(row["sample_id"], row["status"], row["caption"]) for row in again] == \
        [(row["sample_id"], row["status"], row["caption"]) for row in rows]

    # CapEval asks nothing about a cut-off caption and counts it beside the failed ones.
    with FaultServer() as judge_server:
        settings = CapEvalSettings(n_bootstrap=0)
        answers = judge_captions(rows, test, chat(judge_server, tmp_path, "judge"), prompts, settings, 0, "judge",
                                 progress_file=QUIET)
    cut_ids = {row["sample_id"] for row in truncated}
    assert all(row["caption_failed"] == (row["sample_id"] in cut_ids) for row in answers)
    pooled = [row for row in summarize_capeval(answers, n_bootstrap=0) if row["num_positives"] == 0]
    assert pooled[0]["n_caption_failed"] == len(truncated)

    # The switch back to the authors' code: a cut-off caption is judged as written.
    with FaultServer() as judge_server:
        judged = judge_captions(rows, test, chat(judge_server, tmp_path, "judge_all"), prompts,
                                CapEvalSettings(n_bootstrap=0, truncated_captions="judge"), 0, "judge", progress_file=QUIET)
    assert not any(row["caption_failed"] for row in judged) and len(judged) == len(answers)


def test_a_cut_off_judge_reply_takes_the_repair_path(tmp_path, benchmark_splits, prompts):
    _, test = benchmark_splits
    captions = [{"policy": "p", "sample_id": row["sample_id"], "caption": f"A photo of {row['context_names'][0]}.",
                 "status": "ok", "model_identity": "p", "stand_in": True} for row in test[:2]]
    # First asks are cut off mid-answer ("Answer: \\bo"): no letter. Repairs (more messages) are whole.
    with FaultServer({"length": 1.0}, max_faults=1000, only_if=lambda body: len(body["messages"]) == 1) as server:
        once = judge_captions(captions, test, chat(server, tmp_path), prompts,
                              CapEvalSettings(n_bootstrap=0, missing_captions="ignore"), 0, "judge", progress_file=QUIET)
        assert all(row["unparseable"] and row["parsed"] == "D" for row in once)  # the authors' protocol: D
        twice = judge_captions(captions, test, chat(server, tmp_path), prompts,
                               CapEvalSettings(n_bootstrap=0, missing_captions="ignore", max_attempts=2), 0, "judge",
                               progress_file=QUIET)
        assert not any(row["unparseable"] for row in twice)
        assert any(text.endswith(prompts.render("capeval_repair")) for text in server.last_user_texts)
