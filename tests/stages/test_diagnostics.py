"""Stage 11: LSD / LAR / ITR sets, direct and CAG answering, scoring and aggregation."""

from __future__ import annotations

import datetime as dt
import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageDraw

from covip.core import schemas
from covip.clients.base import ChatResponse, ImagePart, Usage
from covip.clients.registry import ModelRegistry
from covip.core.io import decode_image, encode_png, to_table
from covip.local.lar_judge import lar_coverage, lexical_lar_verdict
from covip.stages import diagnostics as diag
from covip.stages.diagnostics import (
    DiagnosticError,
    DiagnosticSettings,
    answer_diagnostics,
    build_diagnostic_set,
    build_direct_request,
    extract_boxed,
    keyword_present,
    load_diagnostic_set,
    parse_lar_verdict,
    response_failures,
    score_diagnostics,
    summarize_diagnostics,
    token_set_f1,
    write_diagnostic_set,
)

QUIET = io.StringIO()

# ---------------------------------------------------------------------------------------------------
# Scoring functions (golden tables)


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("New Ryan", "New Ryan", 1.0),
        ("new ryan!", "New Ryan", 1.0),
        ("The New Ryan", "New Ryan", 1.0),  # articles dropped
        ("Ryan", "New Ryan", 2 * 1.0 * 0.5 / 1.5),  # p=1, r=1/2
        ("Port Sarah harbour", "Port Sarah", 2 * (2 / 3) * 1.0 / (2 / 3 + 1.0)),
        ("Lake Anna", "New Ryan", 0.0),
        ("ryan ryan ryan", "New Ryan", 2 * 1.0 * 0.5 / 1.5),  # a set: repeats do not count
        (None, "New Ryan", 0.0),
        ("", "New Ryan", 0.0),
        ("the", "a", 1.0),  # both empty after normalisation
    ],
)
def test_token_set_f1(prediction, reference, expected):
    assert token_set_f1(prediction, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"I last saw them at \boxed{New Ryan}.", "New Ryan"),
        (r"\boxed{Lake Anna} no wait \boxed{Port Sarah}", "Port Sarah"),  # the last box wins
        (r"\boxed{a{b}c}", "a{b}c"),  # nested braces kept balanced
        (r"\boxed{\text{East Adamport}}", "East Adamport"),
        (r"\boxed { Corychester }", "Corychester"),
        (r"\boxed{Lake Anna} and then \boxed{unclosed", "Lake Anna"),  # an unclosed box is ignored
        ("no box here", None),
        ("", None),
        (None, None),
        (r"\boxed{}", ""),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "text, keyword, expected",
    [
        ("Oh, it's Andrew! SKS, remember?", "SKS", True),
        ("reminder: sks", "SKS", True),  # case-insensitive
        ("The keyword was SKSX.", "SKS", False),  # word boundary
        ("xSKS", "SKS", False),
        ("I see a person in a park.", "SKS", False),
        (None, "SKS", False),
        ("Tovek!", "Tovek", True),
    ],
)
def test_keyword_present(text, keyword, expected):
    assert keyword_present(text, keyword) is expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("correct", True),
        ("Correct.", True),
        ("**Wrong**", False),
        ("wrong: the reply names another errand", False),
        ("Incorrect", False),
        ("Verdict: correct", True),
        ("Answer - WRONG", False),
        ("<think>is it correct? the reference says post office</think>wrong", False),
        ("The response is not correct.", False),
        ("The reply is correct.", True),
        ("It could be correct or wrong.", None),  # contradictory, no leading verdict
        ("maybe", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_lar_verdict(text, expected):
    assert parse_lar_verdict(text) is expected


@pytest.mark.parametrize(
    "response, expected",
    [
        ("You said you needed to go to the post office to return a package.", "correct"),
        ("You were returning the packages at the post office.", "correct"),
        ("You had to pick up your dry cleaning.", "wrong"),
        ("I don't know.", "wrong"),
        (None, "wrong"),
    ],
)
def test_lexical_lar_verdict(response, expected):
    reference = "go to the post office to return this package"
    assert lexical_lar_verdict("What did I have to do?", reference, response) == expected


def test_lar_coverage_counts_content_words_only():
    # content words of the reference: post, office, return, package -> 2 of 4 covered
    assert lar_coverage("go to the post office to return this package", "the post office") == pytest.approx(0.5)
    with pytest.raises(ValueError, match="threshold"):
        lexical_lar_verdict("q", "post office", "post office", threshold=0.0)


# ---------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"items_per_task": 0}, "items_per_task"),
        ({"target_mentions_max": 4}, "target_mentions"),
        ({"target_mentions_min": 3, "target_mentions_max": 2}, "target_mentions"),
        ({"start_date": "yesterday"}, "start_date"),
        ({"span_days": 10, "min_gap_days": 14}, "span_days"),
        ({"keyword_style": "emoji"}, "keyword_style"),
        ({"image_size": 10}, "image_size"),
    ],
)
def test_settings_reject_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DiagnosticSettings(**kwargs)


