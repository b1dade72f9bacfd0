"""Stages 1-7: the benchmark's artifacts, up to the published splits."""

from __future__ import annotations

import json

import pyarrow as pa

from covip.core.schemas.types import FACT, HF_IMAGE, IMAGE, PUBLISHED_QUESTION, QUESTION, TURN, _schema


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
