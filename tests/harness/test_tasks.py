"""Our lmms-eval task functions (plain functions, loaded by lmms-eval by path) and the job's task layout."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from covip.harness.catalog import catalog
from covip.harness.tasks import BASE_SUFFIX, stage_task


def _utils(folder: str):
    path = catalog()["mmiu"].task_folder().parent / folder / "utils.py"
    spec = importlib.util.spec_from_file_location(f"task_{folder}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("reply, expected", [("B", 1.0), ("B. Image 2", 1.0), ("The answer is B", 1.0), ("A", 0.0), ("", 0.0)])
def test_tiny_scoring(reply, expected):
    assert _utils("tiny_multi_image").process_results({"answer": "B"}, [reply]) == {"accuracy": expected}


def test_tiny_text_variant_describes_the_images_in_words():
    utils = _utils("tiny_multi_image")
    kwargs = {"description": "Image {number} is a {colour} square.", "question": "Which image shows a {colour} square?",
              "option": "Image {number}", "post_prompt": "Letter only."}
    text = utils.doc_to_text({"colours": ["red", "blue", "green"], "target": "blue"}, kwargs)
    assert "Image 2 is a blue square." in text and "B. Image 2" in text and utils.no_visual({}) == []


@pytest.mark.parametrize("answer, reply, expected", [
    ([1, 0, 2], "[1, 0, 2]", 1.0), ([1, 0, 2], "[1, 1, 2]", 2 / 3), ("B", "B", 1.0), (2, "C", 1.0), ("Paris", "paris", 1.0),
])
def test_mm_niah_scoring(answer, reply, expected):
    assert _utils("mm_niah").score({"answer": answer}, reply) == pytest.approx(expected)


@pytest.mark.parametrize("answer, reply, expected", [("2, 1, 3", "2, 1, 3", 1.0), ("-1", "-1", 1.0), ("2, 1, 3", "2, 3, 1", 0.0)])
def test_mmneedle_scoring(answer, reply, expected):
    assert _utils("mmneedle").process_results({"answer": answer}, [reply]) == {"accuracy": expected}


def test_stage_task_points_the_task_at_local_data(tmp_path):
    entry = catalog()["tiny_multi_image_text"]
    folder = stage_task(entry, tmp_path / "data", tmp_path / "job")
    override = yaml.safe_load((folder / f"{entry.task}.yaml").read_text())
    assert override["task"] == entry.task and override["include"].endswith(BASE_SUFFIX)
    assert override["dataset_path"] == "parquet"
    assert override["dataset_kwargs"]["data_files"]["test"] == str((tmp_path / "data" / "test.parquet").resolve())
    assert [p.name for p in folder.glob("*.yaml")] == [f"{entry.task}.yaml"]  # only the job's task is indexed