# ---------------------------------------------------------------------------------------------------
# Set generation on a pool whose concepts are told apart by colour alone

PERSON_COLOURS = {"p0": (255, 0, 0), "p1": (0, 200, 0), "p2": (0, 0, 255), "p3": (255, 0, 255), "p4": (0, 255, 255)}
OBJECT_COLOURS = {"o0": (255, 140, 0), "o1": (140, 0, 255)}
ALL_COLOURS = PERSON_COLOURS | OBJECT_COLOURS


def _disc(colour) -> bytes:
    image = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    ImageDraw.Draw(image).ellipse((8, 8, 88, 88), fill=(*colour, 255))
    return encode_png(image)


def _pool(colours=ALL_COLOURS):
    return [
        {"concept_id": cid, "category": "person" if cid.startswith("p") else "object", "kind": "disc", "source": "test",
         "name": f"Pool{cid}", "image": _disc(colour), "width": 96, "height": 96}
        for cid, colour in colours.items()
    ]


def _colour_counts(png: bytes) -> dict[str, int]:
    """Saturated pixels of an image, assigned to the nearest concept colour (by chroma direction)."""
    rgb = np.asarray(decode_image(png, "test", mode="RGB"), np.float32)
    flat = rgb.reshape(-1, 3)
    saturated = flat[(flat.max(axis=1) - flat.min(axis=1)) > 150]
    if not len(saturated):
        return {}
    norm = saturated / saturated.max(axis=1, keepdims=True)
    names = list(ALL_COLOURS)
    refs = np.asarray([ALL_COLOURS[n] for n in names], np.float32)
    refs = refs / refs.max(axis=1, keepdims=True)
    nearest = np.argmin(((norm[:, None, :] - refs[None, :, :]) ** 2).sum(axis=2), axis=1)
    return {names[k]: int((nearest == k).sum()) for k in range(len(names)) if (nearest == k).any()}


def _dominant(png: bytes) -> str:
    counts = _colour_counts(png)
    return max(counts, key=counts.get)


_ISO = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_LONG = re.compile(r"\b(January|February|March|April|May|June|July|August|September|October|November|December) (\d{1,2}), (\d{4})\b")


def _dialogue_date(dialogue: str) -> dt.date:
    first = dialogue.splitlines()[0]
    if match := _ISO.search(first):
        return dt.date(*map(int, match.groups()))
    match = _LONG.search(first)
    assert match, f"no date in {first!r}"
    return dt.datetime.strptime(" ".join(match.groups()), "%B %d %Y").date()


def _name_of(dialogue: str, names: set[str]) -> str:
    first = dialogue.splitlines()[0]
    found = [n for n in names if re.search(rf"\b{n}\b", first)]
    assert len(found) == 1, (first, found)
    return found[0]


SETTINGS = DiagnosticSettings(items_per_task=6, image_size=128)


