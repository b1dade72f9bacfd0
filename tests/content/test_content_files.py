"""Benchmark content files (covip.content.book, .facts, .diagnostic_lines): the packaged YAML, a user's
replacement of the same shape, the errors that name the file and key, and the fingerprint that reruns
a stage when its content changes."""

from __future__ import annotations

import io
from importlib import resources

import pytest
import yaml

from covip.content.book import CONTENT_NAMES, ContentError, content_fingerprint, load_content
from covip.content.diagnostic_lines import DialogueLines
from covip.content.facts import FactError, FactLists, fact_lists, sample_facts
from covip.stages.diagnostics.sets import build_diagnostic_set
from covip.stages.diagnostics.settings import DiagnosticSettings
from support.diagnostics import disc_pool


def packaged(name: str) -> dict:
    return yaml.safe_load(yaml.safe_dump(load_content(name)))  # a deep copy: load_content is cached


def write(tmp_path, name: str, data) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("name", CONTENT_NAMES)
def test_packaged_content_loads(name):
    assert isinstance(load_content(name), dict) and load_content(name)


@pytest.mark.parametrize(
    "name, path, message",
    [
        ("recipes", None, r"no content named 'recipes'; known: \['facts', 'diagnostic_lines'\]"),
        ("facts", "/nonexistent/facts.yaml", r"content.facts: replacement file /nonexistent/facts.yaml does not exist"),
    ],
)
def test_unknown_content_and_missing_files_are_named(name, path, message):
    with pytest.raises(ContentError, match=message):
        load_content(name, path)


def test_a_replacement_that_is_not_yaml_is_named(tmp_path):
    path = write(tmp_path, "broken", "openers: [unclosed")
    with pytest.raises(ContentError, match=r"content.diagnostic_lines \(.*broken.yaml\): not valid YAML"):
        load_content("diagnostic_lines", path)


def test_fingerprint_follows_the_text_of_the_named_files(tmp_path):
    same = write(tmp_path, "same", (resources.files("covip.content") / "facts.yaml").read_text(encoding="utf-8"))
    edited = write(tmp_path, "edited", packaged("facts") | {"months": ["Smarch"]})
    base = content_fingerprint(None, "facts", "diagnostic_lines")
    assert base == content_fingerprint({}, "diagnostic_lines", "facts")  # order of names does not matter
    assert content_fingerprint({"facts": same}, "facts", "diagnostic_lines") == base  # a byte-identical copy
    assert content_fingerprint({"facts": edited}, "facts", "diagnostic_lines") != base
    assert content_fingerprint({"facts": edited}, "diagnostic_lines") == content_fingerprint(None, "diagnostic_lines")


# ----- facts


def test_facts_come_from_a_replacement_word_list(tmp_path):
    data = packaged("facts")
    data["encounter_places"] = ["at the Zeppelin Dock of {city}"]
    lists = fact_lists(write(tmp_path, "facts", data))
    concept = {"concept_id": "c1", "category": "person"}
    facts = sample_facts(concept, 3, "s0", 5, lists=lists)
    assert [f["text"].startswith("at the Zeppelin Dock of ") for f in facts if f["kind"] == "place"] == [True]
    assert all(not f["text"].startswith("at the Zeppelin Dock") for f in sample_facts(concept, 3, "s0", 5)
               if f["kind"] == "place")  # the packaged lists are untouched


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("months"), r"missing key\(s\) \['months'\]"),
        (lambda d: d.update(weekdays=[]), "'weekdays' must be a non-empty list of strings"),
        (lambda d: d["words"].pop("animal"), "'words' needs the lists of category 'animal'"),
        (lambda d: d["words"]["object"].update(habit=[""]), "'words.object.habit' must be a non-empty list of strings"),
    ],
)
def test_malformed_word_lists_name_the_key(change, message):
    data = packaged("facts")
    change(data)
    with pytest.raises(FactError, match=message):
        FactLists.from_data(data, where="my_facts.yaml")


# ----- diagnostic dialogue lines


def test_dialogue_lines_from_a_replacement_file(tmp_path, prompts):
    data = packaged("diagnostic_lines")
    data["openers"] = [["Voici {name}, vu à {place} le {date}.", "Noté : {name}, {place}, {date}."]]
    path = write(tmp_path, "lines", data)
    assert DialogueLines.load(path).openers == (("Voici {name}, vu à {place} le {date}.", "Noté : {name}, {place}, {date}."),)
    rows = build_diagnostic_set("lsd", disc_pool(), DiagnosticSettings(items_per_task=2, image_size=64), seed=1,
                                progress_file=io.StringIO(), prompts=prompts, content_path=path)
    assert all(d.startswith("User: Voici ") for row in rows for d in row["dialogues_context"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(openers=[]), "'openers' must be a non-empty list of"),
        (lambda d: d.update(closers=[["only the user line"]]), "'closers' must be a non-empty list of"),
        (lambda d: d.update(small_talk=[["a", " "]]), "'small_talk' must be a non-empty list of"),
        (lambda d: d.update(actions="buy milk"), "'actions' must be a list of non-empty strings"),
    ],
)
def test_malformed_dialogue_lines_name_the_file_and_key(tmp_path, change, message):
    data = packaged("diagnostic_lines")
    change(data)
    path = write(tmp_path, "bad_lines", data)
    with pytest.raises(ContentError, match=message) as error:
        DialogueLines.load(path)
    assert path in str(error.value)
