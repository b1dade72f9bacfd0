"""Stages 9-11 and the visual-context controls: captions, CapEval-QA, diagnostics, control effects
and judge agreement."""

from __future__ import annotations

import json

import pyarrow as pa

from covip.core.schemas.types import HF_IMAGE, _schema


CAPTIONS = _schema(
    "captions",
    "Stage 9: one personalized caption per (policy, test sample).",
    [
        ("policy", pa.string()),
        ("sample_id", pa.string()),
        ("caption", pa.string()),  # null when generation failed
        ("prompt_tokens", pa.int32()),
        ("completion_tokens", pa.int32()),
        ("latency_s", pa.float32()),
        ("model_identity", pa.string()),  # registry name:backend:model of what produced it
        ("stand_in", pa.bool_()),  # produced by an offline stand-in or reference policy
        ("status", pa.string()),  # 'ok' | 'failed' | 'truncated' (cut off at the token cap; text kept, not judged)
        ("error", pa.string()),
    ],
    ["policy", "sample_id", "model_identity", "stand_in", "status"],
)

CAPEVAL_ANSWERS = _schema(
    "capeval_answers",
    "Stage 10: the judge's answer to every question of every captioned sample.",
    [
        ("policy", pa.string()),
        ("judge", pa.string()),
        ("sample_id", pa.string()),
        ("num_positives", pa.int32()),
        ("context_index", pa.int32()),
        ("question_id", pa.string()),
        ("is_positive", pa.bool_()),  # the question's concept is in the query image
        ("answer", pa.string()),  # the correct letter
        ("raw_answer", pa.string()),  # the judge's text (null if the call failed or was never made)
        # A-D; an unparseable answer counts as 'D', as in the authors' code; null if caption_failed. Under
        # capeval.letter_match 'substring', a first box holding more than one letter keeps its text here.
        ("parsed", pa.string()),
        ("unparseable", pa.bool_()),
        ("correct", pa.bool_()),  # positive: parsed == answer; negative: parsed == 'D'; null if caption_failed
        ("judge_identity", pa.string()),
        ("stand_in", pa.bool_()),
        # The policy produced no caption for the sample: the question was not asked and is left out of
        # Acc+/Acc- (the summary counts the sample in n_caption_failed). Null in older tables: false.
        ("caption_failed", pa.bool_()),
    ],
    ["policy", "judge", "sample_id", "num_positives", "context_index", "question_id", "is_positive", "answer",
     "unparseable", "judge_identity", "stand_in"],
)

CAPEVAL_SUMMARY = _schema(
    "capeval_summary",
    "Stage 10: Acc+ / Acc- per (policy, judge, number of positive concepts), with 95% bootstrap intervals.",
    [
        ("policy", pa.string()),
        ("judge", pa.string()),
        ("num_positives", pa.int32()),  # 0 = all counts pooled
        ("acc_pos", pa.float64()),
        ("acc_neg", pa.float64()),
        ("acc_pos_low", pa.float64()),
        ("acc_pos_high", pa.float64()),
        ("acc_neg_low", pa.float64()),
        ("acc_neg_high", pa.float64()),
        ("n_pos_questions", pa.int32()),
        ("n_neg_questions", pa.int32()),
        ("n_unparseable", pa.int32()),  # judge replies with no letter, judge call failures included
        ("n_judge_failed", pa.int32()),  # judge calls that failed (counted as 'D' and as unparseable)
        ("n_caption_failed", pa.int32()),  # samples whose caption failed: left out of Acc+/Acc-, never scored
        ("policy_identity", pa.string()),
        ("judge_identity", pa.string()),
        ("stand_in", pa.bool_()),
    ],
    ["policy", "judge", "num_positives", "n_pos_questions", "n_neg_questions", "n_unparseable",
     "policy_identity", "judge_identity", "stand_in"],
)

