"""Stage 7: published splits load with `datasets`, sizes and strata are honoured, every sample is explained."""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from covip.core import schemas
from covip.core.io import ArtifactWriter, BadImageError, ColumnLookup, encode_png, read_rows, write_artifact
from covip.stages.splits import SplitError, SplitSettings, iter_splits, make_splits

SEED = 5
CATEGORIES = ["person", "animal", "object", "place"]


def _png(colour, size=(24, 20), mode="RGBA") -> bytes:
    return encode_png(Image.new(mode, size, colour))


def build_world(num_samples: int = 80, seed: int = 0):
    """A consistent set of stage 1-6 tables: every sample usable unless a test breaks it."""
    rng = np.random.default_rng(seed)
    concepts = []
    for index in range(30):
        colour = tuple(int(c) for c in rng.integers(0, 256, 3)) + (255,)
        concepts.append(
            {
                "concept_id": f"c{index:03d}",
                "category": CATEGORIES[index % 4],
                "kind": "blob",
                "source": "test",
                "name": f"Name{index:03d}",
                "image": _png(colour),
                "width": 24,
                "height": 20,
            }
        )
    queries, contexts, dialogues, mcqas = [], [], [], []
    for index in range(num_samples):
        sample_id = f"s{index:03d}"
        # Uneven strata, as in the paper: more 1- and 2-concept samples than 4-concept ones.
        num_positives = [1, 1, 1, 2, 2, 2, 3, 3, 4][index % 9]
        chosen = rng.choice(30, size=num_positives + 2, replace=False)
        positives = [f"c{i:03d}" for i in chosen[:num_positives]]
        members = [f"c{i:03d}" for i in chosen]
        rng.shuffle(members)
        queries.append(
            {
                "sample_id": sample_id,
                "positive_concept_ids": positives,
                "num_positives": num_positives,
                "instruction": "put them together",
                "image": _png((index % 256, 80, 120), size=(40, 32), mode="RGB"),
                "generator": "test",
                "layout": None,
                "status": "ok",
                "error": None,
            }
        )
        contexts.append(
            {
                "sample_id": sample_id,
                "context_concept_ids": members,
                "positive_indices": sorted(members.index(p) for p in positives),
                "negative_concept_ids": [m for m in members if m not in positives],
                "negative_similarity": [0.5] * 2,
                "embedder": "test",
            }
        )
        for position, concept_id in enumerate(members):
            name = concepts[int(concept_id[1:])]["name"]
            facts = [{"kind": "place", "text": f"{name} was at the harbour"}]
            dialogues.append(
                {
                    "sample_id": sample_id,
                    "concept_id": concept_id,
                    "context_index": position,
                    "name": name,
                    "facts": facts,
                    "turns": [{"role": "user", "text": f"This is {name}."}, {"role": "model", "text": "Noted."}],
                    "dialogue": f"User: This is {name}.\nModel: Noted.",
                    "status": "ok",
                    "failure_reason": None,
                    "attempts": 1,
                    "raw_response": None,
                    "writer": "test",
                }
            )
            questions = [
                {
                    "question_id": f"{sample_id}-{position}-{q}",
                    "question": f"Where was {name}? ({q})",
                    "options": {"A": "harbour", "B": "market", "C": "school", "D": "Cannot be determined"},
                    "answer": "A",
                    "supported": True,
                }
                for q in range(3)
            ]
            mcqas.append(
                {
                    "sample_id": sample_id,
                    "concept_id": concept_id,
                    "context_index": position,
                    "questions": questions,
                    "status": "ok",
                    "failure_reason": None,
                    "attempts": 1,
                    "raw_response": None,
                    "writer": "test",
                }
            )
    return {"queries": queries, "contexts": contexts, "concepts": concepts, "dialogues": dialogues, "mcqas": mcqas}


def split(world, settings=None, seed=SEED, **kwargs):
    return make_splits(
        world["queries"], world["contexts"], world["concepts"], world["dialogues"], world["mcqas"],
        settings or SplitSettings(), seed, **kwargs,
    )


