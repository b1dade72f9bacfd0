"""Stage 6: MCQA parsing and repair, validation, shuffling, support flags, and the write_mcqas stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from covip.core import schemas
from covip.clients.cached import wrap
from covip.clients.spec import ModelSpec
from covip.core.io import to_table
from covip.core.text import normalize_text
from covip.local.facts_writer import FactsFirstWriter
from covip.prompts import PromptBook
from covip.core.seeding import rng_for
from covip.stages.mcqa import (
    NONE_OPTION,
    MCQAParseError,
    MCQASettings,
    is_supported,
    parse_mcqa_json,
    response_schema,
    shuffle_options,
    validate_questions,
    write_mcqas,
)
from support.fakes import ScriptedChat

DIALOGUE = (
    "User: This is Seth. Seth gets excited when we pass the cherry blossom trees.\n"
    "Model: Noted.\n"
    "User: I took Seth to Ryan Park on 2025-10-11.\n"
    "Model: Got it.\n"
    "User: Seth only drinks green tea.\n"
    "Model: I'll remember."
)


def q(question="Where did the user take Seth?", a="Ryan Park", b="Oak Lake", c="Maple Beach", answer="A", d=NONE_OPTION):
    return {"question": question, "options": {"A": a, "B": b, "C": c, "D": d}, "answer": answer}


def three():
    return [
        q(),
        q("When did the user take Seth there?", "2025-10-11", "2024-01-02", "2023-05-06", "A"),
        q("What does Seth drink?", "Coffee", "Only green tea", "Milk", "B"),
    ]


def reply(questions) -> str:
    return json.dumps({"questions": questions})


def fake_writer(reply_fn):
    """A scripted writer: `reply_fn(request)` gives the text, or None for a failed call."""
    return ScriptedChat(reply_fn, "fake:scripted", error="RuntimeError: boom", model="fake")


def dialogue_row(sample="s0", concept="c0", index=0, status="ok", dialogue=DIALOGUE):
    return {
        "sample_id": sample,
        "concept_id": concept,
        "context_index": index,
        "name": "Seth",
        "facts": [{"kind": "habit", "text": "only drinks green tea"}],
        "turns": None,
        "dialogue": dialogue if status == "ok" else None,
        "status": status,
        "failure_reason": "" if status == "ok" else "invalid_output: x",
        "attempts": 1,
        "raw_response": None,
        "writer": "w",
    }


def run_stage(writer, rows, settings=None, seed=5):
    return write_mcqas(rows, wrap(writer), PromptBook(), settings or MCQASettings(), seed, progress_file=open("/dev/null", "w"))


# --------------------------------------------------------------------------------------------------
# parse_mcqa_json


def test_parse_plain_json():
    assert parse_mcqa_json(reply(three())) == three()


@pytest.mark.parametrize(
    "text",
    [
        "```json\n" + reply([q()]) + "\n```",
        "Sure, here you go:\n" + reply([q()]) + "\nHope this helps!",
        reply([q()])[:-2] + ",]}",  # trailing comma
        json.dumps([q()]),  # a bare list
        json.dumps(q()),  # a single question object
        json.dumps({"qa": [q()]}),
    ],
)
def test_parse_repairs_wrapping(text):
    assert parse_mcqa_json(text) == [q()]


@pytest.mark.parametrize(
    "options",
    [
        ["Ryan Park", "Oak Lake", "Maple Beach"],
        ["Ryan Park", "Oak Lake", "Maple Beach", NONE_OPTION],
        ["A) Ryan Park", "B) Oak Lake", "C) Maple Beach", "D) " + NONE_OPTION],
        ["(A) Ryan Park", "(B) Oak Lake", "(C) Maple Beach"],
        {"A": "Ryan Park", "B": "Oak Lake", "C": "Maple Beach"},
        {"a": "Ryan Park", "b": "Oak Lake", "c": "Maple Beach", "d": "the answer cannot be determined."},
        {"A": "A) Ryan Park", "B": "B. Oak Lake", "C": "Maple Beach", "D": NONE_OPTION},
        [{"label": "A", "text": "Ryan Park"}, {"label": "B", "text": "Oak Lake"}, {"label": "C", "text": "Maple Beach"}],
    ],
)
def test_parse_accepts_option_shapes(options):
    (parsed,) = parse_mcqa_json(json.dumps({"questions": [{"question": "Q?", "options": options, "answer": "A"}]}))
    assert parsed["options"] == {"A": "Ryan Park", "B": "Oak Lake", "C": "Maple Beach", "D": NONE_OPTION}


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("B", "B"),
        ("b", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("B) Oak Lake", "B"),
        ("Option B", "B"),
        ("The answer is C", "C"),
        ("Oak Lake", "B"),
        (["C"], "C"),
        ("A, B", "A,B"),
        (["A", "C"], "A,C"),
        ("D", "D"),
        ("", ""),
        ("no idea", "no idea"),
    ],
)
def test_parse_normalises_answers(answer, expected):
    item = {"question": "Q?", "options": {"A": "Ryan Park", "B": "Oak Lake", "C": "Maple Beach"}, "answer": answer}
    assert parse_mcqa_json(json.dumps({"questions": [item]}))[0]["answer"] == expected


def test_parse_accepts_correct_answer_key():
    item = {"question": "Q?", "options": ["x", "y", "z"], "correct_answer": "C"}
    assert parse_mcqa_json(json.dumps({"questions": [item]}))[0]["answer"] == "C"


@pytest.mark.parametrize(
    "text, message",
    [
        ("I cannot do that.", "no JSON"),
        ('{"questions": [{"question": "Q?", "options": ', "not valid JSON"),
        ('{"items_list": []}', "no 'questions'"),
        ('{"questions": {"a": 1}}', "must be a list"),
        ('{"questions": ["Q?"]}', "question 1 must be an object"),
        ('{"questions": [{"question": "Q?"}]}', "no 'options'"),
        ('{"questions": [{"question": "Q?", "options": "A B C"}]}', "'options' must be"),
    ],
)
def test_parse_errors_say_what_is_wrong(text, message):
    with pytest.raises(MCQAParseError, match=message):
        parse_mcqa_json(text)


# --------------------------------------------------------------------------------------------------
# validate_questions


def test_valid_set_has_no_problems():
    assert validate_questions(three(), 3) == []


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda qs: qs[:2], "expected 3 questions, got 2"),
        (lambda qs: qs.__setitem__(0, q(b="  ryan   PARK ")), "options A and B are the same"),
        (lambda qs: qs.__setitem__(0, q(c=NONE_OPTION.upper())), "options C and D are the same"),
        (lambda qs: qs.__setitem__(0, q(answer="")), "not one of A, B, C"),
        (lambda qs: qs.__setitem__(0, q(answer="D")), "answer is D"),
        (lambda qs: qs.__setitem__(0, q(answer="A,B")), "marks 2 options correct"),
        (lambda qs: qs.__setitem__(0, q(d="None of the above")), "option D must be exactly"),
        (lambda qs: qs.__setitem__(0, q(b="")), "option(s) B empty"),
        (lambda qs: qs.__setitem__(0, q(question=" ")), "question text is empty"),
        (lambda qs: qs.__setitem__(0, q(question="...", c="...")), "question text is empty"),
        (lambda qs: qs.__setitem__(0, q(c="...")), "option(s) C empty"),
        (lambda qs: qs.__setitem__(1, q()), "same question as question 1"),
        (lambda qs: qs[0]["options"].pop("C"), "option(s) C missing"),
        (lambda qs: qs[0]["options"].__setitem__("E", "Extra"), "unexpected option(s) E"),
    ],
)
def test_invalid_sets_are_rejected(mutate, message):
    questions = three()
    result = mutate(questions)
    questions = result if isinstance(result, list) else questions
    problems = validate_questions(questions, 3)
    assert any(message in problem for problem in problems), problems


# --------------------------------------------------------------------------------------------------
# Property tests: shuffling and validation

option_text = st.text(alphabet=st.characters(whitelist_categories=("L", "N", "Zs")), min_size=1, max_size=20).filter(
    lambda s: normalize_text(s) != ""
)


@st.composite
def valid_question(draw):
    texts = draw(
        st.lists(option_text, min_size=3, max_size=3, unique_by=normalize_text).filter(
            lambda ts: normalize_text(NONE_OPTION) not in {normalize_text(t) for t in ts}
        )
    )
    answer = draw(st.sampled_from("ABC"))
    return q("What?", *texts, answer=answer)


@settings(max_examples=200, deadline=None)
@given(valid_question(), st.integers(0, 2**32 - 1))
def test_shuffle_keeps_answer_text_d_and_is_a_reproducible_permutation(question, seed):
    shuffled = shuffle_options(question, np.random.default_rng(seed))
    assert list(shuffled["options"]) == ["A", "B", "C", "D"]
    assert shuffled["options"]["D"] == NONE_OPTION
    assert shuffled["options"][shuffled["answer"]] == question["options"][question["answer"]]
    assert sorted(shuffled["options"][x] for x in "ABC") == sorted(question["options"][x] for x in "ABC")
    assert shuffled == shuffle_options(question, np.random.default_rng(seed))
    assert question["options"]["D"] == NONE_OPTION and shuffled is not question  # input untouched
    assert validate_questions([shuffled], 1) == []


def test_shuffle_moves_answers_around():
    letters = {shuffle_options(q(), rng_for(1, "s", i))["answer"] for i in range(30)}
    assert letters == {"A", "B", "C"}


@settings(max_examples=150, deadline=None)
@given(valid_question(), st.sampled_from("ABC"), st.sampled_from("ABC"))
def test_validation_rejects_duplicates(question, source, target):
    if source == target:
        return
    variant = " " + question["options"][source].upper() + "  "
    # Unicode case mapping is not always reversible (dotless i); those are not the same text anyway.
    assume(normalize_text(variant) == normalize_text(question["options"][source]))
    question["options"][target] = variant
    assert validate_questions([question], 1)


@settings(max_examples=150, deadline=None)
@given(valid_question(), st.sampled_from(["", "D", "A,B", "B,C", "A,B,C", "E"]))
def test_validation_rejects_zero_or_several_correct(question, answer):
    question["answer"] = answer
    assert validate_questions([question], 1)


@settings(max_examples=150, deadline=None)
@given(valid_question(), option_text.filter(lambda s: s != NONE_OPTION))
def test_validation_rejects_any_other_d(question, d):
    question["options"]["D"] = d
    assert validate_questions([question], 1)


@settings(max_examples=100, deadline=None)
@given(valid_question())
def test_parse_then_validate_accepts_what_a_model_would_send(question):
    assert validate_questions(parse_mcqa_json("```json\n" + reply([question]) + "\n```"), 1) == []


# --------------------------------------------------------------------------------------------------
# Support


@pytest.mark.parametrize(
    "option, supported",
    [
        ("Ryan Park", True),
        ("2025-10-11", True),
        ("October 11th, 2025", True),
        ("Only green tea", True),
        ("Cherry blossom trees", True),
        ("Oak Lake", False),
        ("A hot summer afternoon", False),
    ],
)
def test_is_supported(option, supported):
    assert is_supported(option, DIALOGUE, 0.5) is supported


# --------------------------------------------------------------------------------------------------
# Settings and stage


@pytest.mark.parametrize(
    "kwargs, field",
    [({"questions_per_dialogue": 0}, "questions_per_dialogue"), ({"max_attempts": 0}, "max_attempts"),
     ({"support_threshold": 1.5}, "support_threshold"), ({"concurrency": 0}, "concurrency")],
)
def test_settings_reject_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MCQASettings(**kwargs)


def test_failed_dialogue_gives_failed_row_without_a_model_call():
    fake = fake_writer(lambda req: reply(three()))
    rows = run_stage(fake, [dialogue_row(status="failed"), dialogue_row(concept="c1", index=1)])
    assert len(fake.requests) == 1
    assert rows[0]["status"] == "failed" and rows[0]["failure_reason"] == "dialogue_failed" and rows[0]["attempts"] == 0
    assert rows[1]["status"] == "ok"
    to_table(rows, schemas.MCQAS, "test")


def test_ok_row_is_shuffled_reproducibly_with_answers_kept_and_support_flags():
    fake = fake_writer(lambda req: reply(three()))
    rows = run_stage(fake, [dialogue_row()])
    (row,) = rows
    assert row["status"] == "ok" and row["attempts"] == 1 and row["writer"] == "fake:scripted"
    questions = row["questions"]
    assert [x["question_id"] for x in questions] == ["Q1", "Q2", "Q3"]
    for written, original in zip(questions, three()):
        assert written["options"][written["answer"]] == original["options"][original["answer"]]
        assert written["options"]["D"] == NONE_OPTION
        expected = shuffle_options(original, rng_for(5, "mcqa-shuffle", "s0", "c0", questions.index(written)))
        assert written["options"] == expected["options"]
    assert [x["supported"] for x in questions] == [True, True, True]
    assert rows == run_stage(fake_writer(lambda req: reply(three())), [dialogue_row()])


def test_unsupported_answer_is_flagged_not_dropped():
    questions = three()
    questions[2] = q("What does Seth drink?", "Coffee", "Lemonade with mint", "Milk", "B")
    (row,) = run_stage(fake_writer(lambda req: reply(questions)), [dialogue_row()])
    assert row["status"] == "ok"
    assert [x["supported"] for x in row["questions"]] == [True, True, False]


def test_request_carries_schema_task_and_prompt():
    fake = fake_writer(lambda req: reply(three()))
    run_stage(fake, [dialogue_row()])
    (request,) = fake.requests
    assert request.response_schema == response_schema(3)
    assert request.task == {
        "kind": "mcqa", "name": "Seth", "facts": [{"kind": "habit", "text": "only drinks green tea"}],
        "dialogue": DIALOGUE, "n": 3, "attempt": 1,
    }
    text = request.messages[0].text
    assert DIALOGUE in text and NONE_OPTION in text and "only drinks green tea" in text and "$" not in text


def test_malformed_then_good_is_repaired():
    fake = fake_writer(lambda req: "```json\n{broken" if req.task["attempt"] == 1 else reply(three()))
    (row,) = run_stage(fake, [dialogue_row()])
    assert row["status"] == "ok" and row["attempts"] == 2
    repair = fake.requests[1]
    assert [m.role for m in repair.messages] == ["user", "assistant", "user"]
    assert "no JSON" in repair.messages[2].text or "not valid JSON" in repair.messages[2].text


def test_invalid_every_time_fails_with_reason_and_raw():
    bad = three()
    bad[1]["answer"] = "D"
    fake = fake_writer(lambda req: reply(bad) if req.task["attempt"] < 3 else None)
    (row,) = run_stage(fake, [dialogue_row()])
    assert row["status"] == "failed" and row["attempts"] == 3
    assert row["failure_reason"].startswith("model_error: RuntimeError: boom")
    assert row["raw_response"] == reply(bad)
    (row,) = run_stage(fake_writer(lambda req: reply(bad)), [dialogue_row()], MCQASettings(max_attempts=2))
    assert row["failure_reason"].startswith("invalid_output: question 2: answer is D") and row["attempts"] == 2
    to_table([row], schemas.MCQAS, "test")


def test_ok_dialogue_without_text_is_an_error():
    row = dialogue_row()
    row["dialogue"] = None
    with pytest.raises(ValueError, match=r"dialogues row 0 .*'dialogue'"):
        run_stage(fake_writer(lambda req: reply(three())), [row])


def _facts_writer_rows(n):
    from covip.content.facts import sample_facts
    from covip.stages.dialogues import render_dialogue, parse_dialogue

    writer = FactsFirstWriter(ModelSpec("dialogue_writer", "local_facts_writer"))
    rows = []
    for i in range(n):
        facts = sample_facts({"concept_id": f"c{i}", "category": ["person", "animal", "object", "place"][i % 4]}, 1, "s", 3)
        from covip.clients.base import ChatRequest, Message

        task = {"kind": "dialogue", "name": "Seth", "category": "person", "facts": facts, "num_turns": 6}
        text = writer.complete(ChatRequest((Message.user("x"),), task=task, seed=i)).text
        row = dialogue_row(concept=f"c{i}", index=i, dialogue=render_dialogue(parse_dialogue(text)))
        row["facts"] = facts
        rows.append(row)
    return rows


def test_facts_writer_questions_validate_and_are_supported():
    rows = run_stage(FactsFirstWriter(ModelSpec("mcqa_writer", "local_facts_writer")), _facts_writer_rows(24))
    assert all(r["status"] == "ok" for r in rows)
    assert all(x["supported"] for r in rows for x in r["questions"])
    answers = [x["answer"] for r in rows for x in r["questions"]]
    assert set(answers) == {"A", "B", "C"}


def test_facts_writer_faults_re_ask_and_fail_with_reasons():
    rows = run_stage(FactsFirstWriter(ModelSpec("mcqa_writer", "local_facts_writer", options={"malformed_rate": 0.4})), _facts_writer_rows(24))
    assert len(rows) == 24 and any(r["attempts"] > 1 for r in rows)
    rows = run_stage(FactsFirstWriter(ModelSpec("mcqa_writer", "local_facts_writer", options={"malformed_rate": 1.0})), _facts_writer_rows(12))
    assert all(r["status"] == "failed" and r["attempts"] == 3 and r["failure_reason"].startswith("invalid_output") for r in rows)
    to_table(rows, schemas.MCQAS, "test")
