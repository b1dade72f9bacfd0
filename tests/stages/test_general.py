"""General multi-image benchmarks: the tiny benchmark, per-sample scores from lmms-eval records, the
summary with trained-minus-base intervals, and the report's table beside the paper's rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from covip.core import schemas
from covip.core.io import read_rows, write_artifact
from covip.harness.catalog import catalog
from covip.stages.general.evaluate import sample_rows, sample_score, score_rows
from covip.stages.general.settings import GeneralSettings
from covip.stages.general.summary import general_section, summarize_general
from covip.stages.general.tiny import build_tiny_benchmark
from covip.stages.report.tables import load_paper_results

PAPER = Path(__file__).resolve().parents[2] / "reference" / "paper_results.csv"
PROVENANCE = {"harness": "lmms-eval 0.7.3", "task": "t", "task_version": "1.0", "harness_model": "qwen2_5_vl",
              "route": "in_process", "model_identity": "p:transformers:/m", "stand_in": False}


def test_tiny_benchmark_is_deterministic_and_round_trips(tmp_path):
    rows = build_tiny_benchmark(6, seed=3)
    assert rows == build_tiny_benchmark(6, seed=3) and rows != build_tiny_benchmark(6, seed=4)
    assert [r["answer"] for r in rows] == ["A", "B", "C", "A", "B", "C"]
    assert all(r["colours"]["ABC".index(r["answer"])] == r["target"] and len(set(r["colours"])) == 3 for r in rows)
    write_artifact(rows, tmp_path / "t.parquet", schemas.TINY_BENCHMARK)
    assert read_rows(tmp_path / "t.parquet", schemas.TINY_BENCHMARK)[0]["images"][0][:4] == b"\x89PNG"


def test_per_sample_scores_from_lmms_eval_records(tmp_path):
    muir, tiny = catalog()["muirbench"], catalog()["tiny_multi_image"]
    assert sample_score(muir, {"muirbench_score_overall": {"pred": "b ", "answer": "B"}}) == 1.0
    assert sample_score(muir, {"muirbench_score_overall": {"pred": "C", "answer": "B"}}) == 0.0
    assert sample_score(tiny, {"accuracy": 1.0}) == 1.0 and sample_score(tiny, {}) is None
    samples = sample_rows(tiny, "p", [{"doc_id": 0, "target": "A", "resps": [["A."]], "filtered_resps": ["A."],
                                       "accuracy": 1.0, "doc_hash": "h"},
                                      {"doc_id": 1, "target": "B", "resps": [["x"]], "filtered_resps": ["x"], "accuracy": 0.0}])
    assert [(s["doc_id"], s["response"], s["score"]) for s in samples] == [("0", "A.", 1.0), ("1", "x", 0.0)]
    scores = score_rows(tiny, "p", {"accuracy,none": 0.5, "alias": "t"}, samples, PROVENANCE)
    assert scores[0]["value"] == 50.0 and scores[0]["n"] == 2
    assert score_rows(tiny, "p", {}, samples, PROVENANCE)[0]["value"] == 50.0  # no aggregate: the per-sample mean
    write_artifact(samples, tmp_path / "samples.parquet", schemas.GENERAL_SAMPLES)
    write_artifact(scores, tmp_path / "scores.parquet", schemas.GENERAL_SCORES)


def _rows(policy, values):
    samples = [{"policy": policy, "benchmark": "mmiu", "doc_id": str(i), "score": v} for i, v in enumerate(values)]
    scores = [{"policy": policy, "benchmark": "mmiu", "metric": "accuracy", "value": 100.0 * sum(values) / len(values),
               "n": len(values), **PROVENANCE}]
    return scores, samples


def test_summary_gives_intervals_and_the_paired_difference_to_the_base(tmp_path):
    base_scores, base_samples = _rows("base", [1, 0, 0, 1, 0, 1, 0, 0, 1, 0])
    trained_scores, trained_samples = _rows("trained", [1, 1, 0, 1, 0, 1, 1, 0, 1, 0])
    rows = summarize_general(base_scores + trained_scores, base_samples + trained_samples, {"trained": "base"},
                             {"mmiu": ("MMIU", "MMIU")}, n_bootstrap=500, seed=0)
    by = {r["policy"]: r for r in rows}
    assert by["base"]["diff"] is None and by["trained"]["base_policy"] == "base"
    assert by["trained"]["diff"] == pytest.approx(20.0)
    assert by["trained"]["diff_low"] <= 20.0 <= by["trained"]["diff_high"] and by["trained"]["diff_low"] >= 0.0
    assert by["base"]["low"] <= 40.0 <= by["base"]["high"]
    write_artifact(rows, tmp_path / "summary.parquet", schemas.GENERAL_SUMMARY)
    text = general_section(rows, load_paper_results(PAPER))
    assert "| Qwen3-VL-8B (paper) | 86.7 | 47.3 | 79.8 | 48.3 |" in text
    assert "| Qwen3-VL-8B+CoViP − Qwen3-VL-8B (paper) | +1.3 | +4.0 | +2.0 | +1.5 |" in text
    assert "| ours: trained − base | – | – | – | +20.0 [" in text


def test_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="model_types"):
        GeneralSettings(model_types={"p": "llava"})
    with pytest.raises(ValueError, match="limit"):
        GeneralSettings(limit=0)