def _diagnostic_features_metadata() -> str:
    """Hugging Face feature metadata of a diagnostic set, so its image columns decode as PIL images."""
    value = {"dtype": "string", "_type": "Value"}
    features = {
        "sample_id": value,
        "task": value,
        "images_context": {"feature": {"_type": "Image"}, "_type": "List"},
        "dialogues_context": {"feature": value, "_type": "List"},
        "query_image": {"_type": "Image"},
        "question": value,
        "answer": value,
        "target_index": {"dtype": "int32", "_type": "Value"},
        "last_action": value,
    }
    return json.dumps({"info": {"features": features}})


DIAGNOSTIC_SET = _schema(
    "diagnostic_set",
    "Stage 11 input: one LSD / LAR / ITR item, in the hub's column layout plus our bookkeeping.",
    [
        ("sample_id", pa.string()),
        ("task", pa.string()),  # 'lsd' | 'lar' | 'itr'
        ("images_context", pa.list_(HF_IMAGE)),
        ("dialogues_context", pa.list_(pa.string())),
        ("query_image", HF_IMAGE),
        ("question", pa.string()),  # what the user asks about the new image
        ("answer", pa.string()),  # LSD: place; LAR: action; ITR: keyword
        ("target_index", pa.int32()),  # index of the context entry the answer comes from (-1 unknown)
        ("last_action", pa.string()),  # LAR: the user's words about the action (the judge's reference); else null
    ],
    ["sample_id", "task", "images_context", "dialogues_context", "query_image", "question", "answer"],
    metadata=(("huggingface", _diagnostic_features_metadata()),),
)

DIAGNOSTIC_RESPONSES = _schema(
    "diagnostic_responses",
    "Stage 11: a policy's response to every diagnostic item, direct or caption-augmented, and its score.",
    [
        ("policy", pa.string()),
        ("task", pa.string()),
        ("mode", pa.string()),  # 'direct' | 'cag'
        ("sample_id", pa.string()),
        ("caption", pa.string()),  # CAG only: the caption placed as the assistant's previous turn
        ("response", pa.string()),
        ("extracted", pa.string()),  # LSD: the boxed answer; LAR: the judge's verdict; ITR: keyword found
        ("score", pa.float64()),  # null when the response or its judging failed
        ("scorer", pa.string()),  # 'token_f1' | judge identity | 'keyword'
        ("model_identity", pa.string()),
        ("stand_in", pa.bool_()),
        ("status", pa.string()),
        ("error", pa.string()),
    ],
    ["policy", "task", "mode", "sample_id", "scorer", "model_identity", "stand_in", "status"],
)

DIAGNOSTIC_SUMMARY = _schema(
    "diagnostic_summary",
    "Stage 11: mean score per (policy, task, mode) with a 95% bootstrap interval.",
    [
        ("policy", pa.string()),
        ("task", pa.string()),
        ("mode", pa.string()),
        ("score", pa.float64()),
        ("score_low", pa.float64()),
        ("score_high", pa.float64()),
        ("n", pa.int32()),
        ("n_failed", pa.int32()),
        ("scorer", pa.string()),
        ("model_identity", pa.string()),
        ("stand_in", pa.bool_()),
    ],
    ["policy", "task", "mode", "n", "n_failed", "scorer", "model_identity", "stand_in"],
)


# Visual-context controls and judge robustness (covip.stages.controls, covip.stages.agreement)

CONTROL_CHANGES = _schema(
    "control_changes",
    "What a visual-context control changed: one row per image cell, with the bytes' hashes before and after.",
    [
        ("condition", pa.string()),  # text_only | corrupted_context | swapped_context | blank_query
        ("dataset", pa.string()),  # 'test' or a diagnostic task
        ("sample_id", pa.string()),
        ("field", pa.string()),  # the image column
        ("index", pa.int32()),  # position in the context list; -1 for the query image
        ("change", pa.string()),  # 'removed', 'swapped', 'blank', 'noise+blur severity 0.6', ...
        ("source_sample_id", pa.string()),  # where a swapped or unrelated image came from
        ("sha_before", pa.string()),
        ("sha_after", pa.string()),  # '' when the image was removed
    ],
    ["condition", "dataset", "sample_id", "field", "index", "change", "sha_before", "sha_after"],
)

