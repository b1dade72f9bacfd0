"""covip.core.released: the authors' released test set (JSONL + images + QAS_GT_test.json) as our test
split, built here from the real ground-truth excerpt with drawn images; each bad input fails naming
the line and field, and a failed import writes nothing."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

from covip.core import schemas
from covip.core.io import read_rows, write_artifact, write_artifact_stream
from covip.core.released import ReleasedDataError, iter_released_test, load_released_test
from support.released import QAS_GT, write_released_test


@pytest.fixture
def released(tmp_path):
    return write_released_test(tmp_path / "release")


def _load(data, **changes):
    return load_released_test(changes.get("meta", data["meta"]), changes.get("qas_gt", data["qas_gt"]),
                              changes.get("image_root", data["image_root"]))


def _rewrite_meta(data, records):
    data["meta"].write_text("".join(json.dumps(r) + "\n" for r in records))


def _rewrite_truth(data, tmp_path, change):
    truth = json.loads(QAS_GT.read_text())
    change(truth)
    path = tmp_path / "QAS_GT_test.json"
    path.write_text(json.dumps(truth, indent=2))
    data["qas_gt"] = path


def test_rows_fit_the_split_schema_and_keep_the_released_content(released, tmp_path):
    rows = _load(released)
    truth = json.loads(QAS_GT.read_text())
    assert [r["sample_id"] for r in rows] == ["sample_0", "sample_1", "sample_2"]  # the N-th record is sample_N
    path = tmp_path / "test.parquet"
    write_artifact(rows, path, schemas.SPLIT)
    back = read_rows(path, schemas.SPLIT)
    for row, record, (sample_id, sample) in zip(back, released["records"], truth.items()):
        k = len(sample["qas"])
        assert row["split"] == "test"
        assert row["positive_indices"] == sorted(sample["gts"]) and row["num_positives"] == len(sample["gts"])
        assert row["context_dialogues"] == list(record["dialogues"].values())  # the dict's order is the context order
        assert len(row["context_images"]) == len(row["context_concept_ids"]) == len(row["context_names"]) == k
        assert row["context_names"] == [""] * k and row["context_facts"] is None  # the release has neither
        for concept, cell in zip(record["concepts"], row["context_images"]):
            assert cell["bytes"] == (released["image_root"] / concept.lstrip("/")).read_bytes()
            assert cell["path"] == concept
        assert Image.open(io.BytesIO(row["query_image"]["bytes"])).format == "JPEG"
        for ci in range(k):
            released_qa = sample["qas"][f"concept_{ci}"]["qa"]
            assert [q["question"] for q in row["mcqa"][ci]] == [q["question"] for q in released_qa]
            assert [q["answer"] for q in row["mcqa"][ci]] == [q["correct_answer"] for q in released_qa]
            assert [q["options"] for q in row["mcqa"][ci]] == [q["options"] for q in released_qa]
    # The same photo has the same concept id in every sample; different photos have different ids.
    assert back[1]["context_concept_ids"][0] == back[0]["context_concept_ids"][0]
    assert len({cid for r in back for cid in r["context_concept_ids"]}) == sum(len(r["context_concept_ids"]) for r in back) - 1


def test_an_absolute_image_path_that_exists_is_used_as_it_is(released):
    records = released["records"]
    records[0]["imgs"] = str(released["image_root"] / records[0]["imgs"].lstrip("/"))
    _rewrite_meta(released, records)
    assert _load(released)[0]["query_image"]["path"] == records[0]["imgs"]


@pytest.mark.parametrize("case, message", [
    ("missing_query", r"line 1 \(sample_0\) field 'imgs': image '/CoViP_testset/sample_0/query.jpg' not found"),
    ("missing_concept", r"line 2 \(sample_1\) field 'concepts'\[2\]: image .* not found"),
    ("broken_image", r"line 3 \(sample_2\) field 'concepts'\[1\]"),
    ("fewer_dialogues", r"line 2 \(sample_1\): fields 'concepts' \(3\), 'dialogues' \(2\) and the ground truth's 'qas' \(3 concepts\)"),
    ("more_concepts", r"line 3 \(sample_2\): fields 'concepts' \(4\), 'dialogues' \(3\)"),
    ("fewer_qas", r"line 1 \(sample_0\): fields 'concepts' \(3\), 'dialogues' \(3\) and the ground truth's 'qas' \(2 concepts\)"),
    ("bad_gts", r"for .*line 2 \(sample_1\)\): sample 'sample_1': field 'gts'\[0\] is 7, not a concept index in 0..2"),
    ("repeated_gts", r"line 3 \(sample_2\) field 'gts': \[2, 2\] names a concept twice"),
    ("missing_field", r"line 2 \(sample_1\): field 'dialogues' is missing"),
    ("empty_dialogue", r"line 1 \(sample_0\) field 'dialogues'.dialogue_1: expected a non-empty dialogue text"),
    ("not_json", r"line 4: not valid JSON"),
    ("extra_record", r"line 5 \(sample_3\): .* has no 'sample_3'"),
    ("missing_record", r"1 sample\(s\) without a record .* \['sample_2'\]"),
    ("options_without_d", r"line 1 \(sample_0\) qas concept_0 qa\[0\] field 'options': needs exactly the letters"),
])
def test_each_bad_input_fails_naming_line_and_field(released, tmp_path, case, message):
    records, root = released["records"], released["image_root"]
    if case == "missing_query":
        (root / records[0]["imgs"].lstrip("/")).unlink()
    elif case == "missing_concept":
        (root / records[1]["concepts"][2].lstrip("/")).unlink()
    elif case == "broken_image":
        (root / records[2]["concepts"][1].lstrip("/")).write_bytes(b"not an image")
    elif case == "fewer_dialogues":
        records[1]["dialogues"].pop("dialogue_2")
    elif case == "more_concepts":
        records[2]["concepts"].append(records[2]["concepts"][0])
    elif case == "fewer_qas":
        _rewrite_truth(released, tmp_path, lambda t: t["sample_0"]["qas"].pop("concept_2"))
    elif case == "bad_gts":
        _rewrite_truth(released, tmp_path, lambda t: t["sample_1"].update(gts=[7]))
    elif case == "repeated_gts":
        _rewrite_truth(released, tmp_path, lambda t: t["sample_2"].update(gts=[2, 2]))
    elif case == "missing_field":
        records[1].pop("dialogues")
    elif case == "empty_dialogue":
        records[0]["dialogues"]["dialogue_1"] = "  "
    elif case == "options_without_d":
        _rewrite_truth(released, tmp_path, lambda t: t["sample_0"]["qas"]["concept_0"]["qa"][0]["options"].pop("D"))
    if case == "not_json":
        released["meta"].write_text("".join(json.dumps(r) + "\n" for r in records) + "{not json\n")
    elif case == "extra_record":
        released["meta"].write_text("".join(json.dumps(r) + "\n" for r in records) + "\n" + json.dumps(records[0]) + "\n")
    elif case == "missing_record":
        _rewrite_meta(released, records[:2])
    else:
        _rewrite_meta(released, records)
    with pytest.raises(ReleasedDataError, match=message):
        _load(released)


def test_a_failed_import_writes_nothing(released, tmp_path):
    records = released["records"]
    (released["image_root"] / records[2]["imgs"].lstrip("/")).unlink()  # the LAST sample is bad
    out = tmp_path / "out" / "test.parquet"
    with pytest.raises(ReleasedDataError, match=r"line 4 \(sample_2\)"):  # line 2 of the file is blank
        write_artifact_stream(iter_released_test(released["meta"], released["qas_gt"], released["image_root"]),
                              out, schemas.SPLIT, batch_rows=1)  # two good rows were already flushed
    assert not out.exists() and list(out.parent.iterdir()) == []  # no split, no temporary file


def test_missing_root_or_ground_truth_fail_clearly(released, tmp_path):
    with pytest.raises(ReleasedDataError, match="image root is not a folder"):
        _load(released, image_root=tmp_path / "nowhere")
    with pytest.raises(ReleasedDataError, match="cannot read as JSON"):
        _load(released, qas_gt=tmp_path / "none.json")
    shutil.copy(released["meta"], tmp_path / "empty.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(ReleasedDataError, match="no records"):
        _load(released, meta=tmp_path / "empty.jsonl")