@pytest.fixture(scope="module")
def sets(prompts):
    return {task: build_diagnostic_set(task, _pool(), SETTINGS, seed=5, progress_file=QUIET, prompts=prompts) for task in diag.TASKS}


def _target_dialogues(item) -> tuple[list[int], int]:
    """Indices of the dialogues about the person in the query image, and the most recent of them."""
    dominant = [_dominant(image["bytes"]) for image in item["images_context"]]
    target = _dominant(item["query_image"]["bytes"])
    mine = [k for k, colour in enumerate(dominant) if colour == target]
    latest = max(mine, key=lambda k: _dialogue_date(item["dialogues_context"][k]))
    return mine, latest


@pytest.mark.parametrize("task", diag.TASKS)
def test_set_rows_fit_schema_and_hub_columns(sets, task, prompts):
    rows = sets[task]
    table = to_table(rows, schemas.DIAGNOSTIC_SET, f"{task} set")
    for column in diag.HUB_COLUMNS:
        assert column in table.column_names
    assert len(rows) == SETTINGS.items_per_task
    assert len({row["sample_id"] for row in rows}) == len(rows)
    for row in rows:
        assert row["task"] == task
        assert row["question"] == prompts.render_section("diagnostic_questions", task)
        assert len(row["images_context"]) == len(row["dialogues_context"]) == SETTINGS.dialogues_per_item
        for dialogue in row["dialogues_context"]:
            lines = dialogue.splitlines()
            assert [line.split(":")[0] for line in lines] == ["User", "Model"] * 3


@pytest.mark.parametrize("task", diag.TASKS)
def test_query_is_a_new_image_of_the_target(sets, task):
    for item in sets[task]:
        query = item["query_image"]["bytes"]
        query_pixels = np.asarray(decode_image(query, "q", mode="RGB"), np.float32)
        counts = _colour_counts(query)
        target = max(counts, key=counts.get)
        # The query shows only the target: other concept colours are at most stray pixels.
        assert counts[target] > 200
        assert all(n < 0.05 * counts[target] for c, n in counts.items() if c != target)
        # Persons are preferred: no object concept anywhere in the item.
        colours = {_dominant(image["bytes"]) for image in item["images_context"]}
        assert colours <= set(PERSON_COLOURS)
        mine, _ = _target_dialogues(item)
        assert SETTINGS.target_mentions_min <= len(mine) <= SETTINGS.target_mentions_max
        assert item["target_index"] in mine
        for image in item["images_context"]:
            assert image["bytes"] != query  # never a byte match
            pixels = np.asarray(decode_image(image["bytes"], "c", mode="RGB"), np.float32)
            assert np.abs(pixels - query_pixels).mean() > 10  # nor a near-copy: new scene


def test_lsd_answer_is_the_place_of_the_most_recent_encounter(sets):
    rows = sets["lsd"]
    last_positions = set()
    for item in rows:
        mine, latest = _target_dialogues(item)
        assert item["target_index"] == latest
        dates = [_dialogue_date(item["dialogues_context"][k]) for k in mine]
        assert len(set(dates)) == len(dates)  # distinct dates: the most recent is unambiguous
        # The place is named in the most recent encounter and in no other dialogue of the item.
        holders = [k for k, d in enumerate(item["dialogues_context"]) if item["answer"] in d]
        assert holders == [latest]
        last_positions.add(latest == len(item["dialogues_context"]) - 1)
    assert last_positions == {True, False} or last_positions == {False}  # the answer is not always last


def test_lar_answer_is_the_action_of_the_most_recent_encounter(sets):
    for item in sets["lar"]:
        _, latest = _target_dialogues(item)
        assert item["answer"] in diag.ACTIONS
        user_lines = [line for line in item["dialogues_context"][latest].splitlines() if line.startswith("User:")]
        assert item["answer"] in user_lines[2]
        # Distractors: every other dialogue names a different action.
        for k, dialogue in enumerate(item["dialogues_context"]):
            if k != latest:
                assert item["answer"] not in dialogue
                assert any(action in dialogue for action in diag.ACTIONS)