def test_splits_load_with_datasets_and_images_decode(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    world = build_world(30)
    train, test, _ = split(world, SplitSettings(test_size=9))
    write_artifact(train, tmp_path / "train.parquet", schemas.SPLIT)
    write_artifact(test, tmp_path / "test.parquet", schemas.SPLIT)
    loaded = datasets.load_dataset(
        "parquet",
        data_files={"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet")},
        cache_dir=str(tmp_path / "hf_cache"),
    )
    assert loaded["train"].num_rows == 21 and loaded["test"].num_rows == 9
    row = loaded["test"][0]
    assert isinstance(row["query_image"], Image.Image) and row["query_image"].size == (40, 32)
    assert len(row["context_images"]) == len(row["context_names"]) == len(row["context_dialogues"]) == len(row["mcqa"])
    assert all(isinstance(image, Image.Image) for image in row["context_images"])
    for record in loaded["train"]:
        assert all(isinstance(image, Image.Image) for image in record["context_images"])
    # The published question layout and the facts JSON.
    question = row["mcqa"][0][0]
    assert set(question) == {"question", "options", "answer"}
    assert set(question["options"]) == {"A", "B", "C", "D"} and question["answer"] == "A"
    facts = json.loads(row["context_facts"])
    assert len(facts) == len(row["context_names"]) and facts[0][0]["kind"] == "place"


def test_streamed_splits_match_the_whole_table_ones(tmp_path):
    """The workflow's path: queries read without images, each image looked up by sample_id from a
    file of several row groups, rows written as they come; same rows and report as make_splits."""
    world = build_world(40)
    train, test, report = split(world, SplitSettings(test_fraction=0.3))
    write_artifact(world["queries"], tmp_path / "queries.parquet", schemas.QUERIES)
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(tmp_path / "queries.parquet"), tmp_path / "grouped.parquet", row_group_size=7)
    lookup = ColumnLookup(tmp_path / "grouped.parquet", schemas.QUERIES, "sample_id", "image")
    bare = [{k: v for k, v in q.items() if k != "image"} for q in world["queries"]]
    streamed_report, rows = iter_splits(
        bare, world["contexts"], world["concepts"], world["dialogues"], world["mcqas"], SplitSettings(test_fraction=0.3),
        SEED, query_image=lookup.get,
    )
    assert streamed_report == report
    with ArtifactWriter(tmp_path / "train.parquet", schemas.SPLIT, batch_rows=5) as train_out, \
            ArtifactWriter(tmp_path / "test.parquet", schemas.SPLIT, batch_rows=5) as test_out:
        for row in rows:
            (train_out if row["split"] == "train" else test_out).write([row])
    assert read_rows(tmp_path / "train.parquet", schemas.SPLIT) == read_rows_of(train, tmp_path / "t1.parquet")
    assert read_rows(tmp_path / "test.parquet", schemas.SPLIT) == read_rows_of(test, tmp_path / "t2.parquet")
    assert pq.ParquetFile(tmp_path / "train.parquet").num_row_groups > 1


def read_rows_of(rows, path):
    write_artifact(rows, path, schemas.SPLIT)
    return read_rows(path, schemas.SPLIT)


def test_rows_match_their_sources():
    world = build_world(30)
    train, test, _ = split(world, SplitSettings(test_size=10))
    queries = {q["sample_id"]: q for q in world["queries"]}
    concepts = {c["concept_id"]: c for c in world["concepts"]}
    for row in train + test:
        query = queries[row["sample_id"]]
        assert row["query_image"] == {"bytes": query["image"], "path": None}
        ids = row["context_concept_ids"]
        assert sorted(ids[i] for i in row["positive_indices"]) == sorted(query["positive_concept_ids"])
        assert row["num_positives"] == len(row["positive_indices"])
        assert row["context_names"] == [concepts[c]["name"] for c in ids]
        assert row["context_categories"] == [concepts[c]["category"] for c in ids]
        assert [image["bytes"] for image in row["context_images"]] == [concepts[c]["image"] for c in ids]
        for name, text, questions in zip(row["context_names"], row["context_dialogues"], row["mcqa"]):
            assert name in text and len(questions) == 3 and name in questions[0]["question"]
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in test} == {"test"}


