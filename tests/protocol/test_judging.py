"""Asking a judge and reading its reply (covip.protocol.judging): the CapEval-QA request and letter
parser, the LAR request and verdict parser, the seeds, and the repair loop every model-calling stage uses."""

from __future__ import annotations

import io

import pytest

from covip.clients.base import ChatRequest, Message
from covip.protocol.judging import (
    Outcome,
    ask_with_repair,
    build_judge_request,
    build_lar_judge_request,
    JudgeReading,
    judge_seed,
    lar_judge_seed,
    lenient_letter,
    parse_judge_letter,
    parse_lar_verdict,
    read_judge_reply,
    read_lar_verdict,
    reasked,
    repaired,
    score_reading,
)
from support.fakes import scripted
from support.questions import options, question

QUIET = io.StringIO()


# ---------------------------------------------------------------------------------------------------
# CapEval-QA: the judge request and the letter it names


def test_judge_request_shows_caption_and_question_only(prompts):
    q = question("Which trees does Seth love?", "B", options("Oak trees", "Cherry blossom trees", "Maple trees"))
    request = build_judge_request("Seth loves cherry blossom trees.", q, prompts, seed=5)
    assert len(request.messages) == 1 and request.messages[0].role == "user" and not request.images
    text = request.messages[0].text
    # The authors' order: every instruction first (a prefix shared by all requests), then the
    # description, then the question with its options; the answer line asked for is a box.
    instructions, rest = text.split("[Description]\n")
    caption, question_part = rest.split("\n\n[Question]\n")
    assert "Seth" not in instructions and "Answer: \\boxed{X}" in instructions
    assert caption == "Seth loves cherry blossom trees."
    assert question_part == ("Question: Which trees does Seth love?\nA. Oak trees\nB. Cherry blossom trees\n"
                             "C. Maple trees\nD. The answer cannot be determined")
    other = build_judge_request("Another caption.", q, prompts, seed=5).messages[0].text
    assert other.startswith(instructions)
    assert request.seed == 5
    assert request.task == {"kind": "capeval", "caption": "Seth loves cherry blossom trees.",
                            "question": "Which trees does Seth love?", "options": q["options"]}
    assert "answer" not in request.task  # the key is never shown to the judge


def test_judge_seed_is_per_question_and_31_bit():
    a = judge_seed(7, 0, "oracle", "s1", 0, "Q1")
    assert a == judge_seed(7, 0, "oracle", "s1", 0, "Q1")
    others = {judge_seed(7, 0, "oracle", "s1", 0, "Q2"), judge_seed(7, 0, "blind", "s1", 0, "Q1"),
              judge_seed(7, 1, "oracle", "s1", 0, "Q1"), judge_seed(8, 0, "oracle", "s1", 0, "Q1")}
    assert a not in others and len(others) == 4
    assert all(0 <= s < 2**31 for s in others | {a})


TREES = options("Oak trees", "Cherry blossom trees", "Maple trees")

# Replies in the form the judge prompt asks for (and the authors' judge writes): a short reason, then
# `Answer: \boxed{X}`. Every one is read by the default rule.
AUTHORS_STYLE = [
    ("The description says Seth loves cherry blossom trees.\nAnswer: \\boxed{B}", "B"),
    ("Nothing about trees is said.\n\nAnswer: \\boxed{D}", "D"),
    ("Reasoning: the caption names maple trees.\nAnswer: \\boxed{C}", "C"),
    ("Answer: \\boxed{A}", "A"),
    ("**Answer:** \\boxed{B}", "B"),
    ("The text supports option B.\n\nAnswer: $\\boxed{B}$", "B"),
    ("Answer: \\boxed{ D }", "D"),
    ("Answer: \\boxed{\\text{A}}", "A"),
    ("Option C is stated.\nAnswer: \\boxed{C}.", "C"),
]


@pytest.mark.parametrize("text, expected", AUTHORS_STYLE)
def test_authors_style_replies_are_read(text, expected):
    assert parse_judge_letter(text, TREES) == expected
    assert parse_judge_letter(text, TREES, "substring") in (expected, None)  # \\text{A} is not one letter there


