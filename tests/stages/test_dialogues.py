"""Stage 5: dialogue parsing, validation, rendering and the write_dialogues stage."""

from __future__ import annotations

import pytest
from PIL import Image

from covip.core import schemas
from covip.clients.base import ImagePart
from covip.clients.cached import wrap
from covip.clients.spec import ModelSpec
from covip.core.io import BadImageError, encode_png, to_table
from covip.local.facts_writer import FactsFirstWriter
from covip.prompts import PromptBook
from covip.core.settings import settings_from
from covip.stages.dialogues import (
    MODEL,
    USER,
    DialogueSettings,
    parse_dialogue,
    render_dialogue,
    validate_dialogue,
    write_dialogues,
)
from support.fakes import ScriptedChat

IMAGE = encode_png(Image.new("RGBA", (8, 8), (200, 30, 30, 255)))
FACTS = [{"kind": "habit", "text": "only drinks green tea"}, {"kind": "date", "text": "on 2025-10-11"}]
GOOD = (
    "User: This is Jeffrey. Jeffrey only drinks green tea.\n"
    "Model: Noted, thanks.\n"
    "User: I saw Jeffrey on 2025-10-11.\n"
    "Model: Got it.\n"
    "User: That's all.\n"
    "Model: I'll remember Jeffrey."
)


def fake_writer(reply):
    """A scripted writer: `reply(request)` gives the text, or None for a failed call."""
    return ScriptedChat(reply, "fake:scripted", error="TimeoutError: simulated", model="fake")


def concepts_table():
    return [
        {"concept_id": "c0", "category": "person", "kind": "face", "source": "t", "name": "Jeffrey", "image": IMAGE, "width": 8, "height": 8},
        {"concept_id": "c1", "category": "animal", "kind": "dog", "source": "t", "name": "Biscuit", "image": IMAGE, "width": 8, "height": 8},
        {"concept_id": "c2", "category": "object", "kind": "mug", "source": "t", "name": "Mugsy", "image": IMAGE, "width": 8, "height": 8},
    ]


def contexts_table(n=2):
    rows = []
    for j in range(n):
        ids = ["c0", "c1", "c2"][j % 2 :] + ["c0", "c1", "c2"][: j % 2]
        rows.append(
            {
                "sample_id": f"s{j}",
                "context_concept_ids": ids,
                "positive_indices": [0],
                "negative_concept_ids": ids[1:],
                "negative_similarity": [0.5, 0.4],
                "embedder": "e",
            }
        )
    return rows


def facts_writer(**options):
    return wrap(FactsFirstWriter(ModelSpec("dialogue_writer", "local_facts_writer", options=options)))


def good_reply(request):
    """A valid dialogue for whatever the request's task asks."""
    task = request.task
    fact_lines = [f"{task['name']} {fact['text']}." for fact in task["facts"]]
    lines = []
    for i in range(task["num_turns"] // 2):
        lines.append(f"User: {fact_lines[i] if i < len(fact_lines) else 'Remember ' + task['name'] + '.'}")
        lines.append("Model: Noted.")
    return "\n".join(lines)


def run_stage(writer, settings=None, contexts=None, seed=3):
    return write_dialogues(
        contexts if contexts is not None else contexts_table(),
        concepts_table(),
        wrap(writer),
        PromptBook(),
        settings or DialogueSettings(),
        seed,
        progress_file=open("/dev/null", "w"),
    )


# --------------------------------------------------------------------------------------------------
# Parsing and rendering


@pytest.mark.parametrize(
    "text",
    [
        GOOD,
        GOOD.replace("Model:", "Assistant:"),
        GOOD.replace("User:", "**User:**").replace("Model:", "**Model:**"),
        GOOD.replace("User:", "**User**:").replace("Model:", "**Model**:"),
        GOOD.replace("\n", "\n\n"),
        "Here is the chat:\n\n" + GOOD,
        "```\n" + GOOD + "\n```",
        GOOD.replace("User:", "- user:").replace("Model:", "- model:"),
    ],
)
def test_parse_dialogue_tolerates_common_formats(text):
    turns = parse_dialogue(text)
    assert [turn["role"] for turn in turns] == [USER, MODEL] * 3
    assert turns[0]["text"] == "This is Jeffrey. Jeffrey only drinks green tea."
    assert turns[-1]["text"] == "I'll remember Jeffrey."


def test_parse_dialogue_joins_continuation_lines_and_strips_bold():
    turns = parse_dialogue("User: I saw **Jeffrey**\nat the park.\nModel: Nice.")
    assert turns == [{"role": USER, "text": "I saw Jeffrey at the park."}, {"role": MODEL, "text": "Nice."}]


def test_parse_dialogue_of_prose_gives_no_turns():
    assert parse_dialogue("Jeffrey likes tea. The model said hello.") == []
    assert parse_dialogue("") == []


def test_render_dialogue_is_the_published_format():
    turns = [{"role": USER, "text": "Hi Jeffrey."}, {"role": MODEL, "text": "Hello."}]
    assert render_dialogue(turns) == "User: Hi Jeffrey.\nModel: Hello."
    assert parse_dialogue(render_dialogue(parse_dialogue(GOOD))) == parse_dialogue(GOOD)


# --------------------------------------------------------------------------------------------------
# Validation


def test_valid_dialogue_has_no_problems():
    assert validate_dialogue(parse_dialogue(GOOD), "Jeffrey", FACTS, 6) == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\n".join(GOOD.splitlines()[:4]), "expected 6 turns"),
        (GOOD.replace("User:", "X:").replace("Model:", "User:").replace("X:", "Model:"), "turn 1 should be from the User"),
        (GOOD.replace("Jeffrey", "him"), "name 'Jeffrey' is never used"),
        (GOOD.replace("only drinks green tea", "is nice").replace("on 2025-10-11", "recently"), "only 0 of the facts"),
        (GOOD.replace("Model: Got it.", "Model: **  **"), "turn(s) 4 are empty"),
        (GOOD.replace("Model: Got it.", "Model: ..."), "turn(s) 4 are empty"),
    ],
)
def test_invalid_dialogues_are_reported(text, expected):
    problems = validate_dialogue(parse_dialogue(text), "Jeffrey", FACTS, 6)
    assert any(expected in problem for problem in problems), problems


