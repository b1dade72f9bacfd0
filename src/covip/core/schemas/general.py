"""General multi-image benchmarks run through lmms-eval (rule general_benchmark; covip.stages.general)."""

from __future__ import annotations

import pyarrow as pa

from covip.core.schemas.types import IMAGE, _schema

_WHO = [
    ("policy", pa.string()),
    ("benchmark", pa.string()),  # our catalog name (covip/harness/catalog.yaml)
]
_PROVENANCE = [
    ("harness", pa.string()),  # 'lmms-eval <version>'
    ("task", pa.string()),  # the lmms-eval task name
    ("task_version", pa.string()),  # the task's metadata version as lmms-eval reports it
    ("harness_model", pa.string()),  # the lmms-eval model class that ran it ('qwen2_5_vl', 'openai', ...)
    ("route", pa.string()),  # api | in_process | served
    ("model_identity", pa.string()),  # registry name:backend:model
    ("stand_in", pa.bool_()),  # a stand-in policy or a stand-in benchmark: the report marks it
]

GENERAL_SCORES = _schema(
    "general_scores",
    "One policy on one general benchmark: the harness's own aggregate per metric (in percent when the "
    "metric is a rate), with the number of samples and where it came from.",
    [*_WHO, ("metric", pa.string()), ("value", pa.float64()), ("n", pa.int32()), *_PROVENANCE],
    ["policy", "benchmark", "metric", "n", "harness", "task", "task_version", "model_identity", "stand_in"],
)

GENERAL_SAMPLES = _schema(
    "general_samples",
    "One policy on one general benchmark, per sample: the reply, what the harness extracted, the target "
    "and the sample's score (0-1; null when the harness gives none per sample).",
    [*_WHO, ("doc_id", pa.string()), ("target", pa.string()), ("response", pa.string()),
     ("filtered", pa.string()), ("score", pa.float64()), ("doc_hash", pa.string())],
    ["policy", "benchmark", "doc_id"],
)

GENERAL_SUMMARY = _schema(
    "general_summary",
    "The report's multi-image table: per policy and benchmark the score (percent) with a bootstrap "
    "interval over samples, and, for a trained policy, the difference to its base with a paired interval.",
    [*_WHO, ("label", pa.string()), ("paper_label", pa.string()), ("metric", pa.string()),
     ("value", pa.float64()), ("low", pa.float64()), ("high", pa.float64()), ("n", pa.int32()),
     ("base_policy", pa.string()), ("diff", pa.float64()), ("diff_low", pa.float64()), ("diff_high", pa.float64()),
     *_PROVENANCE],
    ["policy", "benchmark", "label", "metric", "n", "harness", "task", "model_identity", "stand_in"],
)

TINY_BENCHMARK = _schema(
    "tiny_benchmark",
    "The tiny offline multi-image benchmark: three coloured squares per item, the colour asked for, and "
    "the letter of its image (lmms-eval reads this Parquet through our task definition).",
    [("item_id", pa.string()), ("images", pa.list_(IMAGE)), ("colours", pa.list_(pa.string())),
     ("target", pa.string()), ("answer", pa.string())],
    ["item_id", "images", "colours", "target", "answer"],
)
