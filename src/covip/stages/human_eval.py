"""The human study's summary: who wins, how sure we are, do raters agree, and does CapEval-QA agree.

Input: vote rows (schemas.HUMAN_VOTES, one per rater and comparison) and CapEval-QA answer rows
(schemas.CAPEVAL_ANSWERS) of the same policies on the same test samples. Output, per criterion
('context': use of the remembered context; 'image': description of the new image):

- pairs: wins / ties / losses of every pair of policies, in percent of its votes, each with a Wilson
  score interval. The interval treats votes as independent; several raters on the same sample make
  them less so, which the interval does not account for.
- ranking: a Bradley-Terry fit of all votes by choix's iterative Luce spectral ranking, ties counting
  as half a win for each side (every decisive vote enters twice, every tie once in each direction),
  with a small L2 penalty so a policy that wins everything still gets a finite strength.
- agreement: Krippendorff's alpha between raters on the comparisons that two or more of them rated
  (the `krippendorff` package; outcome coded first-better < tie < second-better); and, per judge and
  for Acc+ and Acc- separately, the share of decisive votes whose preferred caption also has the
  higher per-sample score (Wilson interval; equal scores are counted apart), plus Kendall's tau-b
  between the preference (-1, 0, 1) and the score difference over all votes, ties included.

Pure functions over rows; no file, no server, no other stage.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from statistics import NormalDist

import numpy as np

from covip.core.metrics import capeval_sample_tallies

CRITERIA = ("context", "image")
ACC_MEASURES = {"capeval_acc_pos": True, "capeval_acc_neg": False}  # measure -> positive questions?
TIE = "tie"


class HumanEvalInputError(ValueError):
    """Votes or CapEval answers the summary cannot use; the message names the plan, policy or judge."""


def wilson_interval(successes: int, n: int, confidence: float) -> tuple[float | None, float | None]:
    """Wilson score interval of successes/n, in percent; (None, None) when n is 0."""
    if n == 0:
        return None, None
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def select_plan(votes: Sequence[Mapping], plan_version: str | None) -> list[Mapping]:
    """The votes of one plan: `plan_version`, or the only plan in the votes."""
    versions = Counter(v["plan_version"] for v in votes)
    if plan_version is not None:
        if plan_version not in versions:
            raise HumanEvalInputError(f"votes: no vote of plan {plan_version!r} (plans: {dict(versions)})")
        return [v for v in votes if v["plan_version"] == plan_version]
    if len(versions) > 1:
        raise HumanEvalInputError(f"votes: several plans {dict(versions)} (votes on other captions or settings); "
                                  "set human_eval.plan_version to the one to summarize")
    return list(votes)


def _outcome(vote: Mapping, criterion: str) -> tuple[str, str, int]:
    """(policy_x, policy_y, outcome): the pair in alphabetical order and +1 (x preferred), 0, -1."""
    x, y = sorted((vote["policy_a"], vote["policy_b"]))
    preferred = vote[f"preferred_{criterion}"]
    if preferred not in (x, y, TIE):
        raise HumanEvalInputError(f"vote of {vote['rater']!r} on {vote['item_id']!r}: preferred_{criterion} "
                                  f"{preferred!r} is neither of {x!r}, {y!r} nor 'tie'")
    return x, y, {x: 1, y: -1, TIE: 0}[preferred]


def pair_table(votes: Sequence[Mapping], confidence: float) -> list[dict]:
    groups: dict[tuple[str, str, str], list[Mapping]] = defaultdict(list)
    outcomes: dict[tuple[str, str, str], list[int]] = defaultdict(list)
    for vote in votes:
        for criterion in CRITERIA:
            x, y, outcome = _outcome(vote, criterion)
            groups[(criterion, x, y)].append(vote)
            outcomes[(criterion, x, y)].append(outcome)
    rows = []
    for (criterion, x, y), results in sorted(outcomes.items()):
        n, counts = len(results), Counter(results)
        row = {"criterion": criterion, "policy_x": x, "policy_y": y, "n_votes": n,
               "x_wins": counts[1], "ties": counts[0], "y_wins": counts[-1],
               "n_samples": len({v["sample_id"] for v in groups[(criterion, x, y)]}),
               "n_raters": len({v["rater"] for v in groups[(criterion, x, y)]})}
        for name, k in (("x_win", counts[1]), ("tie", counts[0]), ("y_win", counts[-1])):
            row[name] = 100 * k / n
            row[f"{name}_low"], row[f"{name}_high"] = wilson_interval(k, n, confidence)
        rows.append(row)
    return rows


def bradley_terry(votes: Sequence[Mapping], criterion: str, regularization: float) -> list[dict]:
    """Policies of `votes` ranked by Bradley-Terry log-strength on one criterion."""
    import choix

    policies = sorted({p for v in votes for p in (v["policy_a"], v["policy_b"])})
    if len(policies) < 2:
        return []
    index = {p: k for k, p in enumerate(policies)}
    data, tally = [], {p: Counter() for p in policies}
    for vote in votes:
        x, y, outcome = _outcome(vote, criterion)
        if outcome == 0:
            data += [(index[x], index[y]), (index[y], index[x])]
            tally[x]["ties"] += 1
            tally[y]["ties"] += 1
        else:
            winner, loser = (x, y) if outcome == 1 else (y, x)
            data += [(index[winner], index[loser])] * 2
            tally[winner]["wins"] += 1
            tally[loser]["losses"] += 1
    strengths = np.asarray(choix.ilsr_pairwise(len(policies), data, alpha=regularization), dtype=float)
    strengths -= strengths.mean()
    order = sorted(policies, key=lambda p: (-strengths[index[p]], p))
    rows = []
    for rank, policy in enumerate(order, start=1):
        t = tally[policy]
        played = t["wins"] + t["ties"] + t["losses"]
        rows.append({"criterion": criterion, "policy": policy, "rank": rank, "strength": float(strengths[index[policy]]),
                     "win_share": 100 * (t["wins"] + t["ties"] / 2) / played if played else 0.0,
                     "wins": t["wins"], "ties": t["ties"], "losses": t["losses"]})
    return rows


def krippendorff_alpha(votes: Sequence[Mapping], criterion: str, level: str) -> tuple[float | None, int, int]:
    """(alpha, comparisons rated by 2+ raters, raters) on one criterion; alpha None when undefined."""
    by_unit: dict[str, dict[str, int]] = defaultdict(dict)
    for vote in votes:
        _, _, outcome = _outcome(vote, criterion)
        by_unit[vote["item_id"]][vote["rater"]] = outcome
    shared = {unit: ratings for unit, ratings in by_unit.items() if len(ratings) >= 2}
    raters = sorted({rater for ratings in shared.values() for rater in ratings})
    values = {value for ratings in shared.values() for value in ratings.values()}
    if not shared or len(values) < 2:
        return None, len(shared), len(raters)  # no pairable ratings, or one outcome only: alpha is 0/0
    import krippendorff

    units = sorted(shared)
    matrix = np.full((len(raters), len(units)), np.nan)
    for j, unit in enumerate(units):
        for rater, outcome in shared[unit].items():
            matrix[raters.index(rater), j] = outcome
    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement=level, value_domain=[-1, 0, 1])
    return float(alpha), len(units), len(raters)


def per_sample_accuracy(answers: Iterable[Mapping]) -> dict[tuple[str, str, str, bool], float]:
    """(judge, policy, sample_id, positive questions?) -> percent correct on that sample (CapEval-QA's
    own per-sample tallies, so Acc+/Acc- here count exactly as in the CapEval summary)."""
    accuracy = {}
    for (policy, judge), samples in capeval_sample_tallies(answers).items():
        for sample_id, (_, pos_correct, pos_total, neg_correct, neg_total, *_) in samples.items():
            if pos_total:
                accuracy[(judge, policy, sample_id, True)] = 100 * pos_correct / pos_total
            if neg_total:
                accuracy[(judge, policy, sample_id, False)] = 100 * neg_correct / neg_total
    return accuracy


def capeval_agreement(votes: Sequence[Mapping], answers: Sequence[Mapping], criterion: str, confidence: float) -> list[dict]:
    """Per judge and measure: does the caption people preferred also score higher with CapEval-QA?"""
    from scipy.stats import kendalltau

    accuracy = per_sample_accuracy(answers)
    judges = sorted({row["judge"] for row in answers})
    judged = {(row["judge"], row["policy"]) for row in answers}
    rows = []
    for judge in judges:
        for vote in votes:
            for policy in (vote["policy_a"], vote["policy_b"]):
                if (judge, policy) not in judged:
                    raise HumanEvalInputError(
                        f"capeval answers: judge '{judge}' has no answer for policy '{policy}', which the votes "
                        f"compare (vote of {vote['rater']!r} on {vote['item_id']!r}); the summary reads the answers "
                        "of the policies in human_eval.policies")
        for measure, positive in ACC_MEASURES.items():
            preference, difference, counts = [], [], Counter()
            for vote in votes:
                x, y, outcome = _outcome(vote, criterion)
                score_x = accuracy.get((judge, x, vote["sample_id"], positive))
                score_y = accuracy.get((judge, y, vote["sample_id"], positive))
                if score_x is None or score_y is None:
                    continue  # this sample has no question of this kind for one of the captions
                preference.append(outcome)
                difference.append(score_x - score_y)
                if outcome == 0:
                    counts["human_ties"] += 1
                elif score_x == score_y:
                    counts["capeval_ties"] += 1
                else:
                    counts["agree" if (score_x > score_y) == (outcome == 1) else "disagree"] += 1
            decisive = counts["agree"] + counts["disagree"]
            low, high = wilson_interval(counts["agree"], decisive, confidence)
            tau = p_value = None
            if len(set(preference)) > 1 and len(set(difference)) > 1:
                result = kendalltau(preference, difference)  # tau-b: corrects for the many ties
                tau, p_value = float(result.statistic), float(result.pvalue)
            rows.append({"criterion": criterion, "measure": measure, "judge": judge,
                         "value": 100 * counts["agree"] / decisive if decisive else None, "low": low, "high": high,
                         "n_units": len(preference), "n_agree": counts["agree"], "n_disagree": counts["disagree"],
                         "n_capeval_ties": counts["capeval_ties"], "n_human_ties": counts["human_ties"],
                         "kendall_tau": tau, "kendall_p": p_value,
                         "n_raters": len({v["rater"] for v in votes})})
    return rows


def summarize_human_eval(
    votes: Sequence[Mapping],
    answers: Sequence[Mapping],
    *,
    confidence: float = 0.95,
    agreement_level: str = "ordinal",
    bt_regularization: float = 0.01,
    plan_version: str | None = None,
) -> tuple[list[dict], list[dict], list[dict]]:
    """(pairs, ranking, agreement) rows of schemas.HUMAN_EVAL_PAIRS / _RANKING / _AGREEMENT."""
    votes = select_plan(votes, plan_version)
    if not votes:
        raise HumanEvalInputError("votes: there is no vote to summarize yet")
    ranking, agreement = [], []
    for criterion in CRITERIA:
        ranking += bradley_terry(votes, criterion, bt_regularization)
        alpha, units, raters = krippendorff_alpha(votes, criterion, agreement_level)
        agreement.append({"criterion": criterion, "measure": "krippendorff_alpha", "judge": "", "value": alpha,
                          "low": None, "high": None, "n_units": units, "n_agree": None, "n_disagree": None,
                          "n_capeval_ties": None, "n_human_ties": None, "kendall_tau": None, "kendall_p": None,
                          "n_raters": raters})
        agreement += capeval_agreement(votes, answers, criterion, confidence)
    return pair_table(votes, confidence), ranking, agreement
