"""Every metric of covip.core.metrics on a table of golden cases (input -> expected)."""

from __future__ import annotations

import pytest

from covip.core.metrics import (
    POSITIVE_WEIGHT,
    TallyError,
    boxed_index_f1,
    caption_score,
    capeval_sample_tallies,
    joint_caption_score,
    keyword_present,
    parse_boxed_indices,
    policy_identities_from,
    set_f1,
    token_set_f1,
)

# ----- LSD: token-set F1 of a predicted and a true place


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
        ("Ryan", "", 0.0),  # a truth with no words is matched only by an empty prediction
        ("São Paulo", "sao paulo", 0.5),  # casefolded, not transliterated: 'são' != 'sao'
    ],
)
def test_token_set_f1(prediction, reference, expected):
    assert token_set_f1(prediction, reference) == pytest.approx(expected)


# ----- ITR: the reminder keyword as a whole word


@pytest.mark.parametrize(
    "text, keyword, expected",
    [
        ("Oh, it's Andrew! SKS, remember?", "SKS", True),
        ("reminder: sks", "SKS", True),  # case-insensitive
        ("The keyword was SKSX.", "SKS", False),  # word boundary
        ("xSKS", "SKS", False),
        ("SKS2", "SKS", False),  # a digit glued on is another word
        ("I see a person in a park.", "SKS", False),
        (None, "SKS", False),
        ("Tovek!", "Tovek", True),
        ("Tovek", " Tovek ", True),  # the keyword's own spaces are trimmed
        ("anything", "", False),  # no keyword: nothing to find
        ("see you at 5.30", "5.30", True),
        ("see you at 5x30", "5.30", False),  # the keyword is literal text, not a pattern
    ],
)
def test_keyword_present(text, keyword, expected):
    assert keyword_present(text, keyword) is expected


