"""Requests whose prompt interleaves images and dialogues (covip.protocol.requests): the caption
request's layout and task, caption-augmented generation (CAG), and the direct diagnostic question."""

from __future__ import annotations

import copy
import json
import re

import pytest
from PIL import Image

from covip.clients.base import ImagePart, TextPart
from covip.core.io import BadImageError, encode_png
from covip.prompts import PromptBook
from covip.protocol.requests import (
    ANSWER_SAMPLING,
    DIAGNOSTIC_SYSTEM,
    GREEDY,
    RequestError,
    build_cag_request,
    build_caption_request,
    build_direct_request,
    diagnostic_as_split_row,
    diagnostic_system,
    image_part,
    parse_facts,
    target_index,
)


@pytest.fixture(scope="module")
def row(benchmark_splits):
    # The richest test row: most context concepts, so the layout test covers several memories.
    return max(benchmark_splits[1], key=lambda r: len(r["context_dialogues"]))


def one_user_turn(request):
    """The parts of the request's one user turn, and their kinds ('text' or 'image')."""
    assert len(request.messages) == 1 and request.messages[0].role == "user"
    parts = request.messages[0].parts
    return parts, ["image" if isinstance(p, ImagePart) else "text" for p in parts]


# ---------------------------------------------------------------------------------------------------
# The caption request


def test_layout_interleaves_header_image_dialogue_then_query_and_instruction(row, prompts):
    """The authors' layout: per dialogue a header line, 'Picture k: ' and the image (the vision id
    their chat template adds), the dialogue and a blank line; then the new image's header and picture,
    and the instruction last."""
    request = build_caption_request(row, prompts)
    parts, kinds = one_user_turn(request)
    n = len(row["context_dialogues"])
    assert kinds == ["text", "text", "image", "text"] * n + ["text", "text", "image", "text"]
    for k in range(n):
        header, label, image, dialogue = parts[4 * k : 4 * k + 4]
        assert header.text == f"=== Dialogue {k + 1} ===\n"
        assert label.text == f"Picture {k + 1}: "
        assert image.data == row["context_images"][k]["bytes"]
        assert image.mime == "image/png"
        assert dialogue.text == row["context_dialogues"][k] + "\n\n"
    assert parts[-4].text == "=== New Image ===\n" and parts[-3].text == f"Picture {n + 1}: "
    assert parts[-2].data == row["query_image"]["bytes"]  # the query image comes last
    assert parts[-1].text == prompts.sections("caption")["instruction"].template.strip()
    assert len(request.images) == n + 1
    # The instruction states the SPEC's requirements; no name leaks into the fixed text.
    instruction = parts[-1].text.lower()
    for phrase in ("same name", "what is actually visible", "paragraph form, not a dialogue", "leave it out completely"):
        assert phrase in instruction
    for name in row["context_names"]:
        assert name not in parts[-1].text and name not in parts[0].text


def test_test_notebook_layout_numbers_from_zero_without_blank_lines(row, prompts):
    """captioning.layout 'test_notebook' (the authors' test-set notebook): dialogues numbered from 0 and no
    blank line after a dialogue; the pictures are still numbered from 1."""
    parts, _ = one_user_turn(build_caption_request(row, prompts, layout="test_notebook"))
    assert parts[0].text == "=== Dialogue 0 ===\n" and parts[1].text == "Picture 1: "
    assert parts[3].text == row["context_dialogues"][0] and parts[4].text == "=== Dialogue 1 ===\n"
    with pytest.raises(ValueError, match="unknown caption layout"):
        build_caption_request(row, prompts, layout="other")


def test_greedy_by_default_and_sampling_override(row, prompts):
    assert build_caption_request(row, prompts).sampling == {"temperature": 0.0} == GREEDY
    assert build_caption_request(row, prompts, sampling={"temperature": 0.7}).sampling == {"temperature": 0.7}


def test_task_carries_the_structured_facts(row, prompts):
    task = build_caption_request(row, prompts).task
    assert task["kind"] == "caption"
    assert task["sample_id"] == row["sample_id"]
    assert task["context_names"] == list(row["context_names"])
    assert task["context_categories"] == list(row["context_categories"])
    assert task["context_dialogues"] == list(row["context_dialogues"])
    assert task["context_facts"] == json.loads(row["context_facts"])
    assert task["positive_indices"] == [int(i) for i in row["positive_indices"]]
    assert all(type(i) is int for i in task["positive_indices"])
    json.dumps(task)  # part of the cache key: must be plain JSON