def test_sizes_are_honoured_and_the_rest_is_unused():
    world = build_world(80)
    train, test, report = split(world, SplitSettings(train_size=40, test_size=18))
    assert len(train) == 40 and len(test) == 18
    assert not {r["sample_id"] for r in train} & {r["sample_id"] for r in test}
    outcomes = Counter(r["outcome"] for r in report)
    assert outcomes == {"train": 40, "test": 18, "unused": 22}

    # One size given: the other split takes the rest.
    train, test, _ = split(world, SplitSettings(test_size=25))
    assert (len(train), len(test)) == (55, 25)
    train, test, _ = split(world, SplitSettings(train_size=70, test_size=0))
    assert (len(train), len(test)) == (70, 10)
    # No size given: test_fraction.
    train, test, _ = split(world, SplitSettings(test_fraction=0.25))
    assert (len(train), len(test)) == (60, 20)


def test_test_split_is_stratified_by_num_positives():
    world = build_world(90)  # strata 1:30, 2:30, 3:20, 4:10
    train, test, _ = split(world, SplitSettings(test_size=30))
    assert Counter(r["num_positives"] for r in test) == {1: 10, 2: 10, 3: 7, 4: 3} or Counter(
        r["num_positives"] for r in test
    ) == {1: 10, 2: 10, 3: 6, 4: 4}
    assert Counter(r["num_positives"] for r in train) + Counter(r["num_positives"] for r in test) == {1: 30, 2: 30, 3: 20, 4: 10}

    # A small test split still covers every stratum.
    _, small, _ = split(world, SplitSettings(test_size=4))
    assert sorted(r["num_positives"] for r in small) == [1, 2, 3, 4]
    # Without stratification the counts follow the hash order instead (and need not cover all).
    _, unstratified, _ = split(world, SplitSettings(test_size=30, stratify=False))
    assert len(unstratified) == 30


def test_reproducible_from_the_seed():
    world = build_world(60)
    first = split(world, SplitSettings(test_size=20))
    assert split(world, SplitSettings(test_size=20)) == first
    other = split(world, SplitSettings(test_size=20), seed=SEED + 1)
    assert {r["sample_id"] for r in other[1]} != {r["sample_id"] for r in first[1]}


def _break(world):
    """Make one sample fail at each stage; returns the broken sample ids by cause."""
    broken = {}
    query = world["queries"][1]
    query.update(status="failed", image=None, error="quota exhausted")
    broken["generation_failed"] = query["sample_id"]

    filtered = world["queries"][2]["sample_id"]
    world["contexts"] = [c for c in world["contexts"] if c["sample_id"] != filtered]
    for table in ("dialogues", "mcqas"):
        world[table] = [r for r in world[table] if r["sample_id"] != filtered]
    broken["filtered"] = filtered

    dialogue = next(d for d in world["dialogues"] if d["sample_id"] == world["queries"][3]["sample_id"] and d["context_index"] == 1)
    dialogue.update(status="failed", dialogue=None, failure_reason="name_inconsistent")
    broken["dialogue_failed"] = dialogue["sample_id"]

    mcqa = next(m for m in world["mcqas"] if m["sample_id"] == world["queries"][4]["sample_id"])
    mcqa.update(status="failed", questions=None, failure_reason="invalid_json")
    broken["mcqa_failed"] = mcqa["sample_id"]

    unsupported = next(m for m in world["mcqas"] if m["sample_id"] == world["queries"][5]["sample_id"])
    unsupported["questions"][2]["supported"] = False
    broken["unsupported_question"] = unsupported["sample_id"]
    return broken


