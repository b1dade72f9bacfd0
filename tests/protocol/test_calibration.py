"""The reference policies calibrate every metric, under both protocols (docs/protocol.md, "Reference
policies").

On a built benchmark (the session fixtures `benchmark_splits` and `diagnostic_sets`): the oracle scores
100 on LSD, LAR and ITR, direct and with CAG, and 100 / 100 on CapEval-QA with the lexical judge; the
blind policy scores 0 on the positives (Acc+) and on every diagnostic; the context dump keeps the
oracle's Acc+ and loses Acc-. A broken metric, parser, prompt layout or reference policy moves one of
these bounds and fails here.
"""

from __future__ import annotations

import io

import pytest

from covip.clients.registry import ModelRegistry
from covip.core.names import DIAGNOSTIC_MODES, DIAGNOSTIC_TASKS
from covip.core.presets import PROTOCOLS, SWITCHES
from covip.stages.capeval import CapEvalSettings, judge_captions, summarize_capeval
from covip.stages.captioning import CaptioningSettings, caption_samples
from covip.stages.diagnostics.answering import answer_diagnostics
from covip.stages.diagnostics.scoring import score_diagnostics
from covip.stages.diagnostics.sets import task_question
from covip.stages.diagnostics.settings import DiagnosticSettings
from covip.stages.diagnostics.summary import summarize_diagnostics

QUIET = io.StringIO()
POLICIES = ("oracle", "context_dump", "blind")
REGISTRY = {
    "oracle": {"backend": "reference_oracle"},
    "context_dump": {"backend": "reference_context_dump"},
    "blind": {"backend": "reference_blind"},
    "lexical_judge": {"backend": "local_lexical_judge"},
    "ngram_judge": {"backend": "local_ngram_judge"},
}


def settings(protocol: str, section: str) -> dict:
    return {s.key: s.value(protocol) for s in SWITCHES if s.section == section}


@pytest.fixture(scope="module", params=PROTOCOLS)
def protocol(request):
    return request.param


@pytest.fixture(scope="module")
def capeval(protocol, benchmark_splits, prompts):
    """(policy, judge) -> pooled summary row, every reference policy captioned and judged by both judges."""
    registry = ModelRegistry(REGISTRY)
    test = benchmark_splits[1]
    caption_settings = CaptioningSettings(**settings(protocol, "captioning"))
    capeval_settings = CapEvalSettings(n_bootstrap=0, **settings(protocol, "capeval"))
    pooled = {}
    for policy in POLICIES:
        captions = caption_samples(test, policy, registry.chat(policy), prompts, caption_settings, 0, progress_file=QUIET)
        for judge in ("lexical_judge", "ngram_judge"):
            answers = judge_captions(captions, test, registry.chat(judge), prompts, capeval_settings, 0, judge,
                                     progress_file=QUIET)
            summary = summarize_capeval(answers, 0, failed_calls=capeval_settings.failed_calls)
            pooled[(policy, judge)] = next(row for row in summary if row["num_positives"] == 0)
    return pooled


@pytest.fixture(scope="module")
def diagnostics(protocol, diagnostic_sets, prompts):
    """(policy, task, mode) -> mean score in percent; the sets' questions as the protocol asks them."""
    registry = ModelRegistry(REGISTRY)
    diag_settings = DiagnosticSettings(**settings(protocol, "diagnostics"))
    rows = []
    for task in DIAGNOSTIC_TASKS:
        question = task_question(prompts, task, diag_settings.lsd_box)
        items = [{**item, "question": question} for item in diagnostic_sets[task]]
        for policy in POLICIES:
            for mode in DIAGNOSTIC_MODES:
                answered = answer_diagnostics(items, policy, registry.chat(policy), prompts, diag_settings, 0, mode,
                                              progress_file=QUIET)
                rows += score_diagnostics(answered, items, judge=registry.chat("lexical_judge"), prompts=prompts,
                                          progress_file=QUIET, settings=diag_settings)
    assert all(row["score"] is not None for row in rows)  # every row scored: nothing failed or was dropped
    return {(s["policy"], s["task"], s["mode"]): s["score"] for s in summarize_diagnostics(rows, 0)}


def test_capeval_bounds_with_the_lexical_judge(capeval):
    oracle, dump, blind = (capeval[(policy, "lexical_judge")] for policy in POLICIES)
    assert (oracle["acc_pos"], oracle["acc_neg"]) == (100.0, 100.0)
    assert blind["acc_pos"] == 0.0 and blind["acc_neg"] == 100.0
    assert dump["acc_pos"] == oracle["acc_pos"]  # the dump keeps every positive memory ...
    assert dump["acc_neg"] <= 50.0  # ... and drags in the negatives' too
    assert all(row["n_unparseable"] == 0 for row in capeval.values())  # every judge reply was read


def test_capeval_bounds_with_the_ngram_judge(capeval):
    oracle, dump, blind = (capeval[(policy, "ngram_judge")] for policy in POLICIES)
    assert oracle["acc_pos"] >= 90.0 and oracle["acc_neg"] >= 90.0
    assert blind["acc_pos"] == 0.0
    assert dump["acc_pos"] >= 90.0 and dump["acc_neg"] <= 50.0


@pytest.mark.parametrize("task", DIAGNOSTIC_TASKS)
@pytest.mark.parametrize("mode", DIAGNOSTIC_MODES)
def test_diagnostic_bounds(diagnostics, task, mode):
    assert diagnostics[("oracle", task, mode)] == 100.0
    assert diagnostics[("blind", task, mode)] == 0.0
    assert diagnostics[("context_dump", task, mode)] < 100.0