def test_rows_from_pandas_give_the_same_request(row, prompts):
    import numpy as np

    as_numpy = dict(row)
    for key in ("context_names", "context_dialogues", "context_categories", "context_images"):
        as_numpy[key] = np.array(row[key], dtype=object)
    as_numpy["positive_indices"] = np.array(row["positive_indices"], dtype=np.int32)
    assert build_caption_request(as_numpy, prompts) == build_caption_request(row, prompts)


def test_diagnostic_style_row_without_names_facts_or_positives(row, prompts):
    minimal = {
        "sample_id": "lsd_0001",
        "context_images": row["context_images"][:2],
        "context_dialogues": row["context_dialogues"][:2],
        "context_names": [],
        "context_facts": "[]",
        "positive_indices": [],
        "query_image": row["query_image"],
    }
    request = build_caption_request(minimal, prompts)
    assert len(request.images) == 3
    assert request.task["context_facts"] == [] and request.task["positive_indices"] == []
    assert request.messages[0].parts[4].text == "=== Dialogue 2 ===\n"


def test_image_read_from_path_when_bytes_are_absent(row, prompts, tmp_path):
    path = tmp_path / "query.png"
    path.write_bytes(row["query_image"]["bytes"])
    with_path = {**row, "query_image": {"bytes": None, "path": str(path)}}
    assert build_caption_request(with_path, prompts).images[-1].data == row["query_image"]["bytes"]


@pytest.mark.parametrize(
    "change, field",
    [
        (lambda r: r.update(context_dialogues=list(r["context_dialogues"])[:-1]), "context_dialogues"),
        (lambda r: r.update(context_names=list(r["context_names"])[:-1]), "context_names"),
        (lambda r: r.update(context_facts="[[{"), "context_facts"),
        (lambda r: r.update(context_facts=json.dumps([[]])), "context_facts"),
        (lambda r: r.update(positive_indices=[99]), "positive_indices"),
        (lambda r: r.update(query_image={"bytes": None, "path": "/nonexistent/q.png"}), "query_image"),
    ],
)
def test_bad_rows_name_the_row_and_field(row, prompts, change, field):
    bad = copy.deepcopy(row)
    change(bad)
    with pytest.raises(RequestError) as error:
        build_caption_request(bad, prompts, where="test.parquet row 5")
    message = str(error.value)
    assert "test.parquet row 5" in message and row["sample_id"] in message and field in message


def test_corrupt_image_names_the_field(row, prompts):
    bad = copy.deepcopy(row)
    bad["context_images"][1] = {"bytes": b"not a png", "path": None}
    with pytest.raises(BadImageError, match=r"context_images'\[1\]"):
        build_caption_request(bad, prompts)


# ---------------------------------------------------------------------------------------------------
# Caption-augmented generation


def test_cag_request_golden_structure(row, prompts):
    """The authors' CAG layout: the instruction as the system message, the context and query without it,
    the caption as the assistant's turn, then the question."""
    caption_request = build_caption_request(row, prompts, seed=42)
    question = "Where did I last see this person? Put the place in \\boxed{}."
    system = prompts.render_section("caption", "instruction")
    cag = build_cag_request(caption_request, "Megan is at the flea market.", question, system=system, prompts=prompts)
    assert [m.role for m in cag.messages] == ["system", "user", "assistant", "user"]
    assert cag.messages[0].text == system
    assert cag.messages[1].parts == caption_request.messages[0].parts[:-1]  # the caption turn minus its instruction
    assert caption_request.messages[0].parts[-1].text == system
    assert cag.messages[2].parts == (TextPart("Megan is at the flea market."),)
    assert cag.messages[3].parts == (TextPart(question),)  # the default wrapper is the question itself
    n = len(row["context_dialogues"])
    image_positions = [(m, i) for m, message in enumerate(cag.messages) for i, p in enumerate(message.parts) if isinstance(p, ImagePart)]
    assert image_positions == [(1, 4 * k + 2) for k in range(n)] + [(1, 4 * n + 2)]
    assert cag.sampling == ANSWER_SAMPLING == {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "presence_penalty": 1.5}
    assert cag.seed == 42
    assert cag.task == {**caption_request.task, "kind": "cag_answer", "caption": "Megan is at the flea market.", "question": question}
    # The caption request itself stays greedy.
    assert caption_request.sampling == {"temperature": 0.0}
    # Without a system message the context turn comes first.
    assert [m.role for m in build_cag_request(caption_request, "c", "q?").messages] == ["user", "assistant", "user"]