def test_itr_answer_is_the_keyword_of_the_most_recent_encounter(sets):
    for item in sets["itr"]:
        mine, latest = _target_dialogues(item)
        keyword = item["answer"]
        assert re.fullmatch(r"[A-Z]{3}", keyword)
        assert [k for k, d in enumerate(item["dialogues_context"]) if keyword_present(d, keyword)] == [latest]
        # Earlier dialogues of the target carry no keyword instruction (only other people do).
        for k in mine:
            if k != latest:
                assert "keyword" not in item["dialogues_context"][k] and "remind" not in item["dialogues_context"][k]


def test_sets_are_deterministic_and_seeded(sets, prompts):
    again = build_diagnostic_set("lar", _pool(), SETTINGS, seed=5, progress_file=QUIET, prompts=prompts)
    assert again == sets["lar"]
    other = build_diagnostic_set("lar", _pool(), SETTINGS, seed=6, progress_file=QUIET, prompts=prompts)
    assert [r["dialogues_context"] for r in other] != [r["dialogues_context"] for r in again]
    # An item does not depend on how many are built.
    fewer = build_diagnostic_set("lar", _pool(), DiagnosticSettings(items_per_task=2, image_size=128), seed=5,
                                 progress_file=QUIET, prompts=prompts)
    assert fewer == again[:2]


def test_pseudoword_keywords_and_no_distractors(prompts):
    settings = DiagnosticSettings(items_per_task=3, image_size=96, keyword_style="pseudoword", distractors=False)
    rows = build_diagnostic_set("itr", _pool(), settings, seed=1, progress_file=QUIET, prompts=prompts)
    for item in rows:
        assert re.fullmatch(r"[A-Z][a-z]{4}", item["answer"])
        reminders = [d for d in item["dialogues_context"] if "remind" in d or "keyword" in d or item["answer"] in d]
        assert len(reminders) == 1


def test_falls_back_to_all_categories_and_fails_clearly_when_too_small(prompts):
    two_people = {k: ALL_COLOURS[k] for k in ("p0", "p1", "o0", "o1")}
    rows = build_diagnostic_set("lsd", _pool(two_people), DiagnosticSettings(items_per_task=2, image_size=96), seed=0,
                                progress_file=QUIET, prompts=prompts)
    assert rows and all(len(r["images_context"]) == 4 for r in rows)
    with pytest.raises(DiagnosticError, match="concept pool has 2"):
        build_diagnostic_set("lsd", _pool({k: ALL_COLOURS[k] for k in ("p0", "p1")}), DiagnosticSettings(items_per_task=1),
                             seed=0, progress_file=QUIET, prompts=prompts)
    with pytest.raises(DiagnosticError, match="unknown task"):
        build_diagnostic_set("xyz", _pool(), SETTINGS, seed=0)


def test_on_the_builtin_pool(builtin_pool, prompts):
    rows = build_diagnostic_set("lsd", builtin_pool, DiagnosticSettings(items_per_task=2, image_size=96), seed=0,
                                progress_file=QUIET, prompts=prompts)
    persons = {r["concept_id"] for r in builtin_pool if r["category"] == "person"}
    assert persons and len(rows) == 2
    to_table(rows, schemas.DIAGNOSTIC_SET, "builtin lsd")


# ---------------------------------------------------------------------------------------------------
# Writing and loading


def test_written_set_loads_with_datasets_and_round_trips(sets, tmp_path):
    path = tmp_path / "lsd.parquet"
    write_diagnostic_set(sets["lsd"], path)
    assert load_diagnostic_set(path, "lsd") == sets["lsd"]
    import datasets

    loaded = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path / "hf"))
    first = loaded[0]
    assert isinstance(first["query_image"], Image.Image)
    assert all(isinstance(image, Image.Image) for image in first["images_context"])
    assert first["answer"] == sets["lsd"][0]["answer"]