# ----- multi_vision: boxed index sets and their F1


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"The answer is \boxed{[1, 3]}", {1, 3}),
        (r"\boxed{[2]}", {2}),
        (r"\boxed{2,4}", {2, 4}),
        (r"\boxed{[]}", set()),  # an explicit empty list is a readable answer
        (r"\boxed{[ ]}", set()),
        (r"first \boxed{[1]} then \boxed{[2, 3]}", {1}),  # the FIRST box counts (the authors' reward)
        (r"\boxed{[x]} then \boxed{[2, 3]}", None),  # an unreadable first box is not rescued by a later one
        (r"\boxed{0}", {0}),  # index 0 is the first concept
        (r"Answer: \boxed{[0, 2]}", {0, 2}),
        (r"\boxed{[-1, +2]}", {-1, 2}),
        (r"\boxed{}", None),  # empty box: unreadable
        (r"\boxed{[1, x]}", None),  # malformed list
        (r"\boxed{[1.5]}", None),
        (r"\boxed{[1,,2]}", None),
        (r"\boxed{[1, 2]", None),  # never closed
        ("[1, 2] without a box", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_boxed_indices(text, expected):
    assert parse_boxed_indices(text) == expected


@pytest.mark.parametrize(
    "predicted, truth, expected",
    [
        ({1, 2}, {1, 2}, 1.0),
        ({1}, {1, 2}, 2 / 3),
        ({1, 2, 3}, {1}, 0.5),
        ({4}, {1}, 0.0),
        (set(), set(), 1.0),  # two empty sets agree
        (set(), {1}, 0.0),
        ({1}, set(), 0.0),
    ],
)
def test_set_f1(predicted, truth, expected):
    assert set_f1(predicted, truth) == pytest.approx(expected)


@pytest.mark.parametrize(
    "completion, truth, expected",
    [
        (r"\boxed{[1, 2]}", [2, 1], 1.0),
        (r"\boxed{[1]}", [1, 2], 2 / 3),
        (r"\boxed{[1]}", ["1"], 1.0),  # truth read as integers
        (r"\boxed{}", [1], 0.0),  # unparseable -> 0
        ("no box at all", [], 0.0),  # even when the truth is empty: no answer is no answer
        (None, [], 0.0),
        (r"\boxed{[]}", [], 1.0),
        (r"\boxed{[3]}", [1, 2], 0.0),
        (r"\boxed{[0]} and later \boxed{[0, 1]}", [0, 1], 2 / 3),  # first box only
        (r"\boxed{[0, 2]}", [0, 2], 1.0),
    ],
)
def test_boxed_index_f1(completion, truth, expected):
    assert boxed_index_f1(completion, truth) == pytest.approx(expected)


# ----- caption rewards from judge letters

# 2 positive concepts (6 questions), 4 correct; 3 negative questions, 1 not answered D.
POSITIVES = [("A", "A"), ("B", "B"), ("C", "C"), ("A", "A"), ("D", "B"), ("A", "C")]
NEGATIVES = ["D", "B", "D"]


@pytest.mark.parametrize(
    "positives, negatives, expected",
    [
        (POSITIVES, NEGATIVES, 4 / 3 - 1 / 3),
        (POSITIVES, [], 4 / 3),  # no negatives: no penalty
        ([], ["A", "B"], -1.0),  # every negative leaked: the whole penalty
        ([], ["D", "D"], 0.0),
        ([("D", "A")] * 3, ["D"], 0.0),  # 'cannot be determined' is wrong for a positive
        ([("B", "B")] * 3, ["D", "C"], 1.0 - 0.5),
    ],
)
def test_caption_score(positives, negatives, expected):
    assert caption_score(positives, negatives) == pytest.approx(expected)


@pytest.mark.parametrize(
    "positives, negatives, expected",
    [
        (POSITIVES, NEGATIVES, 3.0),
        (POSITIVES, [], 4.0),
        ([], ["A", "B"], -2.0),  # not normalised: each leak costs one
        ([("D", "A")] * 3, ["D"], 0.0),
    ],
)
def test_joint_caption_score(positives, negatives, expected):
    assert joint_caption_score(positives, negatives) == pytest.approx(expected)


def test_positive_weight_is_one_third():
    assert POSITIVE_WEIGHT * 3 == pytest.approx(1.0)


# ----- CapEval-QA per-sample tallies


def answer(sample, positive, correct, *, policy="p", judge="j", num_positives=1, unparseable=False, raw="A"):
    return {"policy": policy, "judge": judge, "sample_id": sample, "num_positives": num_positives,
            "is_positive": positive, "correct": correct, "unparseable": unparseable, "raw_answer": raw}


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([], {}),
        (  # one sample: 2 positives (1 right), 1 negative (right)
            [answer("s1", True, True), answer("s1", True, False), answer("s1", False, True)],
            {("p", "j"): {"s1": [1, 1, 2, 1, 1, 0, 0]}},
        ),
        (  # an unparseable reply and a failed call (no raw answer) are counted apart
            [answer("s1", True, False, unparseable=True), answer("s1", False, True, unparseable=True, raw=None)],
            {("p", "j"): {"s1": [1, 0, 1, 1, 1, 2, 1]}},
        ),
        (  # samples, policies and judges each get their own tally
            [answer("s1", True, True, num_positives=2), answer("s2", False, False),
             answer("s1", True, True, policy="q"), answer("s1", False, True, judge="k")],
            {("p", "j"): {"s1": [2, 1, 1, 0, 0, 0, 0], "s2": [1, 0, 0, 0, 1, 0, 0]},
             ("q", "j"): {"s1": [1, 1, 1, 0, 0, 0, 0]},
             ("p", "k"): {"s1": [1, 0, 0, 1, 1, 0, 0]}},
        ),
    ],
)
def test_capeval_sample_tallies(rows, expected):
    assert {key: dict(samples) for key, samples in capeval_sample_tallies(rows).items()} == expected


def test_capeval_sample_tallies_reject_a_sample_with_two_positive_counts():
    rows = [answer("s1", True, True, num_positives=1), answer("s1", False, True, num_positives=2)]
    with pytest.raises(TallyError, match=r"row 1 \(sample_id=s1\) field 'num_positives': 2 disagrees with 1"):
        capeval_sample_tallies(rows)


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([], {}),
        ([{"policy": "a", "model_identity": "a:vllm:Qwen"}], {"a": "a:vllm:Qwen"}),
        ([{"policy": "a", "model_identity": None}, {"policy": "b"}], {"a": "a", "b": "b"}),  # no identity: the name
        ([{"policy": "a", "model_identity": "x"}, {"policy": "a", "model_identity": "y"},
          {"policy": "a", "model_identity": "x"}], {"a": "x | y"}),  # several, once each, in order
    ],
)
def test_policy_identities_from(rows, expected):
    assert policy_identities_from(rows) == expected
