"""The schema of every artifact the workflow writes, declared once.

Each stage writes exactly one of these tables and the next stage reads it back through the same
declaration, so a column that changes type or goes missing is caught at the boundary where it
happened, with the file name, instead of three stages later.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

# Images inside intermediate tables are PNG (or the generator's own encoding) bytes. The published
# splits use the Hugging Face image struct instead, so `datasets` decodes them.
IMAGE = pa.binary()

# Every multiple-choice question has options A-D: one of A-C is correct, D is the constant "cannot be
# determined" (SPEC §2), never shuffled. A judge that finds no support in a caption answers D.
OPTION_LETTERS = ("A", "B", "C", "D")
ANSWER_LETTERS = ("A", "B", "C")
NONE_LETTER = "D"
NONE_OPTION = "The answer cannot be determined"
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

FACT = pa.struct([("kind", pa.string()), ("text", pa.string())])
TURN = pa.struct([("role", pa.string()), ("text", pa.string())])
OPTIONS = pa.struct([("A", pa.string()), ("B", pa.string()), ("C", pa.string()), ("D", pa.string())])
QUESTION = pa.struct(
    [
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("options", OPTIONS),
        ("answer", pa.string()),
        # False when the correct option's content cannot be found in the dialogue it came from.
        ("supported", pa.bool_()),
    ]
)
PUBLISHED_QUESTION = pa.struct([("question", pa.string()), ("options", OPTIONS), ("answer", pa.string())])


@dataclass(frozen=True)
class ArtifactSchema:
    """A named table layout: the arrow schema plus the columns that may never be null."""

    name: str
    schema: pa.Schema
    description: str
    required: tuple[str, ...] = ()
    # Extra schema metadata written into the Parquet footer (e.g. Hugging Face features).
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def arrow_schema(self) -> pa.Schema:
        if not self.metadata:
            return self.schema
        return self.schema.with_metadata({k.encode(): v.encode() for k, v in self.metadata})


def _schema(name: str, description: str, fields: list[tuple[str, pa.DataType]], required: list[str], metadata=()):
    return ArtifactSchema(name, pa.schema(fields), description, tuple(required), tuple(metadata))


CONCEPTS = _schema(
    "concepts",
    "Stage 1: one row per concept of the pool, with its reference photo and fictional name.",
    [
        ("concept_id", pa.string()),
        ("category", pa.string()),
        ("kind", pa.string()),  # finer label (e.g. 'mug', 'face'); never shown to models
        ("source", pa.string()),  # where the reference photo came from
        ("name", pa.string()),
        ("image", IMAGE),  # RGBA PNG; alpha marks the concept's own pixels (cut-out mask)
        ("width", pa.int32()),
        ("height", pa.int32()),
    ],
    ["concept_id", "category", "kind", "source", "name", "image", "width", "height"],
)

QUERIES = _schema(
    "queries",
    "Stage 2: one synthesized query image per sample and the positive concepts it was asked to show.",
    [
        ("sample_id", pa.string()),
        ("positive_concept_ids", pa.list_(pa.string())),
        ("num_positives", pa.int32()),
        ("instruction", pa.string()),
        ("image", IMAGE),  # null when generation failed
        ("generator", pa.string()),  # model registry entry and backend, e.g. 'image_generator:local_compositor'
        ("layout", pa.string()),  # JSON: where each concept was placed, when the generator knows it
        ("status", pa.string()),  # 'ok' | 'failed'
        ("error", pa.string()),
    ],
    ["sample_id", "positive_concept_ids", "num_positives", "instruction", "generator", "status"],
)

FILTER_DECISIONS = _schema(
    "filter_decisions",
    "Stage 3: keep/drop for every synthesized sample, with the reason for every drop.",
    [
        ("sample_id", pa.string()),
        ("kept", pa.bool_()),
        ("reason", pa.string()),  # short machine-readable reason ('' when kept)
        ("detail", pa.string()),  # human-readable evidence: scores, the verifier's words
        ("verifier", pa.string()),
    ],
    ["sample_id", "kept", "reason", "detail", "verifier"],
)

CONCEPT_EMBEDDINGS = _schema(
    "concept_embeddings",
    "Stage 4a: one L2-normalised image embedding per concept.",
    [("concept_id", pa.string()), ("embedding", pa.list_(pa.float32())), ("embedder", pa.string())],
    ["concept_id", "embedding", "embedder"],
)

CONTEXTS = _schema(
    "contexts",
    "Stage 4b: the shuffled context of every kept sample: its positives plus retrieved hard negatives.",
    [
        ("sample_id", pa.string()),
        ("context_concept_ids", pa.list_(pa.string())),
        ("positive_indices", pa.list_(pa.int32())),
        ("negative_concept_ids", pa.list_(pa.string())),
        ("negative_similarity", pa.list_(pa.float32())),  # embedder similarity to the closest positive
        ("embedder", pa.string()),
    ],
    ["sample_id", "context_concept_ids", "positive_indices", "negative_concept_ids", "negative_similarity", "embedder"],
)

DIALOGUES = _schema(
    "dialogues",
    "Stage 5: one dialogue per (sample, context concept), with the facts it was written from.",
    [
        ("sample_id", pa.string()),
        ("concept_id", pa.string()),
        ("context_index", pa.int32()),
        ("name", pa.string()),
        ("facts", pa.list_(FACT)),
        ("turns", pa.list_(TURN)),
        ("dialogue", pa.string()),  # the turns rendered as 'User: ...' / 'Model: ...' lines
        ("status", pa.string()),  # 'ok' | 'failed'
        ("failure_reason", pa.string()),
        ("attempts", pa.int32()),
        ("raw_response", pa.string()),  # the last raw model output, kept for failed rows
        ("writer", pa.string()),
    ],
    ["sample_id", "concept_id", "context_index", "name", "facts", "status", "attempts", "writer"],
)

MCQAS = _schema(
    "mcqas",
    "Stage 6: three validated, shuffled multiple-choice questions per dialogue.",
    [
        ("sample_id", pa.string()),
        ("concept_id", pa.string()),
        ("context_index", pa.int32()),
        ("questions", pa.list_(QUESTION)),
        ("status", pa.string()),
        ("failure_reason", pa.string()),
        ("attempts", pa.int32()),
        ("raw_response", pa.string()),
        ("writer", pa.string()),
    ],
    ["sample_id", "concept_id", "context_index", "status", "attempts", "writer"],
)


def _hf_features_metadata() -> str:
    """Hugging Face `datasets` feature metadata so image columns decode as PIL images."""
    value = {"dtype": "string", "_type": "Value"}
    options = {letter: value for letter in "ABCD"}
    question = {"question": value, "options": options, "answer": value}
    features = {
        "sample_id": value,
        "split": value,
        "query_image": {"_type": "Image"},
        "context_images": {"feature": {"_type": "Image"}, "_type": "List"},
        "context_names": {"feature": value, "_type": "List"},
        "context_dialogues": {"feature": value, "_type": "List"},
        "context_concept_ids": {"feature": value, "_type": "List"},
        "context_categories": {"feature": value, "_type": "List"},
        "positive_indices": {"feature": {"dtype": "int32", "_type": "Value"}, "_type": "List"},
        "num_positives": {"dtype": "int32", "_type": "Value"},
        "mcqa": {"feature": {"feature": question, "_type": "List"}, "_type": "List"},
        "context_facts": value,
    }
    return json.dumps({"info": {"features": features}})


SPLIT = _schema(
    "split",
    "Stage 7: a published split (train or test); loads with datasets.load_dataset('parquet').",
    [
        ("sample_id", pa.string()),
        ("split", pa.string()),
        ("query_image", HF_IMAGE),
        ("context_images", pa.list_(HF_IMAGE)),
        ("context_names", pa.list_(pa.string())),
        ("context_dialogues", pa.list_(pa.string())),
        ("context_concept_ids", pa.list_(pa.string())),
        ("context_categories", pa.list_(pa.string())),
        ("positive_indices", pa.list_(pa.int32())),
        ("num_positives", pa.int32()),
        ("mcqa", pa.list_(pa.list_(PUBLISHED_QUESTION))),
        ("context_facts", pa.string()),  # JSON list (one per context concept) of the facts used
    ],
    [
        "sample_id",
        "split",
        "query_image",
        "context_images",
        "context_names",
        "context_dialogues",
        "positive_indices",
        "num_positives",
        "mcqa",
    ],
    metadata=(("huggingface", _hf_features_metadata()),),
)

SPLIT_REPORT = _schema(
    "split_report",
    "Stage 7: what happened to every synthesized sample (which split, or why it was left out).",
    [
        ("sample_id", pa.string()),
        ("num_positives", pa.int32()),
        ("outcome", pa.string()),  # 'train' | 'test' | 'unused' | 'dropped'
        ("reason", pa.string()),
    ],
    ["sample_id", "num_positives", "outcome", "reason"],
)


# ---------------------------------------------------------------------------------------------------
# Evaluation (SPEC stages 9-11)

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
        ("status", pa.string()),  # 'ok' | 'failed'
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
        ("raw_answer", pa.string()),  # the judge's text (null if the call failed)
        ("parsed", pa.string()),  # A-D; an unparseable answer counts as 'D', as in the authors' code
        ("unparseable", pa.bool_()),
        ("correct", pa.bool_()),  # positive: parsed == answer; negative: parsed == 'D'
        ("judge_identity", pa.string()),
        ("stand_in", pa.bool_()),
    ],
    ["policy", "judge", "sample_id", "num_positives", "context_index", "question_id", "is_positive", "answer",
     "parsed", "unparseable", "correct", "judge_identity", "stand_in"],
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

USAGE = _schema(
    "usage",
    "Model usage of one job: one row per registry entry the job used (written beside the job's log).",
    [
        ("job", pa.string()),  # the job's log path under logs/, without .log (rule plus wildcards)
        ("rule", pa.string()),
        ("role", pa.string()),  # registry entry
        ("backend", pa.string()),
        ("model", pa.string()),
        ("requests", pa.int64()),  # every request the stage made, cache hits included
        ("cache_hits", pa.int64()),
        ("failures", pa.int64()),  # calls that failed after the client's retries
        ("input_tokens", pa.int64()),  # of fresh calls only (a cache hit costs nothing)
        ("output_tokens", pa.int64()),
        ("seconds", pa.float64()),  # summed call latency (calls overlap, so this exceeds wall time)
        ("estimated_cost_usd", pa.float64()),  # from the config's price table; 0 without a price
    ],
    ["job", "rule", "role", "backend", "model", "requests", "cache_hits", "failures", "input_tokens",
     "output_tokens", "seconds", "estimated_cost_usd"],
)

# ---------------------------------------------------------------------------------------------------
# Training (SPEC stage 8)

TRAINING_LOG = _schema(
    "training_log",
    "Stage 8: one row per logged GSPO optimiser step (TRL's metrics, averaged over the logging interval).",
    [
        ("run", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("wall_s", pa.float64()),  # seconds since this (possibly resumed) process started training
        ("loss", pa.float64()),
        ("reward_mean", pa.float64()),
        ("reward_std", pa.float64()),
        ("reward_caption", pa.float64()),  # per-task means; null when the run has no such task
        ("reward_multi_vision", pa.float64()),
        ("reward_vision", pa.float64()),
        ("reward_joint", pa.float64()),
        ("clip_ratio", pa.float64()),  # share of sequences whose ratio s was clipped
        ("clip_ratio_low", pa.float64()),
        ("clip_ratio_high", pa.float64()),
        ("completion_length_mean", pa.float64()),
        ("completion_truncated_ratio", pa.float64()),
        ("learning_rate", pa.float64()),
        ("grad_norm", pa.float64()),
    ],
    ["run", "step"],
)

# ---------------------------------------------------------------------------------------------------
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

ALL = {
    s.name: s
    for s in (
        CONCEPTS, QUERIES, FILTER_DECISIONS, CONCEPT_EMBEDDINGS, CONTEXTS, DIALOGUES, MCQAS, SPLIT, SPLIT_REPORT,
        CAPTIONS, CAPEVAL_ANSWERS, CAPEVAL_SUMMARY, DIAGNOSTIC_SET, DIAGNOSTIC_RESPONSES, DIAGNOSTIC_SUMMARY,
        USAGE, TRAINING_LOG, CONTROL_CHANGES, CONTROL_EFFECTS, JUDGE_AGREEMENT, JUDGE_DISAGREEMENTS,
    )
}