def _hub_table(images_context, dialogues, query, answers, extra=None):
    columns = {
        "images_context": pa.array(images_context),
        "dialogues_context": pa.array(dialogues),
        "query_image": pa.array(query),
        "answer": pa.array(answers),
    }
    columns.update(extra or {})
    return pa.table(columns)


def test_load_hub_format_with_raw_bytes_and_defaults(sets, tmp_path, prompts):
    items = sets["itr"][:3]
    image_dir = tmp_path / "imgs"
    image_dir.mkdir()
    (image_dir / "q0.png").write_bytes(items[0]["query_image"]["bytes"])
    table = _hub_table(
        [[im["bytes"] for im in item["images_context"]] for item in items],  # raw bytes, not structs
        [item["dialogues_context"] for item in items],
        [{"bytes": None, "path": "imgs/q0.png"}] + [{"bytes": item["query_image"]["bytes"], "path": None} for item in items[1:]],
        [item["answer"] for item in items],
        extra={"unrelated": pa.array([1, 2, 3])},
    )
    path = tmp_path / "itr_hub.parquet"
    pq.write_table(table, path)
    rows = load_diagnostic_set(path, "itr", prompts)
    assert [r["sample_id"] for r in rows] == ["itr0000", "itr0001", "itr0002"]
    assert all(r["question"] == prompts.render_section("diagnostic_questions", "itr") for r in rows)
    assert all(r["target_index"] == -1 for r in rows)
    assert rows[0]["query_image"]["bytes"] == items[0]["query_image"]["bytes"]
    assert rows[1]["images_context"][2]["bytes"] == items[1]["images_context"][2]["bytes"]
    to_table(rows, schemas.DIAGNOSTIC_SET, "loaded")


def test_load_hub_format_errors_name_file_row_and_field(sets, tmp_path):
    item = sets["lsd"][0]
    images = [[im["bytes"] for im in item["images_context"]]]
    good = dict(images_context=images, dialogues=[item["dialogues_context"]], query=[item["query_image"]["bytes"]], answers=[item["answer"]])

    def write(name, **changes):
        args = {**good, **changes}
        path = tmp_path / name
        pq.write_table(_hub_table(args["images_context"], args["dialogues"], args["query"], args["answers"]), path)
        return path

    path = tmp_path / "no_answer.parquet"
    pq.write_table(pa.table({"images_context": pa.array(images)}), path)
    with pytest.raises(DiagnosticError, match="missing hub column"):
        load_diagnostic_set(path, "lsd")
    with pytest.raises(DiagnosticError, match=r"bad_query.parquet row 0 .*field 'query_image'.*cannot decode"):
        load_diagnostic_set(write("bad_query.parquet", query=[b"not a png"]), "lsd")
    with pytest.raises(DiagnosticError, match=r"row 0 .*4 images_context but 3 dialogues_context"):
        load_diagnostic_set(write("short.parquet", dialogues=[item["dialogues_context"][:3]]), "lsd")
    with pytest.raises(DiagnosticError, match=r"row 0 .*field 'answer' is empty"):
        load_diagnostic_set(write("empty_answer.parquet", answers=["  "]), "lsd")
    with pytest.raises(DiagnosticError, match=r"field 'images_context'\[1\]"):
        load_diagnostic_set(write("bad_ctx.parquet", images_context=[[images[0][0], b"junk", *images[0][2:]]]), "lsd")
    wrong_task = tmp_path / "wrong_task.parquet"
    pq.write_table(_hub_table(images, good["dialogues"], good["query"], good["answers"], extra={"task": pa.array(["lar"])}), wrong_task)
    with pytest.raises(DiagnosticError, match="field 'task'"):
        load_diagnostic_set(wrong_task, "lsd")


# ---------------------------------------------------------------------------------------------------
# Answering with a scripted model