def test_report_explains_every_sample_and_drops_carry_reasons():
    world = build_world(40)
    broken = _break(world)
    decisions = [
        {"sample_id": q["sample_id"], "kept": q["sample_id"] != broken["filtered"], "reason": "", "detail": "", "verifier": "t"}
        for q in world["queries"]
    ]
    decisions[2].update(reason="fidelity", detail="concept c007 is cut off")
    train, test, report = split(world, SplitSettings(test_size=10, train_size=20, require_supported_questions=True), decisions_rows=decisions)

    assert [r["sample_id"] for r in report] == [q["sample_id"] for q in world["queries"]]
    assert all(r["reason"] for r in report)
    by_id = {r["sample_id"]: r for r in report}
    for cause, sample_id in broken.items():
        assert by_id[sample_id]["outcome"] == "dropped"
        assert by_id[sample_id]["reason"].startswith(cause + ":"), (cause, by_id[sample_id]["reason"])
    assert "name_inconsistent" in by_id[broken["dialogue_failed"]]["reason"]
    assert "context 1" in by_id[broken["dialogue_failed"]]["reason"]
    assert "fidelity" in by_id[broken["filtered"]]["reason"] and "cut off" in by_id[broken["filtered"]]["reason"]
    assert "quota exhausted" in by_id[broken["generation_failed"]]["reason"]
    published = {r["sample_id"] for r in train + test}
    assert not published & set(broken.values())
    for row in report:
        assert (row["outcome"] in ("train", "test")) == (row["sample_id"] in published)
    assert Counter(r["outcome"] for r in report) == {"train": 20, "test": 10, "unused": 5, "dropped": 5}
    counts = {q["sample_id"]: q["num_positives"] for q in world["queries"]}
    assert all(r["num_positives"] == counts[r["sample_id"]] for r in report)

    # Without the decisions table the filtered sample is still explained; unsupported questions pass.
    _, _, report = split(world, SplitSettings(test_size=10))
    by_id = {r["sample_id"]: r for r in report}
    assert by_id[broken["filtered"]]["reason"].startswith("filtered:")
    assert by_id[broken["unsupported_question"]]["outcome"] in ("train", "test")


def test_a_failed_dialogue_drops_its_sample():
    world = build_world(12)
    victim = world["dialogues"][5]
    victim.update(status="failed", failure_reason="no_objective_fact")
    train, test, report = split(world, SplitSettings(test_size=3))
    row = next(r for r in report if r["sample_id"] == victim["sample_id"])
    assert row["outcome"] == "dropped" and row["reason"].startswith("dialogue_failed:") and "no_objective_fact" in row["reason"]
    assert victim["sample_id"] not in {r["sample_id"] for r in train + test}
    assert len(train) + len(test) == 11


def test_too_few_samples_fail_with_the_count():
    world = build_world(20)
    world["dialogues"][0]["status"] = "failed"
    with pytest.raises(SplitError, match=r"asks for 25 samples but only 19 are usable"):
        split(world, SplitSettings(train_size=15, test_size=10))
    with pytest.raises(SplitError, match="only 19"):
        split(world, SplitSettings(test_size=20))
    for dialogue in world["dialogues"]:
        dialogue["status"] = "failed"
    with pytest.raises(SplitError, match="no usable samples out of 20"):
        split(world, SplitSettings())


def test_inconsistent_inputs_fail_clearly():
    world = build_world(6)
    world["dialogues"][0]["concept_id"] = "c999"
    with pytest.raises(SplitError, match=r"dialogues: sample 's000' context_index 0"):
        split(world)

    world = build_world(6)
    world["contexts"][2]["positive_indices"] = [0, 1, 2, 3]
    with pytest.raises(SplitError, match="s002"):
        split(world)

    world = build_world(6)
    world["queries"][3]["image"] = b"garbage"
    with pytest.raises(BadImageError, match=r"queries row 3 \(sample_id=s003\) field 'image'"):
        split(world, SplitSettings(test_size=3))

    world = build_world(6)
    world["mcqas"].append(dict(world["mcqas"][0]))
    with pytest.raises(SplitError, match="appears twice"):
        split(world)


def test_non_png_query_images_are_published_as_png():
    world = build_world(6)
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format="JPEG")
    world["queries"][0]["image"] = buffer.getvalue()
    train, test, _ = split(world, SplitSettings(test_size=2))
    row = next(r for r in train + test if r["sample_id"] == "s000")
    assert row["query_image"]["bytes"].startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "overrides, field_name",
    [
        ({"train_size": -1}, "train_size"),
        ({"test_size": 2.5}, "test_size"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"min_test_per_stratum": -2}, "min_test_per_stratum"),
        ({"questions_per_concept": -1}, "questions_per_concept"),
    ],
)
def test_settings_reject_bad_values(overrides, field_name):
    with pytest.raises(ValueError, match=field_name):
        SplitSettings(**overrides)