@pytest.mark.parametrize(
    "text, exact, substring, lenient",
    [
        # one box, one letter: every rule agrees
        ("Answer: \\boxed{B}", "B", "B", "B"),
        ("**\\boxed{(A)}**", "A", "A", "A"),
        # the FIRST box counts, as in the authors' code
        ("First \\boxed{A}, then on second thought \\boxed{C}", "A", "A", "A"),
        # a box that holds more than one letter: no letter (D); 'substring' scores it by its text (below)
        ("Answer: \\boxed{B. Dog}", None, None, None),
        ("Answer: \\boxed{A or B}", None, None, None),
        ("Answer: \\boxed{b}", None, None, None),
        # no box: D, except that the lenient rule reads a bare letter
        ("B", None, None, "B"),
        ("The answer is C.", None, None, "C"),
        ("I cannot tell.", None, None, None),
        # reasoning blocks: skipped by 'exact', read raw by the authors' code
        ("<think>\\boxed{A}</think>Answer: \\boxed{C}", "C", "A", "C"),
        ("<think>maybe \\boxed{A}", None, "A", None),
        ("", None, None, None),
        (None, None, None, None),
    ],
)
def test_read_judge_reply_by_rule(text, exact, substring, lenient):
    assert parse_judge_letter(text, TREES) == exact
    assert parse_judge_letter(text, TREES, "substring") == substring
    assert parse_judge_letter(text, TREES, "lenient") == lenient


@pytest.mark.parametrize(
    "reading, target, rule, expected",
    [
        (JudgeReading("B", "B"), "B", "exact", ("B", True)),
        (JudgeReading("B", "B"), "D", "exact", ("B", False)),
        (JudgeReading(None, None), "D", "exact", ("D", True)),  # no answer counts as D (helps Acc-)
        (JudgeReading(None, None), "B", "exact", ("D", False)),
        (JudgeReading(None, "B. Dog"), "D", "exact", ("D", True)),
        (JudgeReading(None, "B. Dog"), "B", "exact", ("D", False)),
        # the authors' `a in pred`: the expected letter anywhere in the box's text
        (JudgeReading(None, "B. Dog"), "B", "substring", ("B. Dog", True)),
        (JudgeReading(None, "B. Dog"), "D", "substring", ("B. Dog", True)),  # the 'D' of 'Dog'
        (JudgeReading(None, "A or B"), "A", "substring", ("A or B", True)),
        (JudgeReading(None, "Paris"), "D", "substring", ("Paris", False)),
        (JudgeReading(None, None), "D", "substring", ("D", True)),
    ],
)
def test_score_reading(reading, target, rule, expected):
    assert score_reading(reading, target, rule) == expected


def test_unknown_letter_rule_is_named():
    with pytest.raises(ValueError, match="letter rule must be one of"):
        read_judge_reply("B", rule="fuzzy")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("B", "B"), ("B.", "B"), ("(B)", "B"), ("[C]", "C"), ("b", "B"), (" d \n", "D"),
        ("Answer: B", "B"), ("answer: b", "B"), ("**B**", "B"), ("**Answer:** C", "C"), ("Final answer: **C**", "C"),
        ("The answer is B) Oak trees", "B"), ("B) Oak trees", "B"), ("C. Maple trees", "C"),
        ("The correct option is (A).", "A"), ("I would pick C.", "C"),
        ("Answer: D. The answer cannot be determined", "D"),
        ("Cherry blossom trees", "B"), ("cherry blossom trees.", "B"), ("The answer cannot be determined", "D"),
        ("<think>A seems wrong, maybe C</think>\nB", "B"),
        # ambiguous or none -> None
        ("A or B", None), ("A, B", None), ("B/C", None), ("Option A is wrong; the answer is B", None),
        ("The answer is a tough one", None), ("A dog is sitting on a couch.", None), ("", None), (None, None),
        ("I am not sure.", None), ("<think>it could be A", None), ("trees", None),
    ],
)
def test_lenient_letter(text, expected):
    """The 'lenient' rule's reading of a reply without a box (a judge prompt that asks for one letter)."""
    assert lenient_letter(text, TREES) == expected


def test_option_text_needs_the_options():
    assert lenient_letter("Cherry blossom trees") is None
    assert lenient_letter("Cherry blossom trees", TREES) == "B"


