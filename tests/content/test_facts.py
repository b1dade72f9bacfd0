"""Facts-first content (covip.content.facts) and the offline facts-first writer (covip.local.facts_writer)."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest

from covip.clients.base import ChatRequest, ChatModel, Message
from covip.clients.spec import ModelSpec
from covip.content.facts import (
    CATEGORIES,
    DATE_FIRST,
    DATE_LAST,
    FACT_KINDS,
    FactError,
    alternative_fact_texts,
    fact_family,
    fake_first_names,
    infer_category,
    sample_facts,
)
from covip.core.text import normalize_text
from covip.local.facts_writer import FactsFirstWriter, option_text
from covip.stages.dialogues import parse_dialogue, validate_dialogue
from covip.stages.mcqa import NONE_OPTION, parse_mcqa_json, validate_questions


def concept(concept_id="c1", category="person", name="Jeffrey"):
    return {"concept_id": concept_id, "category": category, "name": name}


def writer(**options) -> FactsFirstWriter:
    return FactsFirstWriter(ModelSpec("dialogue_writer", "local_facts_writer", options=options))


def dialogue_request(name, category, facts, seed, num_turns=6, attempt=1):
    task = {"kind": "dialogue", "name": name, "category": category, "facts": facts, "num_turns": num_turns, "attempt": attempt}
    return ChatRequest((Message.user("write a dialogue"),), task=task, seed=seed)


def mcqa_request(name, facts, dialogue, seed, n=3, attempt=1):
    task = {"kind": "mcqa", "name": name, "facts": facts, "dialogue": dialogue, "n": n, "attempt": attempt}
    return ChatRequest((Message.user("write questions"),), task=task, seed=seed)


# --------------------------------------------------------------------------------------------------
# sample_facts


def test_sample_facts_is_reproducible_and_keyed_by_sample_and_concept():
    first = sample_facts(concept(), 7, "s1", 3)
    assert first == sample_facts(concept(), 7, "s1", 3)
    assert first != sample_facts(concept(), 7, "s2", 3)
    assert first != sample_facts(concept(), 8, "s1", 3)
    assert first != sample_facts(concept("c2"), 7, "s1", 3)


@pytest.mark.parametrize("category", CATEGORIES)
def test_sample_facts_shape_kinds_and_length(category):
    for index in range(30):
        facts = sample_facts(concept(f"c{index}", category), 3, f"s{index}", 3)
        assert len(facts) == 3
        assert all(set(fact) == {"kind", "text"} for fact in facts)
        kinds = [fact["kind"] for fact in facts]
        assert len(set(kinds)) == 3 and set(kinds) <= set(FACT_KINDS)
        for fact in facts:
            # short enough to be a multiple-choice option, no unfilled template slot
            assert 5 <= len(fact["text"]) <= 80, fact
            assert "{" not in fact["text"] and "}" not in fact["text"]


@pytest.mark.parametrize("category", CATEGORIES)
def test_facts_come_from_their_category_lists(category):
    for index in range(20):
        facts = sample_facts(concept(f"c{index}", category), 11, f"s{index}", 5)
        assert infer_category(facts) == category


def test_date_facts_are_iso_dates_in_the_window():
    for index in range(40):
        facts = sample_facts(concept(f"c{index}"), 5, "s", 5)
        (date_fact,) = [fact for fact in facts if fact["kind"] == "date"]
        match = re.fullmatch(r"on (\d{4}-\d{2}-\d{2})", date_fact["text"])
        assert match, date_fact
        assert DATE_FIRST <= dt.date.fromisoformat(match[1]) <= DATE_LAST


def test_more_facts_than_kinds_keeps_texts_distinct():
    facts = sample_facts(concept(), 1, "s", 9)
    assert len(facts) == 9
    assert len({normalize_text(fact["text"]) for fact in facts}) == 9


def test_restricted_kinds_are_respected():
    facts = sample_facts(concept(), 1, "s", 2, kinds=("habit", "date"))
    assert {fact["kind"] for fact in facts} == {"habit", "date"}


def test_sample_facts_rejects_missing_category_naming_the_concept():
    with pytest.raises(FactError, match=r"'c9' field 'category'"):
        sample_facts({"concept_id": "c9", "category": ""}, 1, "s", 3)
    with pytest.raises(FactError, match=r"'c9' field 'category'"):
        sample_facts({"concept_id": "c9"}, 1, "s", 3)
    with pytest.raises(FactError, match="kinds"):
        sample_facts(concept(), 1, "s", 3, kinds=("weather",))


@pytest.mark.parametrize(
    "category, family",
    [("person", "person"), ("People", "person"), ("dogs", "animal"), ("landmark", "place"), ("mug", "object"), ("zz", "object")],
)
def test_user_categories_map_to_a_word_list_family(category, family):
    assert fact_family(category) == family
    facts = sample_facts(concept("c1", category), 4, "s", 5)
    assert infer_category(facts) == family


def test_alternatives_are_distinct_excluded_and_reproducible():
    exclude = ["only drinks green tea"]
    alternatives = alternative_fact_texts("habit", "person", 5, "k", 2, exclude)
    assert alternatives == alternative_fact_texts("habit", "person", 5, "k", 2, exclude)
    assert len(alternatives) == 2
    assert len({normalize_text(t) for t in alternatives + exclude}) == 3
    # different template from the excluded fact: never the same phrase with another proper noun
    assert not any(text.startswith("only drinks") for text in alternatives)


def test_fake_first_names_exclude_the_given_name():
    names = fake_first_names(3, 5, exclude=["Jeffrey"])
    assert len(set(names)) == 5 and "Jeffrey" not in names
    assert names == fake_first_names(3, 5, exclude=["Jeffrey"])


# --------------------------------------------------------------------------------------------------
# FactsFirstWriter


def test_writer_is_a_chat_model_with_the_spec_identity():
    w = writer()
    assert isinstance(w, ChatModel)
    assert w.identity == "dialogue_writer:local_facts_writer"


def test_writer_rejects_unknown_options_and_rates():
    with pytest.raises(ValueError, match="malformed"):
        writer(malformd_rate=0.1)
    with pytest.raises(ValueError, match="malformed_rate"):
        writer(malformed_rate=1.5)


def test_writer_rejects_unknown_task_kind():
    with pytest.raises(ValueError, match="task kind"):
        writer().complete(ChatRequest((Message.user("hi"),), task={"kind": "caption"}))


def test_option_text_strips_sentence_glue():
    assert option_text("date", "on 2025-10-11") == "2025-10-11"
    assert option_text("action", "was repairing a bicycle tire") == "Repairing a bicycle tire"
    assert option_text("habit", "only drinks green tea") == "Only drinks green tea"


@pytest.mark.parametrize("category", CATEGORIES)
def test_writer_dialogues_and_questions_pass_validation_for_many_seeds(category):
    w = writer()
    texts = set()
    for seed in range(60):
        facts = sample_facts(concept(f"c{seed}", category, "Harbor View"), seed, "s", 3)
        reply = w.complete(dialogue_request("Harbor View", category, facts, seed))
        assert reply.ok
        turns = parse_dialogue(reply.text)
        assert validate_dialogue(turns, "Harbor View", facts, 6, min_facts=3) == []
        texts.add(reply.text)
        dialogue = "\n".join(turn["text"] for turn in turns)
        answer = w.complete(mcqa_request("Harbor View", facts, dialogue, seed))
        questions = parse_mcqa_json(answer.text)
        assert validate_questions(questions, 3) == []
        for question, fact in zip(questions, facts):
            correct = question["options"][question["answer"]]
            assert normalize_text(correct) == normalize_text(option_text(fact["kind"], fact["text"]))
    assert len(texts) == 60  # phrasing and facts vary


def test_writer_honours_num_turns_and_fewer_facts_than_questions():
    w = writer()
    facts = sample_facts(concept(), 2, "s", 1)
    reply = w.complete(dialogue_request("Jeffrey", "person", facts, 1, num_turns=8))
    assert validate_dialogue(parse_dialogue(reply.text), "Jeffrey", facts, 8) == []
    questions = parse_mcqa_json(w.complete(mcqa_request("Jeffrey", facts, reply.text, 1, n=2)).text)
    assert validate_questions(questions, 2) == []
    assert questions[1]["options"][questions[1]["answer"]] == "Jeffrey"


def test_writer_is_deterministic_per_request():
    w = writer()
    facts = sample_facts(concept(), 2, "s", 3)
    first = w.complete(dialogue_request("Jeffrey", "person", facts, 4)).text
    assert first == w.complete(dialogue_request("Jeffrey", "person", facts, 4)).text
    assert first != w.complete(dialogue_request("Jeffrey", "person", facts, 4, attempt=2)).text


def test_malformed_rate_one_breaks_every_reply_detectably():
    w = writer(malformed_rate=1.0)
    for seed in range(80):
        facts = sample_facts(concept(f"c{seed}"), seed, "s", 3)
        reply = w.complete(dialogue_request("Jeffrey", "person", facts, seed))
        assert validate_dialogue(parse_dialogue(reply.text), "Jeffrey", facts, 6), reply.text
        good_dialogue = writer().complete(dialogue_request("Jeffrey", "person", facts, seed)).text
        answer = w.complete(mcqa_request("Jeffrey", facts, good_dialogue, seed)).text
        try:
            problems = validate_questions(parse_mcqa_json(answer), 3)
        except ValueError:
            problems = ["unparseable"]
        assert problems, answer


def test_malformed_rate_is_roughly_the_configured_share():
    w = writer(malformed_rate=0.3)
    facts = sample_facts(concept(), 1, "s", 3)
    bad = sum(
        bool(validate_dialogue(parse_dialogue(w.complete(dialogue_request("Jeffrey", "person", facts, seed)).text), "Jeffrey", facts, 6))
        for seed in range(300)
    )
    assert 60 <= bad <= 120


def test_error_rate_returns_failed_responses():
    w = writer(error_rate=1.0)
    reply = w.complete(dialogue_request("Jeffrey", "person", sample_facts(concept(), 1, "s", 3), 1))
    assert not reply.ok and "simulated" in reply.error


def test_mcqa_reply_is_the_json_a_model_would_send():
    w = writer(format_variety=False)
    facts = sample_facts(concept(), 1, "s", 3)
    text = w.complete(mcqa_request("Jeffrey", facts, "User: hi", 1)).text
    data = json.loads(text)
    assert [set(q) for q in data["questions"]] == [{"question", "options", "answer"}] * 3
    assert all(q["options"]["D"] == NONE_OPTION for q in data["questions"])
