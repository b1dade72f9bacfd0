"""Judge agreement: Cohen's kappa on hand-computed cases, and the agreement / disagreement tables."""

from __future__ import annotations

import pytest

from covip.core import schemas
from covip.core.io import to_table
from covip.stages.agreement import cohen_kappa, judge_agreement


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("AABB", "AABB", 1.0),  # perfect agreement
        ("ABAB", "AABB", 0.0),  # p_o = 0.5 = p_e
        ("AAAB", "AABB", 0.5),  # p_o = 0.75, p_e = 0.75*0.5 + 0.25*0.5 = 0.5
        ("ABCDDD", "ABDDDC", 0.5),  # p_o = 4/6, p_e = (1+1+1+9)/36 = 1/3
        ("AB", "BA", -1.0),  # systematic disagreement: p_o = 0, p_e = 0.5
        ("AA", "DD", 0.0),  # two constant judges on different letters: p_o = p_e = 0
    ],
)
def test_kappa_hand_cases(a, b, expected):
    assert cohen_kappa(list(a), list(b)) == pytest.approx(expected)


def test_kappa_is_undefined_when_both_judges_are_the_same_constant():
    # Chance agreement is 1, so kappa is 0/0: None, not a made-up 1 or 0 (the raw agreement says 100%).
    assert cohen_kappa(list("DDDD"), list("DDDD")) is None
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        cohen_kappa(["A"], ["A", "B"])


def _row(judge, sample, q, positive, parsed, answer="B", unparseable=False, policy="p"):
    correct = parsed == answer if positive else parsed == "D"
    return {"policy": policy, "judge": judge, "sample_id": sample, "num_positives": 1, "context_index": 0 if positive else 1,
            "question_id": q, "is_positive": positive, "answer": answer, "raw_answer": None if unparseable else parsed,
            "parsed": parsed, "unparseable": unparseable, "correct": correct, "judge_identity": f"{judge}:local",
            "stand_in": True}


def test_agreement_tables_count_what_each_judge_did():
    letters_a = [("s1", "Q1", True, "B"), ("s1", "Q2", False, "D"), ("s2", "Q1", True, "B"), ("s2", "Q2", False, "A")]
    letters_b = [("s1", "Q1", True, "B"), ("s1", "Q2", False, "D"), ("s2", "Q1", True, "D"), ("s2", "Q2", False, "A")]
    rows = [_row("lex", *x) for x in letters_a] + [_row("llm", *x, unparseable=(x[0] == "s2" and x[1] == "Q1")) for x in letters_b]
    agreement, disagreements = judge_agreement({"intact": rows})
    to_table(agreement, schemas.JUDGE_AGREEMENT, "agreement")
    to_table(disagreements, schemas.JUDGE_DISAGREEMENTS, "disagreements")
    assert {(r["condition"], r["policy"]) for r in agreement} == {("intact", "p"), ("intact", "all"), ("all", "all")}
    row = next(r for r in agreement if r["policy"] == "p")
    assert (row["judge_a"], row["judge_b"], row["n_items"]) == ("lex", "llm", 4)
    assert row["agreement"] == 0.75
    # a: B D B A, b: B D D A -> p_o = 3/4; marginals a: B2 D1 A1, b: B1 D2 A1 -> p_e = (2+2+1)/16
    assert row["kappa"] == pytest.approx((0.75 - 5 / 16) / (1 - 5 / 16))
    assert (row["acc_pos_a"], row["acc_pos_b"]) == (100.0, 50.0)
    assert (row["acc_neg_a"], row["acc_neg_b"]) == (50.0, 50.0)
    assert (row["unparseable_a"], row["unparseable_b"]) == (0.0, 25.0)
    assert [(d["sample_id"], d["question_id"], d["parsed_a"], d["parsed_b"]) for d in disagreements] == [("s2", "Q1", "B", "D")]


def test_only_items_both_judges_answered_are_compared():
    rows = [_row("lex", "s1", "Q1", True, "B"), _row("lex", "s2", "Q1", True, "B"), _row("llm", "s1", "Q1", True, "B")]
    agreement, _ = judge_agreement({"intact": rows})
    assert next(r for r in agreement if r["policy"] == "p")["n_items"] == 1


def test_a_single_judge_gives_empty_tables():
    assert judge_agreement({"intact": [_row("lex", "s1", "Q1", True, "B")]}) == ([], [])