def test_name_must_be_a_whole_word():
    text = GOOD.replace("Jeffrey", "Jeffreyson")
    assert any("never used" in p for p in validate_dialogue(parse_dialogue(text), "Jeffrey", FACTS, 6))


def test_min_facts_counts_mentioned_facts():
    text = GOOD.replace("on 2025-10-11", "recently")
    assert validate_dialogue(parse_dialogue(text), "Jeffrey", FACTS, 6, min_facts=1) == []
    assert validate_dialogue(parse_dialogue(text), "Jeffrey", FACTS, 6, min_facts=2)


# --------------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"num_turns": 5}, "num_turns"),
        ({"num_turns": 0}, "num_turns"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"facts_per_dialogue": 0}, "facts_per_dialogue"),
        ({"fact_kinds": ["weather"]}, "fact_kinds"),
        ({"min_facts_present": 4}, "min_facts_present"),
        ({"fact_match_threshold": 0.0}, "fact_match_threshold"),
        ({"concurrency": 0}, "concurrency"),
    ],
)
def test_settings_reject_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        DialogueSettings(**kwargs)


def test_settings_from_config_rejects_unknown_keys():
    assert settings_from(DialogueSettings, {"num_turns": 6}, "dialogues").num_turns == 6
    with pytest.raises(ValueError, match="num_turn"):
        settings_from(DialogueSettings, {"num_turn": 6}, "dialogues")


# --------------------------------------------------------------------------------------------------
# The stage


def test_stage_writes_one_valid_row_per_context_concept_in_order():
    fake = fake_writer(good_reply)
    rows = run_stage(fake)
    to_table(rows, schemas.DIALOGUES, "test")  # fits the declared schema
    assert [(r["sample_id"], r["context_index"], r["concept_id"]) for r in rows] == [
        ("s0", 0, "c0"), ("s0", 1, "c1"), ("s0", 2, "c2"),
        ("s1", 0, "c1"), ("s1", 1, "c2"), ("s1", 2, "c0"),
    ]
    assert all(r["status"] == "ok" and r["attempts"] == 1 and r["failure_reason"] == "" for r in rows)
    assert all(r["writer"] == "fake:scripted" and len(r["facts"]) == 3 for r in rows)
    assert rows[0]["dialogue"] == render_dialogue(rows[0]["turns"])
    assert rows[0]["dialogue"].startswith("User: Jeffrey ")


def test_stage_sends_image_prompt_and_structured_task():
    fake = fake_writer(good_reply)
    rows = run_stage(fake, contexts=contexts_table(1))
    request = next(r for r in fake.requests if r.task["name"] == "Biscuit")
    (message,) = request.messages
    assert isinstance(message.parts[0], ImagePart) and message.parts[0].data == IMAGE
    assert "Biscuit" in message.text and "animal" in message.text and "6" in message.text
    assert "$" not in message.text
    row = next(r for r in rows if r["name"] == "Biscuit")
    for fact in row["facts"]:
        assert fact["text"] in message.text
    assert request.task == {
        "kind": "dialogue",
        "name": "Biscuit",
        "category": "animal",
        "facts": row["facts"],
        "num_turns": 6,
        "attempt": 1,
    }


