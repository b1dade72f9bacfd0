"""Reference policies: what an oracle, a context dump and a blind captioner write, from the task alone."""

from __future__ import annotations

import json
import re

import pytest

from covip.clients.base import ChatRequest, Message
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.local.reference_policies import (
    DONT_KNOW,
    BlindPolicy,
    ContextDumpPolicy,
    OraclePolicy,
    ReferencePolicyError,
    fact_sentence,
)
from covip.protocol.requests import build_cag_request, build_caption_request


def _policy(cls, backend):
    return cls(ModelSpec(backend.removeprefix("reference_"), backend))


ORACLE = _policy(OraclePolicy, "reference_oracle")
DUMP = _policy(ContextDumpPolicy, "reference_context_dump")
BLIND = _policy(BlindPolicy, "reference_blind")


@pytest.fixture(scope="module")
def requests_(benchmark_splits, prompts):
    """One caption request per test sample of the real benchmark."""
    return [build_caption_request(row, prompts) for row in benchmark_splits[1]]


def _has_word(phrase: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text, re.IGNORECASE) is not None


def _split(task):
    positives = set(task["positive_indices"])
    negatives = [k for k in range(len(task["context_names"])) if k not in positives]
    return sorted(positives), negatives


def test_fixture_has_positives_and_negatives(requests_):
    # The properties below are only meaningful if the benchmark has both kinds of context concept.
    assert any(_split(r.task)[1] for r in requests_)
    assert {len(r.task["positive_indices"]) for r in requests_} >= {1, 2}


def test_oracle_states_every_positive_fact_and_nothing_about_negatives(requests_):
    for request in requests_:
        task = request.task
        caption = ORACLE.complete(request).text
        positives, negatives = _split(task)
        positive_text = " ".join(f["text"] for k in positives for f in task["context_facts"][k])
        for k in positives:
            assert _has_word(task["context_names"][k], caption)
            for fact in task["context_facts"][k]:
                assert fact["text"] in caption, (task["sample_id"], fact)
        for k in negatives:
            name = task["context_names"][k]
            if not _has_word(name, positive_text):  # a positive fact may itself contain that first name
                assert not _has_word(name, caption), (task["sample_id"], name)
            for fact in task["context_facts"][k]:
                if fact["text"] not in positive_text:
                    assert fact["text"] not in caption, (task["sample_id"], fact)
        assert "\n" not in caption  # one paragraph
        assert "User:" not in caption and "Model:" not in caption


def test_context_dump_contains_every_dialogue(requests_):
    for request in requests_:
        caption = DUMP.complete(request).text
        for dialogue in request.task["context_dialogues"]:
            assert dialogue.strip() in caption
        # It leaks the negatives' names: the shortcut the metric must punish.
        for k in _split(request.task)[1]:
            assert _has_word(request.task["context_names"][k], caption)


def test_blind_names_nothing_and_recalls_nothing(requests_):
    for request in requests_:
        task = request.task
        caption = BLIND.complete(request).text
        assert caption
        for name in task["context_names"]:
            assert not _has_word(name, caption)
        for facts in task["context_facts"]:
            for fact in facts:
                assert fact["text"] not in caption
        n = len(task["positive_indices"])
        assert ["one", "two", "three", "four"][n - 1] in caption  # it does count what it sees


def test_blind_caption_golden():
    task = {"kind": "caption", "positive_indices": [2, 0], "context_categories": ["animal", "person", "object"]}
    text = BLIND.complete(ChatRequest((Message.user("x"),), task=task)).text
    assert text == "The photo shows two subjects in one scene: an object and an animal."


@pytest.mark.parametrize(
    "fact, category, expected",
    [
        ({"kind": "date", "text": "on 2024-05-12"}, "person", "You last saw Ann on 2024-05-12."),
        ({"kind": "place", "text": "at Ryan Park in Lakeview"}, "animal", "You came across Ann at Ryan Park in Lakeview."),
        ({"kind": "place", "text": "beside Moss Lake"}, "place", "Ann is beside Moss Lake."),
        ({"kind": "action", "text": "was reading a map"}, "person", "The last time you checked, Ann was reading a map."),
        ({"kind": "habit", "text": "always carries a red umbrella."}, "person", "Ann always carries a red umbrella."),
        ({"kind": "mystery", "text": "likes rain"}, None, "Ann likes rain."),
    ],
)
def test_fact_sentences(fact, category, expected):
    assert fact_sentence(fact, "Ann", category) == expected