CONTROL_EFFECTS = _schema(
    "control_effects",
    "Every metric of every policy under every condition, and its drop against 'intact' with a paired "
    "cluster-bootstrap interval over the same samples.",
    [
        ("policy", pa.string()),
        ("condition", pa.string()),
        ("metric", pa.string()),  # 'acc_pos' | 'acc_neg' (CapEval-QA) | 'lsd' | 'lar' | 'itr'
        ("mode", pa.string()),  # diagnostics: 'direct' | 'cag'; CapEval-QA: ''
        ("judge", pa.string()),  # CapEval-QA judge; diagnostics: the scorer
        ("num_positives", pa.int32()),  # CapEval-QA concept count, 0 = pooled (diagnostics: 0)
        ("value", pa.float64()),  # percent, under the condition
        ("intact", pa.float64()),  # percent, same samples, intact
        ("drop", pa.float64()),  # intact - value: positive when the score fell
        ("drop_low", pa.float64()),
        ("drop_high", pa.float64()),
        ("n_samples", pa.int32()),
        ("policy_identity", pa.string()),
        ("judge_identity", pa.string()),
        ("stand_in", pa.bool_()),
    ],
    ["policy", "condition", "metric", "mode", "judge", "num_positives", "n_samples", "stand_in"],
)

JUDGE_AGREEMENT = _schema(
    "judge_agreement",
    "Per pair of CapEval-QA judges over the same (policy, condition, sample, question) items: Cohen's kappa "
    "of their parsed letters, raw agreement, and each judge's Acc+ / Acc- and unparseable rate.",
    [
        ("condition", pa.string()),  # a condition, or 'all'
        ("policy", pa.string()),  # a policy, or 'all'
        ("judge_a", pa.string()),
        ("judge_b", pa.string()),
        ("n_items", pa.int32()),
        ("agreement", pa.float64()),  # fraction of items with the same letter
        ("kappa", pa.float64()),  # null when undefined (both judges constant on the same letter)
        ("acc_pos_a", pa.float64()),
        ("acc_neg_a", pa.float64()),
        ("acc_pos_b", pa.float64()),
        ("acc_neg_b", pa.float64()),
        ("unparseable_a", pa.float64()),  # percent of items
        ("unparseable_b", pa.float64()),
        ("judge_a_identity", pa.string()),
        ("judge_b_identity", pa.string()),
        ("stand_in", pa.bool_()),
    ],
    ["condition", "policy", "judge_a", "judge_b", "n_items", "agreement", "stand_in"],
)

JUDGE_DISAGREEMENTS = _schema(
    "judge_disagreements",
    "Every question two judges answered differently.",
    [
        ("condition", pa.string()),
        ("policy", pa.string()),
        ("sample_id", pa.string()),
        ("context_index", pa.int32()),
        ("question_id", pa.string()),
        ("is_positive", pa.bool_()),
        ("answer", pa.string()),
        ("judge_a", pa.string()),
        ("parsed_a", pa.string()),
        ("raw_a", pa.string()),
        ("judge_b", pa.string()),
        ("parsed_b", pa.string()),
        ("raw_b", pa.string()),
    ],
    ["condition", "policy", "sample_id", "context_index", "question_id", "is_positive", "answer", "judge_a",
     "parsed_a", "judge_b", "parsed_b"],
)


# Human evaluation (pairwise caption preference, `covip human-eval serve`, rule human_eval_summary)

