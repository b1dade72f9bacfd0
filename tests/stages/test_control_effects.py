"""Visual-context controls, measured (covip.stages.controls.effects): every score under every condition
with its paired drop against intact, by hand and with the reference policies (the oracle must not
move, the looking policy must fall)."""

from __future__ import annotations

import io

import pytest

from covip.clients.registry import ModelRegistry
from covip.core.names import CONDITIONS
from covip.stages.capeval import CapEvalSettings, judge_captions
from covip.stages.captioning import CaptioningSettings, caption_samples
from covip.stages.controls.apply import apply_control
from covip.stages.controls.effects import control_effects
from covip.stages.controls.settings import ControlSettings

QUIET = io.StringIO()
SEED = 7
SETTINGS = ControlSettings()


@pytest.fixture(scope="module")
def test_rows(benchmark_splits):
    return benchmark_splits[1]


def test_oracle_is_unchanged_under_every_control(test_rows, prompts):
    """The oracle reads the ground truth: the same captions, the same answers, drop 0 everywhere."""
    registry = ModelRegistry({"oracle": {"backend": "reference_oracle"}, "judge": {"backend": "local_lexical_judge"}})
    oracle, judge = registry.chat("oracle"), registry.chat("judge")
    answers, captions = {}, {}
    for condition in CONDITIONS:
        rows, _ = apply_control(test_rows, condition, SETTINGS, SEED)
        captions[condition] = caption_samples(rows, "oracle", oracle, prompts, CaptioningSettings(), SEED, progress_file=QUIET)
        answers[condition] = judge_captions(captions[condition], rows, judge, prompts, CapEvalSettings(), SEED, "judge")
    for condition in CONDITIONS:
        assert [c["caption"] for c in captions[condition]] == [c["caption"] for c in captions["intact"]]
    effects = control_effects(answers, {}, n_bootstrap=200, seed=SEED)
    assert {r["condition"] for r in effects} == set(CONDITIONS)
    assert all(r["drop"] == 0.0 for r in effects)
    assert all(r["drop_low"] == 0.0 and r["drop_high"] == 0.0 for r in effects if r["condition"] != "intact")


def _answer(sample, positive, correct, judge="j", policy="p", num=1, q="Q1"):
    return {"policy": policy, "judge": judge, "sample_id": sample, "num_positives": num, "context_index": 0,
            "question_id": q, "is_positive": positive, "answer": "A", "raw_answer": "A", "parsed": "A",
            "unparseable": False, "correct": correct, "judge_identity": "j:x", "stand_in": True}


def test_drop_and_its_paired_interval_on_a_hand_case():
    intact = [_answer(f"s{k}", True, True) for k in range(6)] + [_answer(f"s{k}", False, True, q="Q2") for k in range(6)]
    # Under the control every positive question fails, every negative one still passes.
    swapped = [_answer(f"s{k}", True, False) for k in range(6)] + [_answer(f"s{k}", False, True, q="Q2") for k in range(6)]
    diag_intact = [{"policy": "p", "task": "lsd", "mode": "direct", "sample_id": f"s{k}", "score": 1.0 if k < 3 else 0.0,
                    "scorer": "token_f1", "model_identity": "p:x", "stand_in": True} for k in range(6)]
    diag_swapped = [dict(r, score=0.0) for r in diag_intact]
    effects = control_effects({"intact": intact, "swapped_context": swapped},
                              {"intact": diag_intact, "swapped_context": diag_swapped}, n_bootstrap=300, seed=1)
    pooled = {(r["condition"], r["metric"]): r for r in effects if r["num_positives"] == 0}
    acc_pos = pooled[("swapped_context", "acc_pos")]
    assert (acc_pos["value"], acc_pos["intact"], acc_pos["drop"]) == (0.0, 100.0, 100.0)
    assert acc_pos["drop_low"] == acc_pos["drop_high"] == 100.0  # every draw loses everything
    assert pooled[("swapped_context", "acc_neg")]["drop"] == 0.0
    lsd = pooled[("swapped_context", "lsd")]
    assert lsd["intact"] == 50.0 and lsd["drop"] == 50.0 and 0.0 <= lsd["drop_low"] < 50.0 < lsd["drop_high"] <= 100.0


def test_the_looking_policy_loses_acc_pos_when_the_evidence_goes(test_rows, prompts):
    """The positive control: a policy that finds the concepts in the pixels must fall under the controls
    that take the visual evidence away, while the oracle (above) does not move."""
    registry = ModelRegistry({"looking": {"backend": "reference_looking"}, "judge": {"backend": "local_lexical_judge"}})
    looking, judge = registry.chat("looking"), registry.chat("judge")
    answers = {}
    for condition in ("intact", "text_only", "swapped_context", "blank_query"):
        rows, _ = apply_control(test_rows, condition, SETTINGS, SEED)
        captions = caption_samples(rows, "looking", looking, prompts, CaptioningSettings(), SEED, progress_file=QUIET)
        answers[condition] = judge_captions(captions, rows, judge, prompts, CapEvalSettings(), SEED, "judge")
    effects = control_effects(answers, {}, n_bootstrap=200, seed=SEED)
    pooled = {r["condition"]: r for r in effects if r["metric"] == "acc_pos" and r["num_positives"] == 0}
    assert pooled["intact"]["value"] >= 50.0
    for condition in ("text_only", "swapped_context", "blank_query"):
        assert pooled[condition]["drop"] >= 30.0 and pooled[condition]["drop_low"] > 0.0, (condition, pooled[condition])


def test_the_looking_policy_matches_each_image_set_once(test_rows, prompts):
    """Template matching is remembered by the images' bytes: captioning the same samples again matches
    nothing anew and writes the same captions a fresh policy writes."""
    rows = test_rows[:3]
    looking = ModelRegistry({"looking": {"backend": "reference_looking"}}).chat("looking")
    verifier = looking.inner.verifier
    matched = []
    best = verifier._best
    verifier._best = lambda *args: matched.append(1) or best(*args)
    first = caption_samples(rows, "looking", looking, prompts, CaptioningSettings(), SEED, progress_file=QUIET)
    assert len(matched) == sum(len(row["context_images"]) for row in rows)
    again = caption_samples(rows, "looking", looking, prompts, CaptioningSettings(), SEED, progress_file=QUIET)
    assert len(matched) == sum(len(row["context_images"]) for row in rows)  # nothing matched twice
    fresh = ModelRegistry({"looking": {"backend": "reference_looking"}}).chat("looking")
    fresh_captions = caption_samples(rows, "looking", fresh, prompts, CaptioningSettings(), SEED, progress_file=QUIET)
    assert [c["caption"] for c in again] == [c["caption"] for c in first] == [c["caption"] for c in fresh_captions]
