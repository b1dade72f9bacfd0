"""The human study's summary (covip.stages.human_eval) on rows built by hand, where every number is known."""

import math

import pytest

from covip.core import schemas
from covip.core.io import to_table
from covip.stages.human_eval import (
    HumanEvalInputError,
    bradley_terry,
    capeval_agreement,
    krippendorff_alpha,
    pair_table,
    select_plan,
    summarize_human_eval,
    wilson_interval,
)


def vote(rater, sample, a, b, context, image=None, plan="p1"):
    """A vote row; `context`/`image` name the preferred policy or 'tie' (image defaults to context)."""
    image = context if image is None else image
    choice = {a: "A", b: "B", "tie": "tie"}
    x, y = sorted((a, b))
    return {"rater": rater, "plan_version": plan, "item_id": f"{sample}:{x}:{y}", "position": 0, "sample_id": sample,
            "policy_a": a, "policy_b": b, "choice_context": choice[context], "choice_image": choice[image],
            "preferred_context": context, "preferred_image": image, "shown_at": None, "submitted_at": "2026-01-01"}


def answers(policy, sample, pos_correct, pos_total, neg_correct, neg_total, judge="j"):
    """CapEval-QA answer rows (the fields the per-sample tallies read) with the given counts."""
    base = {"judge": judge, "policy": policy, "sample_id": sample, "num_positives": max(1, pos_total // 3),
            "unparseable": False, "raw_answer": "A"}
    return ([{**base, "is_positive": True, "correct": k < pos_correct} for k in range(pos_total)]
            + [{**base, "is_positive": False, "correct": k < neg_correct} for k in range(neg_total)])


@pytest.mark.parametrize("k, n, low, high", [
    (5, 10, 23.66, 76.34),
    (0, 10, 0.0, 27.75),
    (10, 10, 72.25, 100.0),
    (1, 1, 20.65, 100.0),
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    got = wilson_interval(k, n, 0.95)
    assert got[0] == pytest.approx(low, abs=0.01) and got[1] == pytest.approx(high, abs=0.01)


def test_wilson_interval_of_nothing_is_empty():
    assert wilson_interval(0, 0, 0.95) == (None, None)


def test_pairs_count_wins_from_the_policies_not_the_sides():
    votes = [vote("r1", "s1", "oracle", "blind", "oracle"), vote("r1", "s2", "blind", "oracle", "oracle"),
             vote("r2", "s1", "blind", "oracle", "blind"), vote("r2", "s2", "oracle", "blind", "tie", image="blind")]
    rows = {(r["criterion"], r["policy_x"], r["policy_y"]): r for r in pair_table(votes, 0.95)}
    context = rows[("context", "blind", "oracle")]
    assert (context["x_wins"], context["ties"], context["y_wins"], context["n_votes"]) == (1, 1, 2, 4)
    assert context["y_win"] == 50.0 and context["n_samples"] == 2 and context["n_raters"] == 2
    assert (context["y_win_low"], context["y_win_high"]) == pytest.approx(wilson_interval(2, 4, 0.95))
    image = rows[("image", "blind", "oracle")]
    assert (image["x_wins"], image["ties"], image["y_wins"]) == (2, 0, 2)
    to_table(list(rows.values()), schemas.HUMAN_EVAL_PAIRS, "pairs")  # fits its declared schema


@pytest.mark.parametrize("votes, order", [
    # a > b three times, b > c three times: a transitive order.
    ([("a", "b", "a")] * 3 + [("b", "c", "b")] * 3, ["a", "b", "c"]),
    # c wins everything it plays, even when shown second.
    ([("a", "c", "c"), ("b", "c", "c"), ("c", "a", "c"), ("a", "b", "a")], ["c", "a", "b"]),
    # a tie counts half: b ties c twice and beats a once, c loses once to a.
    ([("b", "c", "tie"), ("b", "c", "tie"), ("a", "b", "b"), ("a", "c", "a")], ["b", "a", "c"]),
])
def test_bradley_terry_orders_policies_by_their_record(votes, order):
    rows = bradley_terry([vote("r", f"s{k}", a, b, won) for k, (a, b, won) in enumerate(votes)], "context", 0.01)
    assert [r["policy"] for r in rows] == order
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert sum(r["strength"] for r in rows) == pytest.approx(0.0, abs=1e-9)
    assert all(math.isfinite(r["strength"]) for r in rows)


def test_bradley_terry_gives_equal_strength_to_equal_records():
    votes = [vote("r", "s1", "a", "b", "a"), vote("r", "s2", "a", "b", "b"), vote("r", "s3", "a", "b", "tie")]
    rows = bradley_terry(votes, "context", 0.01)
    assert rows[0]["strength"] == pytest.approx(rows[1]["strength"], abs=1e-6)
    assert [(r["wins"], r["ties"], r["losses"], r["win_share"]) for r in rows] == [(1, 1, 1, 50.0)] * 2


def test_krippendorff_alpha_matches_a_hand_computed_value():
    # Two raters on four comparisons: three agreements, one flat contradiction. With outcomes coded
    # +1/0/-1 the nominal coincidences give D_o = 2/8 and D_e = 42/56, so alpha = 1 - 0.25/0.75 = 2/3.
    pairs = [("s1", "a", "a"), ("s2", "b", "b"), ("s3", "tie", "tie"), ("s4", "a", "b")]
    votes = [vote(rater, s, "a", "b", choice) for s, one, two in pairs for rater, choice in (("r1", one), ("r2", two))]
    votes.append(vote("r3", "s9", "a", "b", "a"))  # rated once: not pairable, not counted
    alpha, units, raters = krippendorff_alpha(votes, "context", "nominal")
    assert alpha == pytest.approx(2 / 3) and units == 4 and raters == 2
    assert krippendorff_alpha(votes, "context", "ordinal")[0] < 2 / 3  # a-vs-b is the farthest apart


@pytest.mark.parametrize("choices, expected", [
    ([("a", "a"), ("b", "b")], 1.0),  # full agreement
    ([("a", "a"), ("a", "a")], None),  # one outcome only: alpha is 0/0
    ([], None),  # nobody rated the same comparison twice
])
def test_krippendorff_alpha_edge_cases(choices, expected):
    votes = [vote(rater, f"s{k}", "a", "b", c) for k, pair in enumerate(choices) for rater, c in zip(("r1", "r2"), pair)]
    votes.append(vote("r1", "solo", "a", "b", "a"))
    alpha, _, _ = krippendorff_alpha(votes, "context", "ordinal")
    assert alpha == expected


def test_capeval_agreement_counts_agreement_disagreement_and_ties():
    # Per-sample Acc+: oracle 100, blind 0 on s1-s3; both 50 on s4. Acc-: blind higher on s1 only.
    scores = answers("oracle", "s1", 3, 3, 0, 2) + answers("blind", "s1", 0, 3, 2, 2)
    for sample in ("s2", "s3"):
        scores += answers("oracle", sample, 3, 3, 2, 2) + answers("blind", sample, 0, 3, 2, 2)
    scores += answers("oracle", "s4", 1, 2, 1, 1) + answers("blind", "s4", 1, 2, 1, 1)
    votes = [vote("r1", "s1", "oracle", "blind", "oracle"), vote("r1", "s2", "blind", "oracle", "oracle"),
             vote("r2", "s3", "oracle", "blind", "blind"), vote("r2", "s4", "oracle", "blind", "oracle"),
             vote("r3", "s1", "oracle", "blind", "tie")]
    rows = {r["measure"]: r for r in capeval_agreement(votes, scores, "context", 0.95)}
    pos = rows["capeval_acc_pos"]
    assert (pos["n_agree"], pos["n_disagree"], pos["n_capeval_ties"], pos["n_human_ties"]) == (2, 1, 1, 1)
    assert pos["value"] == pytest.approx(200 / 3) and pos["n_units"] == 5 and pos["n_raters"] == 3
    assert (pos["low"], pos["high"]) == pytest.approx(wilson_interval(2, 3, 0.95))
    # Tau-b by hand, pair (blind, oracle): preference [-1, -1, 1, -1, 0], Acc+ difference
    # [-100, -100, -100, 0, -100]: 0 concordant, 2 discordant pairs, 3 tied in preference and 6 in
    # difference out of 10, so tau-b = -2 / sqrt(7 * 4). (The one sample where the scores tie is one
    # the rater decided for oracle, so here a larger gap goes with a weaker preference.)
    assert pos["kendall_tau"] == pytest.approx(-2 / math.sqrt(28))
    neg = rows["capeval_acc_neg"]
    # Acc- differs on s1 only, where blind (100) beats oracle (0) and the rater preferred oracle.
    assert (neg["n_agree"], neg["n_disagree"], neg["n_capeval_ties"], neg["n_human_ties"]) == (0, 1, 3, 1)


def test_preferences_that_follow_the_scores_correlate_fully():
    scores = []
    votes = []
    for k, (oracle, blind) in enumerate([(3, 0), (1, 1), (0, 2)]):
        scores += answers("oracle", f"s{k}", oracle, 3, 1, 1) + answers("blind", f"s{k}", blind, 3, 1, 1)
        preferred = "oracle" if oracle > blind else "blind" if blind > oracle else "tie"
        votes.append(vote("r1", f"s{k}", "blind", "oracle", preferred))
    pos = next(r for r in capeval_agreement(votes, scores, "context", 0.95) if r["measure"] == "capeval_acc_pos")
    assert pos["kendall_tau"] == pytest.approx(1.0) and pos["value"] == 100.0
    assert (pos["n_agree"], pos["n_disagree"], pos["n_human_ties"]) == (2, 0, 1)


def test_a_voted_policy_without_capeval_answers_is_named():
    votes = [vote("r1", "s1", "oracle", "gpt", "oracle")]
    with pytest.raises(HumanEvalInputError, match="judge 'j' has no answer for policy 'gpt'"):
        capeval_agreement(votes, answers("oracle", "s1", 1, 1, 1, 1), "context", 0.95)


def test_votes_of_several_plans_need_a_choice():
    votes = [vote("r1", "s1", "a", "b", "a", plan="p1"), vote("r1", "s1", "a", "b", "b", plan="p2")]
    with pytest.raises(HumanEvalInputError, match="several plans"):
        select_plan(votes, None)
    assert [v["plan_version"] for v in select_plan(votes, "p2")] == ["p2"]
    with pytest.raises(HumanEvalInputError, match="no vote of plan 'p3'"):
        select_plan(votes, "p3")


def test_the_summary_fits_its_declared_schemas():
    scores = answers("a", "s1", 1, 1, 1, 1) + answers("b", "s1", 0, 1, 1, 1)
    votes = [vote("r1", "s1", "a", "b", "a", image="tie"), vote("r2", "s1", "b", "a", "b", image="a")]
    pairs, ranking, agreement = summarize_human_eval(votes, scores, agreement_level="nominal")
    to_table(pairs, schemas.HUMAN_EVAL_PAIRS, "pairs")
    to_table(ranking, schemas.HUMAN_EVAL_RANKING, "ranking")
    to_table(agreement, schemas.HUMAN_EVAL_AGREEMENT, "agreement")
    alpha = next(r for r in agreement if r["measure"] == "krippendorff_alpha" and r["criterion"] == "context")
    # One comparison, two raters who differ: the observed disagreement is all there is to expect, alpha 0.
    assert alpha["n_units"] == 1 and alpha["value"] == pytest.approx(0.0)
    with pytest.raises(HumanEvalInputError, match="no vote"):
        summarize_human_eval([], scores)