def test_responses_are_deterministic_and_accounted(requests_):
    for policy, label in ((ORACLE, "oracle"), (DUMP, "context_dump"), (BLIND, "blind")):
        first, second = policy.complete(requests_[0]), policy.complete(requests_[0])
        assert first.text == second.text
        assert first.model == label  # no model id in the spec: named for the policy
        assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (0, len(first.text.split()))
        assert policy.identity == f"{label}:reference_{label}"
    named = OraclePolicy(ModelSpec("oracle", "reference_oracle", model="oracle-v1"))
    assert named.complete(requests_[0]).model == "oracle-v1"


def test_registry_builds_them_as_stand_ins(requests_):
    registry = ModelRegistry({n: {"backend": f"reference_{n}"} for n in ("oracle", "context_dump", "blind")})
    for name, cls in (("oracle", OraclePolicy), ("context_dump", ContextDumpPolicy), ("blind", BlindPolicy)):
        model = registry.chat(name)
        assert isinstance(model.inner, cls) and model.spec.is_stand_in
        assert model.complete(requests_[0]).ok


def test_cag_and_diagnostic_answers(requests_, prompts):
    request = next(r for r in requests_ if len(r.task["positive_indices"]) >= 1)
    task = request.task
    k = task["positive_indices"][0]
    fact = task["context_facts"][k][0]["text"]
    question = f"What do you remember about {task['context_names'][k]} ({fact})? Answer in \\boxed{{}}."
    cag = build_cag_request(request, "a caption", question, prompts=prompts)
    oracle = ORACLE.complete(cag).text
    assert fact in oracle.split("\\boxed{")[1]  # the best-matching fact is boxed
    for j in task["positive_indices"]:
        for f in task["context_facts"][j]:
            assert f["text"] in oracle
    dump = DUMP.complete(cag).text
    assert fact in dump and "\\boxed{" in dump
    assert BLIND.complete(cag).text == DONT_KNOW
    # A direct diagnostic task without facts or names: the oracle reads the target's dialogue.
    dialogues = ["User: I saw this person at the Elm Street bakery on 2023-01-02.\nModel: Noted.",
                 "User: I saw this person at Lake Park on 2024-06-07.\nModel: Noted."]
    diagnostic = {"kind": "diagnostic", "task": "lsd", "question": "Where did I see them last?", "target_index": 1,
                  "dialogues_context": dialogues}
    answer = ORACLE.complete(ChatRequest((Message.user("q"),), task=diagnostic)).text
    assert "Lake Park" in answer and "Elm Street" not in answer
    assert ORACLE.complete(ChatRequest((Message.user("q"),), task={**diagnostic, "target_index": -1})).text == DONT_KNOW
    assert BLIND.complete(ChatRequest((Message.user("q"),), task=diagnostic)).text == DONT_KNOW


def test_unknown_task_kinds_fail_clearly_and_are_recorded(requests_):
    with pytest.raises(ReferencePolicyError, match="'capeval'"):
        ORACLE.complete(ChatRequest((Message.user("q"),), task={"kind": "capeval"}))
    with pytest.raises(ReferencePolicyError, match="request.task"):
        BLIND.complete(ChatRequest((Message.user("q"),)))
    model = ModelRegistry({"oracle": {"backend": "reference_oracle"}}).chat("oracle")
    response = model.complete(ChatRequest((Message.user("q"),), task={"kind": "mcqa"}))
    assert not response.ok and "ReferencePolicyError" in response.error


def test_task_is_all_they_read(requests_):
    # Same task, different messages: same caption (they never read the prose or the images).
    request = requests_[0]
    stripped = ChatRequest((Message.user("nothing here"),), task=json.loads(json.dumps(request.task)))
    for policy in (ORACLE, DUMP, BLIND):
        assert policy.complete(stripped).text == policy.complete(request).text