# ---------------------------------------------------------------------------------------------------
# LAR: the judge request and its verdict


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
    "text, strict, substring",
    [
        ("Correct", True, True),
        ("Wrong", False, False),
        ("Incorrect", False, True),  # the authors' `"correct" in eval.lower()`
        ("The response is not correct.", False, True),
        ("maybe", None, False),  # unreadable: both score it 0 (the authors count it wrong)
        (None, None, None),
    ],
)
def test_read_lar_verdict_by_rule(text, strict, substring):
    assert read_lar_verdict(text) is strict
    assert read_lar_verdict(text, "substring") is substring


def test_lar_judge_request_shows_question_reference_and_response(prompts):
    request = build_lar_judge_request("Q?", "I need to go home.", "You went home.", prompts, seed=9)
    assert len(request.messages) == 1 and request.messages[0].role == "user" and not request.images
    text = request.messages[0].text
    instructions, tail = text.split("Question:\n")
    assert "Correct or Wrong" in instructions and "Q?" not in instructions
    assert tail == 'Q?\n\nReference answer:\nThe user said "I need to go home."\n\nModel\'s reply:\nYou went home.'
    assert request.task == {"kind": "lar_judge", "question": "Q?", "reference": "I need to go home.",
                            "response": "You went home."}
    assert request.seed == 9


def test_lar_judge_seed_is_per_response_and_31_bit():
    seed = lar_judge_seed("oracle", "direct", "lar0001")
    assert seed == lar_judge_seed("oracle", "direct", "lar0001")
    others = {lar_judge_seed("blind", "direct", "lar0001"), lar_judge_seed("oracle", "cag", "lar0001"),
              lar_judge_seed("oracle", "direct", "lar0002")}
    assert seed not in others and len(others) == 3
    assert all(0 <= s < 2**31 for s in others | {seed})


# ---------------------------------------------------------------------------------------------------
# ask_with_repair: rounds of complete_many, repairs after a bad reply, re-asks after a failed call

ERROR = "RuntimeError: server went away"


def first_request(index: int = 0) -> ChatRequest:
    return ChatRequest((Message.user(f"question {index}"),), {"temperature": 0.7}, task={"id": index, "attempt": 1},
                       seed=index)


def check(index: int, text: str):
    """'ok...' replies pass (the value is the reply upper-cased); anything else is a problem."""
    return (text.upper(), []) if text.startswith("ok") else (None, [f"bad reply {text!r}"])


def next_request(index, attempt, previous, response, problems):
    if response.ok:
        return repaired(previous, response.text, "fix: " + "; ".join(problems), attempt=attempt, seed=100 * index + attempt)
    return reasked(previous, attempt=attempt, seed=100 * index + attempt)


def run(scripts: dict[int, list], max_attempts: int):
    """Ask one request per script; the reply to attempt k of request i is scripts[i][k - 1] (None: a failed call)."""
    model, fake = scripted(lambda request: scripts[request.task["id"]][request.task["attempt"] - 1], error=ERROR)
    rounds = []

    class Rounds:  # sees each round that ask_with_repair sends
        identity = model.identity

        def complete_many(self, requests, **kwargs):
            rounds.append([r.task["id"] for r in requests])
            return model.complete_many(requests, **kwargs)

    outcomes = ask_with_repair(Rounds(), [first_request(i) for i in scripts], check, next_request, max_attempts,
                               progress_file=QUIET)
    return outcomes, fake.requests, rounds


def conversation(request: ChatRequest) -> list[tuple[str, str]]:
    return [(m.role, m.text) for m in request.messages]


Q0 = ("user", "question 0")


