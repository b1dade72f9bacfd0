"""The lexical judge: golden cases of its rule, its reply styles and faults, and the LAR branch."""

import pytest

from covip.clients.base import ChatRequest, Message
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.local.lexical_judge import LexicalJudge, lexical_choice, question_names
from covip.protocol.judging import parse_judge_letter

OPTIONS = {"A": "Oak trees", "B": "Cherry blossom trees", "C": "Maple trees", "D": "The answer cannot be determined"}
WHEN = {"A": "Last weekend", "B": "Last Monday", "C": "Last summer", "D": "The answer cannot be determined"}


def judge(**options):
    return LexicalJudge(ModelSpec(name="judge", backend="local_lexical_judge", options=options))


def capeval_request(caption, question, options, seed=1):
    task = {"kind": "capeval", "caption": caption, "question": question, "options": options}
    return ChatRequest((Message.user("prompt text is ignored by the stand-in"),), task=task, seed=seed)


@pytest.mark.parametrize(
    "question, names",
    [
        ("What type of trees does Seth get especially excited to pass?", ["Seth"]),
        ("What color was Judy's fur in the photo, as described by the user?", ["Judy"]),
        ("What is the user’s current photo of Johnny showing?", ["Johnny"]),
        ("According to the user, what was Lindsay doing most recently?", ["Lindsay"]),
        ("On what date did the user see Lawrence?", ["Lawrence"]),
        ("Seth's favourite place? Where did I meet him on Monday?", ["Seth"]),
        ("What did Megan do at Ryan Park?", ["Megan", "Ryan", "Park"]),
        ("Where is the red mug kept?", []),
    ],
)
def test_question_names(question, names):
    assert question_names(question) == names


@pytest.mark.parametrize(
    "caption, question, options, expected",
    [
        # The subject is named and its fact is stated: the supported option.
        ("Seth gets excited every time he passes the cherry blossom trees.",
         "What type of trees does Seth get especially excited to pass?", OPTIONS, "B"),
        ("Last weekend you took Seth to the park.", "When did the user take Seth to the park?", WHEN, "A"),
        # A generic fact about ANOTHER concept does not answer this concept's question.
        ("Last weekend you took Matthew to the park.", "When did the user take Seth to the park?", WHEN, "D"),
        # Subject named, but nothing about the asked fact: D.
        ("Seth is sitting on a bench.", "What type of trees does Seth get especially excited to pass?", OPTIONS, "D"),
        # Two options equally supported: D (the caption does not single one out).
        ("Seth loves oak trees and maple trees.", "What type of trees does Seth get especially excited to pass?",
         OPTIONS, "D"),
        # Below the threshold: only 'trees' of 'Oak trees' would be covered.
        ("Seth walked past some trees.", "What type of trees does Seth get especially excited to pass?", OPTIONS, "D"),
        # A question with no name falls back to option support alone.
        ("The mug sits in the top drawer of the desk.", "Where is the mug kept?",
         {"A": "In the top drawer of the desk", "B": "On the windowsill", "C": "In the car", "D": "x"}, "A"),
        # Empty caption (a failed caption is judged as empty): always D.
        ("", "When did the user take Seth to the park?", WHEN, "D"),
    ],
)
def test_lexical_choice_golden(caption, question, options, expected):
    assert lexical_choice(caption, question, options, threshold=0.6) == expected


def test_sentences_naming_the_subject_break_ties_between_concepts():
    # Both actions appear in the caption (two positive concepts): the sentence naming Stephanie decides.
    caption = "Robert was being photographed for a listing. Stephanie was being cleaned after a muddy hike."
    options = {"A": "Being photographed for a listing", "B": "Being cleaned after a muddy hike",
               "C": "Wrapped as a birthday present", "D": "The answer cannot be determined"}
    assert lexical_choice(caption, "What was Stephanie up to most recently?", options, 0.6) == "B"
    assert lexical_choice(caption, "What was Robert up to most recently?", options, 0.6) == "A"
    # A pronoun after the name: the whole caption is the fallback.
    assert lexical_choice("Seth came by. He tripped over his own paws.", "What did Seth do?",
                          {"A": "He tripped over his own paws", "B": "He ran in circles", "C": "He barked", "D": "x"},
                          0.6) == "A"