HUMAN_VOTES = _schema(
    "human_votes",
    "One rater's vote on one comparison (a test sample and two policies' captions), from the votes database.",
    [
        ("rater", pa.string()),
        ("plan_version", pa.string()),  # hash of what the plan was drawn from (captions included)
        ("item_id", pa.string()),  # '<sample_id>:<policy>:<policy>' (policies in alphabetical order)
        ("position", pa.int32()),  # place of the comparison in the rater's list (0-based)
        ("sample_id", pa.string()),
        ("policy_a", pa.string()),  # whose caption was shown as A
        ("policy_b", pa.string()),
        ("choice_context", pa.string()),  # 'A' | 'B' | 'tie': use of the remembered context
        ("choice_image", pa.string()),  # 'A' | 'B' | 'tie': description of the new image
        ("preferred_context", pa.string()),  # the policy chosen, or 'tie'
        ("preferred_image", pa.string()),
        ("shown_at", pa.string()),  # ISO 8601 UTC, first time the item was shown (null if never recorded)
        ("submitted_at", pa.string()),
    ],
    ["rater", "plan_version", "item_id", "position", "sample_id", "policy_a", "policy_b", "choice_context",
     "choice_image", "preferred_context", "preferred_image", "submitted_at"],
)

HUMAN_EVAL_PAIRS = _schema(
    "human_eval_pairs",
    "Per pair of policies and criterion: wins, ties and losses of the human votes, in percent with Wilson "
    "score intervals.",
    [
        ("criterion", pa.string()),  # 'context' | 'image'
        ("policy_x", pa.string()),  # alphabetically first of the pair
        ("policy_y", pa.string()),
        ("n_votes", pa.int32()),
        ("x_wins", pa.int32()),
        ("ties", pa.int32()),
        ("y_wins", pa.int32()),
        ("x_win", pa.float64()),  # percent of votes
        ("x_win_low", pa.float64()),
        ("x_win_high", pa.float64()),
        ("tie", pa.float64()),
        ("tie_low", pa.float64()),
        ("tie_high", pa.float64()),
        ("y_win", pa.float64()),
        ("y_win_low", pa.float64()),
        ("y_win_high", pa.float64()),
        ("n_samples", pa.int32()),
        ("n_raters", pa.int32()),
    ],
    ["criterion", "policy_x", "policy_y", "n_votes", "x_wins", "ties", "y_wins", "n_samples", "n_raters"],
)

HUMAN_EVAL_RANKING = _schema(
    "human_eval_ranking",
    "Per criterion: the policies ranked by a Bradley-Terry fit of the votes (ties as half a win each way).",
    [
        ("criterion", pa.string()),
        ("policy", pa.string()),
        ("rank", pa.int32()),  # 1 = strongest
        ("strength", pa.float64()),  # Bradley-Terry log-strength, mean 0 over the ranked policies
        ("win_share", pa.float64()),  # percent of its comparisons won, ties counting half
        ("wins", pa.int32()),
        ("ties", pa.int32()),
        ("losses", pa.int32()),
    ],
    ["criterion", "policy", "rank", "strength", "win_share", "wins", "ties", "losses"],
)

HUMAN_EVAL_AGREEMENT = _schema(
    "human_eval_agreement",
    "Per criterion: agreement between raters (Krippendorff's alpha), and between the human preference and "
    "the CapEval-QA difference (per-sample Acc+ or Acc-) of the two captions, per judge.",
    [
        ("criterion", pa.string()),
        ("measure", pa.string()),  # 'krippendorff_alpha' | 'capeval_acc_pos' | 'capeval_acc_neg'
        ("judge", pa.string()),  # CapEval-QA judge ('' for the inter-rater row)
        ("value", pa.float64()),  # alpha; or percent of decisive votes whose preferred caption scores higher
        ("low", pa.float64()),  # Wilson interval of the percent (null for alpha)
        ("high", pa.float64()),
        ("n_units", pa.int32()),  # alpha: comparisons rated by 2+ raters; CapEval: votes with both scores
        ("n_agree", pa.int32()),  # CapEval: decisive votes whose preferred caption has the higher score
        ("n_disagree", pa.int32()),  # ... the lower score
        ("n_capeval_ties", pa.int32()),  # decisive votes where both captions score the same
        ("n_human_ties", pa.int32()),  # tie votes (left out of the percent, kept in the rank correlation)
        ("kendall_tau", pa.float64()),  # tau-b between preference (-1, 0, 1) and score difference; null if undefined
        ("kendall_p", pa.float64()),
        ("n_raters", pa.int32()),
    ],
    ["criterion", "measure", "judge", "n_units", "n_raters"],
)