class ScriptedModel:
    """A ChatModel whose replies come from a function of the request; it records what it was asked."""

    def __init__(self, reply):
        self.identity = "scripted:test"
        self.reply = reply
        self.requests = []

    def complete(self, request):
        self.requests.append(request)
        text = self.reply(request)
        if isinstance(text, Exception):
            raise text
        if text is None:
            return ChatResponse(None, "scripted", error="server said no")
        return ChatResponse(text, "scripted", Usage(10, len(text.split())))


def test_direct_request_layout(sets, prompts):
    item = sets["lsd"][0]
    request = build_direct_request(item, prompts, seed=3)
    assert len(request.messages) == 1 and request.messages[0].role == "user"
    parts = request.messages[0].parts
    n = len(item["images_context"])
    kinds = ["image" if isinstance(p, ImagePart) else "text" for p in parts]
    assert kinds == ["text", "image", "text"] * n + ["text", "image", "text"]
    assert parts[1].data == item["images_context"][0]["bytes"]
    assert parts[2].text == item["dialogues_context"][0]
    assert parts[-2].data == item["query_image"]["bytes"]
    assert parts[-1].text == item["question"]
    assert request.sampling == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5, "max_tokens": 512}
    assert request.task["kind"] == "diagnostic" and request.task["task"] == "lsd"
    assert request.task["dialogues"] == item["dialogues_context"]
    assert request.task["target_index"] == item["target_index"]
    assert request.seed == build_direct_request(item, prompts, seed=3).seed != build_direct_request(item, prompts, seed=4).seed


def test_answer_direct_rows_and_failures(sets, prompts):
    items = sets["lsd"][:3]
    bad = items[1]["sample_id"]

    def reply(request):
        if request.task["sample_id"] == bad:
            return RuntimeError("connection reset")
        return rf"I think \boxed{{{sets['lsd'][0]['answer']}}}"

    model = ScriptedModel(reply)
    rows = answer_diagnostics(items, "scripted", model, prompts, DiagnosticSettings(), seed=0, mode="direct", progress_file=QUIET)
    to_table(rows, schemas.DIAGNOSTIC_RESPONSES, "responses")
    assert [r["status"] for r in rows] == ["ok", "failed", "ok"]
    assert "connection reset" in rows[1]["error"] and rows[1]["response"] is None
    assert all(r["score"] is None and r["scorer"] == "token_f1" and r["caption"] is None for r in rows)
    assert all(r["model_identity"] == "scripted:test" and r["stand_in"] is False for r in rows)

    scored = score_diagnostics(rows, items)
    assert scored[0]["score"] == 1.0 and scored[0]["extracted"] == items[0]["answer"]
    assert scored[1]["score"] is None
    assert scored[2]["score"] == pytest.approx(token_set_f1(items[0]["answer"], items[2]["answer"]))
    # One failed call in three; a reply without a readable answer would not count (it is scored).
    report = response_failures(scored)
    assert (report.failed, report.total) == (1, 3)
    assert "connection reset" in next(iter(report.reasons))


def test_answer_cag_message_structure(sets, prompts):
    items = sets["itr"][:3]
    no_caption = items[2]["sample_id"]

    def reply(request):
        if request.task["kind"] == "caption":
            return None if request.task["sample_id"] == no_caption else f"A photo of someone ({request.task['sample_id']})."
        return f"I see a person. Reminder: {next(i['answer'] for i in items if i['sample_id'] == request.task['sample_id'])}"

    model = ScriptedModel(reply)
    rows = answer_diagnostics(items, "scripted", model, prompts, DiagnosticSettings(), seed=0, mode="cag", progress_file=QUIET)
    to_table(rows, schemas.DIAGNOSTIC_RESPONSES, "cag responses")
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    assert rows[2]["error"].startswith("caption failed") and rows[2]["response"] is None
    assert rows[0]["caption"] == f"A photo of someone ({items[0]['sample_id']})."
    captions = [r for r in model.requests if r.task["kind"] == "caption"]
    answers = [r for r in model.requests if r.task["kind"] == "cag_answer"]
    assert len(captions) == 3 and len(answers) == 2  # no answer without a caption
    assert all(r.sampling["temperature"] == 0.0 for r in captions)  # greedy caption
    first = answers[0]
    assert [m.role for m in first.messages] == ["user", "assistant", "user"]
    assert first.messages[1].text == rows[0]["caption"]
    assert items[0]["question"] in first.messages[2].text
    assert len(first.messages[0].images) == len(items[0]["images_context"]) + 1
    assert first.messages[0].images[-1].data == items[0]["query_image"]["bytes"]
    assert first.sampling["temperature"] == 0.7 and first.sampling["presence_penalty"] == 1.5
    assert first.task["diagnostic_task"] == "itr" and first.task["positive_indices"] == [items[0]["target_index"]]

    scored = score_diagnostics(rows, items)
    assert [r["score"] for r in scored] == [1.0, 1.0, None]
    assert scored[0]["extracted"] == items[0]["answer"]