def test_cag_request_options(row, prompts, tmp_path):
    caption_request = build_caption_request(row, prompts)
    cag = build_cag_request(caption_request, "c", "q?", sampling={"temperature": 0.0}, seed=7, task_extra={"task": "lsd"})
    assert cag.sampling == {"temperature": 0.0} and cag.seed == 7 and cag.task["task"] == "lsd"
    override = tmp_path / "caption.txt"
    override.write_text(prompts.source("caption").replace("[[cag_question]]\n$question", "[[cag_question]]\nQuestion: $question"))
    wrapped = build_cag_request(caption_request, "c", "q?", prompts=PromptBook({"caption": str(override)}))
    assert wrapped.messages[-1].text == "Question: q?"
    with pytest.raises(ValueError, match="task kind 'caption'"):
        build_cag_request(cag, "c", "q?")


# ---------------------------------------------------------------------------------------------------
# The direct diagnostic request


def png(colour) -> bytes:
    return encode_png(Image.new("RGB", (16, 12), colour))


def diagnostic_item(task="lsd", n=3, images=True):
    """A diagnostic set row (schemas.DIAGNOSTIC_SET) with n context entries, each a differently coloured image."""
    book = PromptBook()
    return {
        "sample_id": f"{task}0000", "task": task,
        "images_context": [{"bytes": png((40 * k, 0, 0)), "path": None} for k in range(n)] if images else [],
        "dialogues_context": [f"User: line {k}\nModel: reply {k}" for k in range(n)],
        "query_image": {"bytes": png((0, 0, 200)), "path": None},
        "question": book.render_section("diagnostic_questions", task, box="\\boxed"), "answer": "X", "target_index": n - 1,
    }


def test_direct_request_layout(prompts):
    item = diagnostic_item(n=4)
    request = build_direct_request(item, prompts, seed=3)
    parts, kinds = one_user_turn(request)  # LSD asked directly: no system message, as the authors
    n = len(item["images_context"])
    assert kinds == ["text", "text", "image", "text"] * n + ["text", "text", "image", "text"]
    assert parts[2].data == item["images_context"][0]["bytes"]
    assert parts[3].text == item["dialogues_context"][0] + "\n\n"
    assert parts[-2].data == item["query_image"]["bytes"]
    assert parts[-1].text == item["question"]
    assert request.sampling == ANSWER_SAMPLING  # sampled like the authors' answers unless told otherwise
    assert build_direct_request(item, prompts, sampling={"temperature": 0.0}).sampling == {"temperature": 0.0}
    assert request.task["kind"] == "diagnostic" and request.task["task"] == "lsd"
    assert request.task["dialogues"] == item["dialogues_context"]
    assert request.task["target_index"] == item["target_index"] and request.task["answer"] == "X"
    assert request.seed == build_direct_request(item, prompts, seed=3).seed != build_direct_request(item, prompts, seed=4).seed


@pytest.mark.parametrize("task", ["lar", "itr"])
def test_direct_lar_and_itr_carry_the_personalization_instruction_as_system(prompts, task):
    request = build_direct_request(diagnostic_item(task), prompts)
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.messages[0].text == prompts.render_section("diagnostic_questions", "personalization")


def test_system_message_per_task_and_mode_as_the_authors(prompts):
    assert DIAGNOSTIC_SYSTEM[("lsd", "direct")] is None and diagnostic_system("lsd", "direct", prompts) is None
    assert diagnostic_system("lsd", "cag", prompts) == prompts.render_section("caption", "instruction")
    for task in ("lar", "itr"):
        for mode in ("direct", "cag"):
            assert diagnostic_system(task, mode, prompts) == prompts.render_section("diagnostic_questions", "personalization")


def test_direct_request_without_context_images_places_the_dialogues_alone(prompts):
    """The text-only control empties the context images: headers and dialogues stay, the query image
    stays and is picture 1."""
    parts, kinds = one_user_turn(build_direct_request(diagnostic_item(n=2, images=False), prompts))
    assert kinds == ["text", "text"] * 2 + ["text", "text", "image", "text"]
    assert parts[5].text == "Picture 1: "


def test_direct_request_names_an_undecodable_image(prompts):
    item = diagnostic_item(n=2)
    item["images_context"][1] = {"bytes": b"not a png", "path": None}
    with pytest.raises(BadImageError, match=r"diagnostic set lsd item lsd0000 field 'context_images'\[1\]"):
        build_direct_request(item, prompts)