def test_dates_in_other_formats_count():
    options = {"A": "2023-05-21", "B": "2024-10-04", "C": "2024-05-12", "D": "The answer cannot be determined"}
    assert lexical_choice("You last saw Lawrence on May 12, 2024.", "On what date did the user see Lawrence?",
                          options, 0.6) == "C"


def test_judge_answers_in_the_prompts_format_deterministically():
    """A short reason, then `Answer: \\boxed{X}` on its own line, as the judge prompt asks (and the
    authors' judge answers)."""
    lexical = judge()
    request = capeval_request("Seth loves the cherry blossom trees.", "Which trees does Seth love?", OPTIONS)
    first = lexical.complete(request)
    assert first.ok and first.text.endswith("\nAnswer: \\boxed{B}") and parse_judge_letter(first.text) == "B"
    assert lexical.complete(request).text == first.text
    dog = lexical.complete(capeval_request("A dog on a couch.", "Which trees does Seth love?", OPTIONS)).text
    assert dog.endswith("Answer: \\boxed{D}")
    assert judge(answer_style="letter").complete(request).text == "B"  # for a prompt that asks for one letter


def test_varied_style_uses_several_forms_that_the_parser_reads():
    lexical = judge(answer_style="varied")
    caption, question = "Seth loves the cherry blossom trees.", "Which trees does Seth love?"
    texts = {lexical.complete(capeval_request(caption, question, OPTIONS, seed=seed)).text for seed in range(60)}
    assert len(texts) >= 4  # the forms really vary
    for text in texts:
        assert parse_judge_letter(text, OPTIONS) == "B", text


def test_garble_and_error_rates():
    request = capeval_request("Seth loves the cherry blossom trees.", "Which trees does Seth love?", OPTIONS)
    garbled = judge(garble_rate=1.0).complete(request)
    assert garbled.ok and parse_judge_letter(garbled.text, OPTIONS) is None
    failed = judge(error_rate=1.0).complete(request)
    assert not failed.ok and failed.text is None and "error_rate" in failed.error
    # A partial rate hits some requests and not others, the same ones on every run.
    partial = judge(error_rate=0.5)
    outcomes = [partial.complete(capeval_request("c", "q", OPTIONS, seed=s)).ok for s in range(40)]
    assert 5 < sum(outcomes) < 35
    assert outcomes == [partial.complete(capeval_request("c", "q", OPTIONS, seed=s)).ok for s in range(40)]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"support_threshold": 0.0}, "support_threshold"),
        ({"answer_style": "loud"}, "answer_style"),
        ({"error_rate": 1.5}, "error_rate"),
        ({"threshold": 0.5}, "unknown key"),
    ],
)
def test_bad_options_fail_clearly(options, message):
    with pytest.raises(ValueError, match=message):
        judge(**options)


def test_unknown_task_kind_is_a_recorded_error_through_the_registry():
    client = ModelRegistry({"judge": {"backend": "local_lexical_judge"}}).chat("judge")
    response = client.complete(ChatRequest((Message.user("hi"),), task={"kind": "dialogue"}))
    assert not response.ok and "capeval" in response.error
    assert client.spec.is_stand_in


def test_lar_judging_uses_the_shared_lexical_verdict():
    from covip.local import lar_judge as lar

    lexical = judge()
    cases = [
        ("What was I doing last time?", "return a package at the post office",
         "You were going to the post office to return a package."),
        ("What was I doing last time?", "return a package at the post office", "I don't know."),
    ]
    verdicts = []
    for question, reference, response in cases:
        task = {"kind": "lar_judge", "question": question, "reference": reference, "response": response}
        reply = lexical.complete(ChatRequest((Message.user("x"),), task=task, seed=3))
        assert reply.ok and reply.text == lar.lexical_lar_verdict(question, reference, response)
        verdicts.append(reply.text)
    assert verdicts == ["Correct", "Wrong"]