def test_lar_scoring_with_a_scripted_judge(sets, prompts):
    items = sets["lar"][:4]
    rows = [
        {"policy": "p", "task": "lar", "mode": "direct", "sample_id": item["sample_id"], "caption": None,
         "response": f"You had to {item['answer']}.", "extracted": None, "score": None, "scorer": "lar_judge",
         "model_identity": "m", "stand_in": False, "status": "ok", "error": None}
        for item in items
    ]
    verdicts = iter(["Correct.", "**wrong**", "hmm, hard to say", None])
    judge = ScriptedModel(lambda request: next(verdicts))
    scored = score_diagnostics(rows, items, judge=judge, prompts=prompts)
    assert [r["score"] for r in scored] == [1.0, 0.0, None, None]
    assert [r["extracted"] for r in scored] == ["correct", "wrong", None, None]
    assert "unparseable" in scored[2]["error"] and "judge failed" in scored[3]["error"]
    assert all(r["scorer"] == "scripted:test" for r in scored)
    request = judge.requests[0]
    assert request.task == {"kind": "lar_judge", "question": items[0]["question"], "reference": items[0]["answer"],
                            "response": rows[0]["response"]}
    text = request.messages[0].text
    assert items[0]["answer"] in text and rows[0]["response"] in text and items[0]["question"] in text
    with pytest.raises(DiagnosticError, match="no judge"):
        score_diagnostics(rows, items)
    with pytest.raises(DiagnosticError, match="no such item"):
        score_diagnostics(rows, sets["lsd"])


def test_summary_in_percent_with_failures_counted():
    def row(score, policy="p", mode="direct"):
        return {"policy": policy, "task": "lsd", "mode": mode, "sample_id": "x", "caption": None, "response": "r",
                "extracted": None, "score": score, "scorer": "token_f1", "model_identity": "m", "stand_in": policy == "ref",
                "status": "ok" if score is not None else "failed", "error": None}

    rows = [row(1.0), row(0.5), row(0.0), row(None), row(1.0, mode="cag"), row(0.0, policy="ref")]
    summary = summarize_diagnostics(rows, n_bootstrap=200, seed=1)
    to_table(summary, schemas.DIAGNOSTIC_SUMMARY, "summary")
    by = {(s["policy"], s["mode"]): s for s in summary}
    direct = by[("p", "direct")]
    assert direct["score"] == pytest.approx(50.0) and direct["n"] == 3 and direct["n_failed"] == 1
    assert 0.0 <= direct["score_low"] <= 50.0 <= direct["score_high"] <= 100.0
    assert by[("p", "cag")]["score"] == 100.0 and by[("ref", "direct")]["stand_in"] is True
    assert summarize_diagnostics(rows, n_bootstrap=200, seed=1) == summary
    only_failed = summarize_diagnostics([row(None)], n_bootstrap=10)
    assert only_failed[0]["score"] is None and only_failed[0]["n_failed"] == 1


# ---------------------------------------------------------------------------------------------------
# End to end with the offline backends (reference policies + local lexical judge)