# Rendered prompts, pinned (an accidental wording change shows up here).
PINNED_DIRECT = [
    "=== Dialogue 1 ===\n", "Picture 1: ", "<image>", "User: a\nModel: b\n\n",
    "=== Dialogue 2 ===\n", "Picture 2: ", "<image>", "User: c\nModel: d\n\n",
    "=== New Image ===\n", "Picture 3: ", "<image>",
    "Where did I see the one in the new image the last time? Work it out step by step, then give your final "
    "answer inside \\boxed{your_answer}.",
]


def test_rendered_direct_prompt_is_pinned(prompts):
    image = {"bytes": png((1, 2, 3)), "path": None}
    item = {"sample_id": "lsd0000", "task": "lsd", "images_context": [image] * 2,
            "dialogues_context": ["User: a\nModel: b", "User: c\nModel: d"], "query_image": image,
            "question": prompts.render_section("diagnostic_questions", "lsd", box="\\boxed"), "answer": "X",
            "target_index": 1}
    request = build_direct_request(item, prompts)
    assert ["<image>" if isinstance(p, ImagePart) else p.text for p in request.messages[0].parts] == PINNED_DIRECT
    assert prompts.render_section("diagnostic_questions", "lsd", box="//boxed").endswith("inside //boxed{your_answer}.")
    assert prompts.render_section("diagnostic_questions", "lar") == (
        "The last time I told you about my most recent experience with the one in the new image, what was I doing?")
    assert prompts.render_section("diagnostic_questions", "itr") == "Where did I see the one in the new image most recently?"


@pytest.mark.parametrize("target, expected", [(2, 2), (0, 0), (None, -1), (-1, -1)])
def test_target_index(target, expected):
    assert target_index({"target_index": target}) == expected
    assert target_index({}) == -1


def test_diagnostic_item_as_split_row_gives_the_caption_request_its_layout(prompts):
    item = diagnostic_item(n=3)
    row = diagnostic_as_split_row(item)
    assert row["positive_indices"] == [2] and row["context_names"] == [] and row["context_facts"] == "[]"
    assert diagnostic_as_split_row({**item, "target_index": None})["positive_indices"] == []
    request = build_caption_request(row, prompts)
    assert [p.data for p in request.images] == [im["bytes"] for im in item["images_context"]] + [item["query_image"]["bytes"]]
    assert request.task["context_dialogues"] == item["dialogues_context"] and request.task["positive_indices"] == [2]


# ---------------------------------------------------------------------------------------------------
# Cells: images and facts


def test_image_part_reads_structs_paths_and_bytes(tmp_path):
    data = png((9, 9, 9))
    (tmp_path / "a.png").write_bytes(data)
    assert image_part({"bytes": data, "path": None}, "here") == ImagePart(data, "image/png")
    assert image_part({"bytes": None, "path": str(tmp_path / "a.png")}, "here").data == data
    assert image_part(bytearray(data), "here").data == data
    jpeg = tmp_path / "b.jpg"
    Image.new("RGB", (4, 4)).save(jpeg)
    assert image_part(jpeg.read_bytes(), "here").mime == "image/jpeg"
    with pytest.raises(RequestError, match=r"row 7: no image bytes and the path .*missing.png does not exist"):
        image_part({"bytes": None, "path": str(tmp_path / "missing.png")}, "row 7")
    with pytest.raises(BadImageError, match="row 8"):
        image_part({"bytes": b"junk", "path": None}, "row 8")


@pytest.mark.parametrize(
    "value, n, expected",
    [
        (None, 2, []),
        ("  ", 2, []),
        ("[]", 2, []),
        ('[[{"kind": "place", "text": "at Ryan Park"}], []]', 2, [[{"kind": "place", "text": "at Ryan Park"}], []]),
        ([[{"text": "likes tea"}]], 1, [[{"kind": "", "text": "likes tea"}]]),  # a list cell; kind defaults to ''
        ([[{"kind": "date", "text": 2025}]], 1, [[{"kind": "date", "text": "2025"}]]),
    ],
)
def test_parse_facts(value, n, expected):
    assert parse_facts(value, n, "row 0") == expected


@pytest.mark.parametrize(
    "value, n, message",
    [
        ("[[{", 1, "not valid JSON"),
        ("[[]]", 2, r"one entry per context concept \(2\), got 1"),
        ('{"a": 1}', 1, "got dict"),
        ('[["x"]]', 1, r"'context_facts'\[0\]: expected a list of"),
        ('[[{"kind": "k"}]]', 1, r"'context_facts'\[0\]"),  # a fact without text
    ],
)
def test_parse_facts_errors_name_the_row_and_field(value, n, message):
    with pytest.raises(RequestError, match=r"row 3 field 'context_facts'") as error:
        parse_facts(value, n, "row 3")
    assert re.search(message, str(error.value))