def test_malformed_then_good_is_repaired_with_the_problem_sent_back():
    fake = fake_writer(lambda req: "User: hello\nModel: hi" if req.task["attempt"] == 1 else good_reply(req))
    rows = run_stage(fake, contexts=contexts_table(1))
    assert all(r["status"] == "ok" and r["attempts"] == 2 for r in rows)
    repair = [r for r in fake.requests if r.task["attempt"] == 2][0]
    assert [m.role for m in repair.messages] == ["user", "assistant", "user"]
    assert repair.messages[1].text == "User: hello\nModel: hi"
    assert "expected 6 turns" in repair.messages[2].text
    assert repair.seed != [r for r in fake.requests if r.task["attempt"] == 1][0].seed


def test_every_attempt_bad_gives_failed_rows_with_reason_and_raw_output():
    fake = fake_writer(lambda req: "Just some prose.")
    rows = run_stage(fake, DialogueSettings(max_attempts=2), contexts=contexts_table(1))
    to_table(rows, schemas.DIALOGUES, "test")
    assert len(rows) == 3 and len(fake.requests) == 6
    for row in rows:
        assert row["status"] == "failed" and row["attempts"] == 2
        assert row["failure_reason"].startswith("invalid_output: expected 6 turns")
        assert row["raw_response"] == "Just some prose."
        assert row["turns"] is None and row["dialogue"] is None


def test_model_errors_count_as_attempts():
    fake = fake_writer(lambda req: None if req.task["attempt"] < 3 else good_reply(req))
    rows = run_stage(fake, contexts=contexts_table(1))
    assert all(r["status"] == "ok" and r["attempts"] == 3 for r in rows)
    failing = run_stage(fake_writer(lambda req: None), contexts=contexts_table(1))
    assert all(r["failure_reason"].startswith("model_error: TimeoutError") for r in failing)


def test_facts_writer_with_faults_re_asks_and_still_finishes():
    rows = run_stage(facts_writer(malformed_rate=0.4), contexts=contexts_table(12))
    assert len(rows) == 36
    assert any(r["attempts"] > 1 for r in rows)
    assert sum(r["status"] == "ok" for r in rows) > 20
    assert all(r["status"] == "ok" or r["failure_reason"] for r in rows)


def test_facts_writer_always_broken_fails_every_row_with_reason():
    rows = run_stage(facts_writer(malformed_rate=1.0), contexts=contexts_table(4))
    assert len(rows) == 12
    assert all(r["status"] == "failed" and r["attempts"] == 3 and r["failure_reason"].startswith("invalid_output") for r in rows)
    to_table(rows, schemas.DIALOGUES, "test")


def test_stage_is_reproducible_and_independent_of_concurrency():
    serial = run_stage(facts_writer(), DialogueSettings(concurrency=1), contexts=contexts_table(6))
    parallel = run_stage(facts_writer(), DialogueSettings(concurrency=4), contexts=contexts_table(6))
    assert serial == parallel
    assert serial != run_stage(facts_writer(), contexts=contexts_table(6), seed=4)


def test_unknown_concept_and_bad_image_are_named():
    contexts = contexts_table(1)
    contexts[0]["context_concept_ids"] = ["c0", "c9"]
    with pytest.raises(ValueError, match=r"contexts row 0 \(sample_id=s0\).*\[1\].*'c9'"):
        run_stage(fake_writer(good_reply), contexts=contexts)
    concepts = concepts_table()
    concepts[1]["image"] = b"not a png"
    with pytest.raises(BadImageError, match=r"concepts row 1 \(concept_id=c1\) field 'image'"):
        write_dialogues(contexts_table(1), concepts, wrap(fake_writer(good_reply)), PromptBook(), DialogueSettings(), 1)


def test_prompts_render_without_leftover_placeholders():
    book = PromptBook()
    text = book.render("dialogue_writer", concept_name="Jeffrey", category="person", facts="- (habit) x", num_turns=6)
    assert "Jeffrey" in text and "- (habit) x" in text and "exactly 6 turns" in text.lower()
    repair = book.render("dialogue_repair", problem="too short", concept_name="Jeffrey", category="person", num_turns=6)
    assert "too short" in repair and "Jeffrey" in repair and "$" not in text + repair


def test_user_category_words_use_a_family_and_say_so(caplog):
    concepts = concepts_table()
    concepts[1]["category"] = "dogs"
    with caplog.at_level("INFO", logger="covip.stages.dialogues"):
        rows = write_dialogues(contexts_table(1), concepts, facts_writer(), PromptBook(), DialogueSettings(), 1)
    assert all(r["status"] == "ok" for r in rows)
    assert "category 'dogs' has no fact lists of its own; drawing facts from the 'animal' lists" in caplog.text
    from covip.content.facts import infer_category

    assert infer_category(next(r for r in rows if r["concept_id"] == "c1")["facts"]) == "animal"