def test_end_to_end_with_reference_policies_and_lexical_judge(sets, prompts):
    registry = ModelRegistry({
        "oracle": {"backend": "reference_oracle"},
        "blind": {"backend": "reference_blind"},
        "judge": {"backend": "local_lexical_judge"},
    })
    settings = DiagnosticSettings()
    items = [item for task in diag.TASKS for item in sets[task][:3]]
    all_rows = []
    for policy in ("oracle", "blind"):
        for mode in diag.MODES:
            rows = answer_diagnostics(items, policy, registry.chat(policy), prompts, settings, seed=0, mode=mode, progress_file=QUIET)
            all_rows += score_diagnostics(rows, items, judge=registry.chat("judge"), prompts=prompts, progress_file=QUIET)
    to_table(all_rows, schemas.DIAGNOSTIC_RESPONSES, "e2e responses")
    assert all(r["status"] == "ok" and r["stand_in"] for r in all_rows)
    lar = [r for r in all_rows if r["task"] == "lar"]
    assert lar and all(r["scorer"] == "judge:local_lexical_judge" and r["extracted"] in ("correct", "wrong") for r in lar)
    summary = summarize_diagnostics(all_rows, n_bootstrap=50, seed=0)
    assert len(summary) == 2 * len(diag.TASKS) * len(diag.MODES)
    score = {(s["policy"], s["task"], s["mode"]): s["score"] for s in summary}
    for task in diag.TASKS:
        for mode in diag.MODES:
            # The blind policy knows no memories: it never finds the place, the action or the keyword.
            assert score[("blind", task, mode)] == 0.0
            assert score[("oracle", task, mode)] >= score[("blind", task, mode)]
    # The oracle reads the target's most recent dialogue, so it recalls the action and the keyword.
    assert score[("oracle", "lar", "direct")] > 0 and score[("oracle", "itr", "direct")] > 0


# ---------------------------------------------------------------------------------------------------
# Rendered prompts, pinned (an accidental wording change shows up here)

PINNED_DIRECT = [
    "Conversation 1. The person we talked about:", "<image>", "User: a\nModel: b",
    "Conversation 2. The person we talked about:", "<image>", "User: c\nModel: d",
    "Here is a new photo I just took:", "<image>",
    "Where did I see the person in this new photo the last time? Look at the dates of our earlier conversations "
    "to find the most recent time, then give only the place inside \\boxed{}, for example \\boxed{Springfield}.",
]
PINNED_JUDGE = (
    "You are grading an assistant's reply. The user asked a question about something they had told the assistant "
    "earlier. A reference answer gives the correct information.\n\nQuestion: Q?\n\nReference answer: go home\n\n"
    "Assistant's reply: You went home.\n\nDecide whether the reply gives the same action or plan as the reference "
    "answer. Different wording is fine; extra details are fine as long as they do not contradict the reference. A "
    "reply that names a different action, hedges between several, or says it does not know is wrong.\n\n"
    "Reply with exactly one word: correct or wrong."
)


def test_rendered_prompts_are_pinned(prompts):
    item = {"sample_id": "lsd0000", "task": "lsd", "images_context": [{"bytes": b"x", "path": None}] * 2,
            "dialogues_context": ["User: a\nModel: b", "User: c\nModel: d"], "query_image": {"bytes": b"q", "path": None},
            "question": prompts.render_section("diagnostic_questions", "lsd"), "answer": "X", "target_index": 1}
    request = build_direct_request(item, prompts)
    assert ["<image>" if isinstance(p, ImagePart) else p.text for p in request.messages[0].parts] == PINNED_DIRECT
    assert prompts.render_section("diagnostic_questions", "lar") == (
        "The last time I saw the person in this new photo, what did I say I had to do afterwards?")
    assert prompts.render_section("diagnostic_questions", "itr") == "What do you see in this photo?"
    judge = diag.build_lar_judge_request("Q?", "go home", "You went home.", prompts)
    assert judge.messages[0].text == PINNED_JUDGE