@pytest.mark.parametrize(
    "replies, max_attempts, outcome, conversations",
    [
        pytest.param(["ok fine"], 3, Outcome("OK FINE", 1, "ok fine", None), [[Q0]], id="accepted-first-try"),
        pytest.param(
            ["bad", "ok now"], 3, Outcome("OK NOW", 2, "ok now", None),
            [[Q0], [Q0, ("assistant", "bad"), ("user", "fix: bad reply 'bad'")]],
            id="repaired-with-reply-and-problem"),
        pytest.param(
            [None, "ok"], 3, Outcome("OK", 2, "ok", None), [[Q0], [Q0]], id="failed-call-re-asked-as-it-was"),
        pytest.param(
            ["bad", None, "ok"], 3, Outcome("OK", 3, "ok", None),
            [[Q0], [Q0, ("assistant", "bad"), ("user", "fix: bad reply 'bad'")],
             [Q0, ("assistant", "bad"), ("user", "fix: bad reply 'bad'")]],
            id="re-ask-keeps-the-repair-conversation"),
        pytest.param(
            ["bad", "worse"], 2, Outcome(None, 2, "worse", "invalid_output: bad reply 'worse' (after 2 attempt(s))"),
            [[Q0], [Q0, ("assistant", "bad"), ("user", "fix: bad reply 'bad'")]], id="gives-up-after-max-attempts"),
        pytest.param(
            ["bad", None], 2, Outcome(None, 2, "bad", f"model_error: {ERROR} (after 2 attempt(s))"),
            [[Q0], [Q0, ("assistant", "bad"), ("user", "fix: bad reply 'bad'")]],
            id="later-failed-call-keeps-the-earlier-reply"),
        pytest.param(
            [None, None, None], 3, Outcome(None, 3, None, f"model_error: {ERROR} (after 3 attempt(s))"),
            [[Q0], [Q0], [Q0]], id="every-call-failed"),
        pytest.param(
            ["bad"], 1, Outcome(None, 1, "bad", "invalid_output: bad reply 'bad' (after 1 attempt(s))"), [[Q0]],
            id="one-attempt-no-repair"),
        pytest.param(
            [RuntimeError("socket closed"), "ok"], 2, Outcome("OK", 2, "ok", None), [[Q0], [Q0]],
            id="raised-call-counts-as-failed"),
    ],
)
def test_ask_with_repair(replies, max_attempts, outcome, conversations):
    (got,), requests, _ = run({0: replies}, max_attempts)
    assert got == outcome
    assert got.ok is (outcome.failure is None)
    assert [conversation(r) for r in requests] == conversations
    assert [r.task["attempt"] for r in requests] == list(range(1, len(conversations) + 1))
    assert all(r.sampling == {"temperature": 0.7} for r in requests)  # sampling is kept on every attempt
    assert len({r.seed for r in requests}) == len(requests)  # each attempt draws afresh


def test_ask_with_repair_sends_rounds_and_returns_outcomes_in_input_order():
    scripts = {0: ["bad", "bad", "ok 0"], 1: ["ok 1"], 2: [None, "ok 2"], 3: ["bad", "bad", "bad"]}
    outcomes, requests, rounds = run(scripts, 3)
    assert rounds == [[0, 1, 2, 3], [0, 2, 3], [0, 3]]  # every open request of a round goes out together
    assert [o.value for o in outcomes] == ["OK 0", "OK 1", "OK 2", None]
    assert [o.attempts for o in outcomes] == [3, 1, 2, 3]
    assert outcomes[3].failure == "invalid_output: bad reply 'bad' (after 3 attempt(s))"
    assert len(requests) == 9


def test_ask_with_repair_needs_an_attempt():
    with pytest.raises(ValueError, match="max_attempts must be >= 1"):
        ask_with_repair(None, [first_request()], check, next_request, 0)


def test_repaired_and_reasked_keep_sampling_schema_and_task():
    original = ChatRequest((Message.user("q"),), {"temperature": 0.3}, {"type": "object"}, {"kind": "k", "attempt": 1}, 5)
    repair = repaired(original, "reply", "the problem", attempt=2, seed=6)
    assert conversation(repair) == [("user", "q"), ("assistant", "reply"), ("user", "the problem")]
    assert (repair.sampling, repair.response_schema, repair.task, repair.seed) == (
        {"temperature": 0.3}, {"type": "object"}, {"kind": "k", "attempt": 2}, 6)
    again = reasked(repair, attempt=3, seed=7)
    assert again.messages == repair.messages and again.task == {"kind": "k", "attempt": 3} and again.seed == 7
    assert original.task == {"kind": "k", "attempt": 1}  # the original request is left as it was
