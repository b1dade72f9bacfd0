"""The released CapEval-QA ground-truth format and captions files brought to score against it (covip.core.formats)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from covip.core.formats import (
    CaptionsFileError,
    QasGtError,
    dump_qas_gt,
    dumps_qas_gt,
    load_captions_file,
    load_qas_gt,
    mcqa_rows_to_records,
    qas_gt_to_records,
    records_to_qas_gt,
)

# The authors' released excerpt, from the shared project folder that sits beside the repository.
FIXTURE = next(
    (
        path
        for path in (
            Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "qas_gt_excerpt.json",
        )
        if path.exists()
    ),
    None,
)


@pytest.fixture(scope="module")
def fixture_path():
    if FIXTURE is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("../shared/fixtures/qas_gt_excerpt.json not found beside the repository")
        pytest.skip("qas_gt_excerpt.json not found")
    return FIXTURE


@pytest.fixture(scope="module")
def fixture_obj(fixture_path):
    return json.loads(fixture_path.read_text(encoding="utf-8"))


def test_fixture_round_trip_is_byte_identical(tmp_path, fixture_path):
    records = load_qas_gt(fixture_path)
    assert dumps_qas_gt(records_to_qas_gt(records)) == fixture_path.read_text(encoding="utf-8")
    dump_qas_gt(records, tmp_path / "out.json")
    assert (tmp_path / "out.json").read_bytes() == fixture_path.read_bytes()


def test_round_trip_keeps_key_order(fixture_obj):
    back = records_to_qas_gt(qas_gt_to_records(fixture_obj))
    assert back == fixture_obj
    assert list(back) == list(fixture_obj)
    assert list(back["sample_0"]) == ["qas", "gts"]
    assert list(back["sample_0"]["qas"]["concept_0"]["qa"][0]) == ["id", "question", "options", "correct_answer"]


def test_records_hold_our_representation(fixture_obj):
    records = qas_gt_to_records(fixture_obj)
    assert [r["sample_id"] for r in records] == ["sample_0", "sample_1", "sample_2"]
    first = records[0]
    assert first["positive_indices"] == [0]
    assert len(first["questions"]) == 3 and all(len(qs) == 3 for qs in first["questions"])
    assert first["questions"][0][0] == {
        "question_id": "Q1",
        "question": "What type of trees does Seth get especially excited to pass?",
        "options": {
            "A": "Oak trees",
            "B": "Cherry blossom trees",
            "C": "Maple trees",
            "D": "The answer cannot be determined",
        },
        "answer": "B",
    }
    # non-ASCII text survives (the fixture has a typographic apostrophe)
    assert "user\u2019s" in records[2]["questions"][0][2]["question"]


def test_concepts_out_of_order_are_sorted_by_index(fixture_obj):
    sample = fixture_obj["sample_0"]
    shuffled = {"sample_0": {"qas": dict(reversed(list(sample["qas"].items()))), "gts": sample["gts"]}}
    (record,) = qas_gt_to_records(shuffled)
    assert record["questions"][0] == qas_gt_to_records(fixture_obj)[0]["questions"][0]


def _broken(fixture_obj, mutate):
    obj = copy.deepcopy(fixture_obj)
    mutate(obj)
    return obj


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda o: o["sample_1"].pop("gts"), r"sample 'sample_1': field 'gts' is missing"),
        (lambda o: o["sample_1"].__setitem__("gts", [5]), r"sample 'sample_1': field 'gts'\[0\] is 5"),
        (lambda o: o["sample_1"].__setitem__("gts", "0"), r"sample 'sample_1': field 'gts' must be a list"),
        (lambda o: o["sample_1"].__setitem__("extra", 1), r"sample 'sample_1': unexpected field"),
        (
            lambda o: o["sample_2"]["qas"]["concept_1"]["qa"][2].__setitem__("correct_answer", "E"),
            r"sample 'sample_2' concept 'concept_1' qa\[2\]: field 'correct_answer' is 'E'",
        ),
        (
            lambda o: o["sample_0"]["qas"]["concept_2"]["qa"][0].pop("question"),
            r"sample 'sample_0' concept 'concept_2' qa\[0\]: field 'question' is missing",
        ),
        (
            lambda o: o["sample_0"]["qas"]["concept_0"]["qa"][1].__setitem__("options", ["a", "b"]),
            r"concept 'concept_0' qa\[1\]: field 'options' must be",
        ),
        (
            lambda o: o["sample_0"]["qas"]["concept_0"]["qa"][1]["options"].__setitem__("B", 3),
            r"concept 'concept_0' qa\[1\]: field 'options'.B must be a string",
        ),
        (
            lambda o: o["sample_0"]["qas"].__setitem__("concept_x", {"qa": []}),
            r"concept 'concept_x': key must look like",
        ),
        (lambda o: o["sample_0"]["qas"].pop("concept_1"), r"sample 'sample_0': field 'qas' has no concept_1"),
        (lambda o: o["sample_0"]["qas"]["concept_0"].__setitem__("qa", {}), r"concept 'concept_0': field 'qa' must be a list"),
        (lambda o: o.__setitem__("sample_3", []), r"sample 'sample_3': must be an object"),
    ],
)
def test_malformed_input_names_sample_concept_and_field(fixture_obj, mutate, message):
    with pytest.raises(QasGtError, match=message):
        qas_gt_to_records(_broken(fixture_obj, mutate))


def test_load_names_the_file(tmp_path):
    bad = tmp_path / "gt.json"
    bad.write_text('{"sample_0": ', encoding="utf-8")
    with pytest.raises(QasGtError, match=r"gt.json: not valid JSON"):
        load_qas_gt(bad)
    bad.write_text('{"sample_0": {"qas": {}, "gts": [0]}}', encoding="utf-8")
    with pytest.raises(QasGtError, match=r"gt.json: sample 'sample_0': field 'gts'\[0\]"):
        load_qas_gt(bad)
    with pytest.raises(QasGtError, match="cannot read"):
        load_qas_gt(tmp_path / "missing.json")


def test_records_to_qas_gt_rejects_duplicate_samples(fixture_obj):
    records = qas_gt_to_records(fixture_obj)
    with pytest.raises(QasGtError, match="appears twice"):
        records_to_qas_gt(records + records[:1])


def _mcqa_row(sample_id, index, status="ok"):
    questions = [
        {
            "question_id": f"Q{i + 1}",
            "question": f"Question {i} about concept {index}?",
            "options": {"A": "x", "B": "y", "C": "z", "D": "The answer cannot be determined"},
            "answer": "ABC"[i],
            "supported": True,
        }
        for i in range(3)
    ]
    return {
        "sample_id": sample_id,
        "concept_id": f"c{index}",
        "context_index": index,
        "questions": questions if status == "ok" else None,
        "status": status,
        "failure_reason": "" if status == "ok" else "invalid_output: x",
        "attempts": 1,
        "raw_response": None,
        "writer": "w",
    }


def test_our_mcqa_table_exports_to_the_released_format(tmp_path):
    contexts = [{"sample_id": "s7", "context_concept_ids": ["c0", "c1"], "positive_indices": [1]}]
    rows = [_mcqa_row("s7", 1), _mcqa_row("s7", 0)]
    records = mcqa_rows_to_records(rows, contexts)
    dump_qas_gt(records, tmp_path / "gt.json")
    obj = json.loads((tmp_path / "gt.json").read_text())
    assert obj["s7"]["gts"] == [1]
    assert list(obj["s7"]["qas"]) == ["concept_0", "concept_1"]
    assert obj["s7"]["qas"]["concept_1"]["qa"][2] == {
        "id": "Q3",
        "question": "Question 2 about concept 1?",
        "options": {"A": "x", "B": "y", "C": "z", "D": "The answer cannot be determined"},
        "correct_answer": "C",
    }
    assert load_qas_gt(tmp_path / "gt.json") == records


def test_export_refuses_missing_or_failed_rows():
    contexts = [{"sample_id": "s7", "context_concept_ids": ["c0", "c1"], "positive_indices": [0]}]
    with pytest.raises(QasGtError, match=r"sample 's7' context index 1 \(concept_id=c1\): no MCQA row"):
        mcqa_rows_to_records([_mcqa_row("s7", 0)], contexts)
    with pytest.raises(QasGtError, match="MCQA row failed"):
        mcqa_rows_to_records([_mcqa_row("s7", 0), _mcqa_row("s7", 1, status="failed")], contexts)


# ---------------------------------------------------------------------------------------------------
# Captions made elsewhere


def test_load_captions_file_formats(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"sample_0": "a", "sample_1": None}))
    assert load_captions_file(tmp_path / "c.json") == {"sample_0": "a", "sample_1": None}
    (tmp_path / "c.jsonl").write_text('{"sample_id": "sample_0", "caption": "a"}\n\n{"sample_id": "sample_1", "caption": "b"}\n')
    assert load_captions_file(tmp_path / "c.jsonl") == {"sample_0": "a", "sample_1": "b"}
    pq.write_table(pa.table({"sample_id": ["sample_0", "sample_1"], "caption": ["a", "b"], "status": ["ok", "failed"]}),
                   tmp_path / "c.parquet")
    assert load_captions_file(tmp_path / "c.parquet") == {"sample_0": "a", "sample_1": None}


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("list.json", '["a"]', "must be an object"),
        ("num.json", '{"sample_0": 3}', r"key 'sample_0' field 'caption'"),
        ("dup.jsonl", '{"sample_id": "s", "caption": "a"}\n{"sample_id": "s", "caption": "b"}', r"line 2.*second caption"),
        ("keys.jsonl", '{"id": "s", "text": "a"}', r"line 1: must be an object with 'sample_id' and 'caption'"),
        ("c.txt", "x", "unknown captions format"),
    ],
)
def test_load_captions_file_errors_name_the_file_and_row(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CaptionsFileError, match=message) as error:
        load_captions_file(path)
    assert str(path) in str(error.value)


def test_parquet_captions_of_several_policies_or_without_columns_are_refused(tmp_path):
    several = tmp_path / "several.parquet"
    pq.write_table(pa.table({"policy": ["a", "b"], "sample_id": ["s0", "s1"], "caption": ["x", "y"]}), several)
    with pytest.raises(CaptionsFileError, match="captions of several policies"):
        load_captions_file(several)
    bare = tmp_path / "bare.parquet"
    pq.write_table(pa.table({"sample_id": ["s0"]}), bare)
    with pytest.raises(CaptionsFileError, match=r"missing column\(s\) \['caption'\]"):
        load_captions_file(bare)
    with pytest.raises(CaptionsFileError, match="does not exist"):
        load_captions_file(tmp_path / "nothing.json")
