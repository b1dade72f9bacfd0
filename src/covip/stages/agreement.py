"""Judge robustness: do two CapEval-QA judges give the same answers to the same questions?

The same captions are scored by every judge in `evaluation.judges`. For each pair of judges, over
the items both answered (policy, condition, sample, concept, question), this module reports:

- Cohen's kappa of the parsed letters A-D (scikit-learn's `cohen_kappa_score`), and the raw
  agreement. When both judges give one and the same letter to every item, chance agreement is 1 and
  kappa is 0/0: we return None (null) rather than 1 or 0, and the raw agreement (1.0) still says
  what happened. Two constant judges on different letters have kappa 0 (no agreement beyond chance).
- each judge's Acc+ and Acc- on exactly those items, and its unparseable rate (replies with no
  readable letter, judge-call failures included: the `unparseable` flag of CAPEVAL_ANSWERS), since
  the authors' rule turns those into 'D' and so into Acc- wins;
- every item the two judges answered differently, for reading.

Rows are given per (condition, policy), per condition over all policies ('all'), and over
everything ('all', 'all'). Questions of a sample whose caption failed were never asked and are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations

from covip.core.metrics import caption_failed
from covip.core.schemas import OPTION_LETTERS

ALL = "all"


def cohen_kappa(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Cohen's kappa of two raters' labels over the same items; None when it is undefined
    (no items, or both raters constant on the same label: chance agreement is 1)."""
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} labels against {len(b)}")
    if not a or len(set(a) | set(b)) == 1:
        return None
    from sklearn.metrics import cohen_kappa_score

    return float(cohen_kappa_score(list(a), list(b), labels=sorted(set(a) | set(b) | set(OPTION_LETTERS))))


def _key(row: Mapping) -> tuple:
    return (row["sample_id"], int(row["context_index"]), row["question_id"])


def judge_agreement(answers: Mapping[str, Sequence[Mapping]]) -> tuple[list[dict], list[dict]]:
    """(rows of schemas.JUDGE_AGREEMENT, rows of schemas.JUDGE_DISAGREEMENTS) from CapEval-QA answer
    rows per condition (all judges mixed). Needs at least two judges to say anything."""
    # condition -> policy -> judge -> item -> row
    table: dict[str, dict[str, dict[str, dict[tuple, Mapping]]]] = {}
    identity: dict[str, str] = {}
    stand_in: dict[str, bool] = {}
    for condition, rows in answers.items():
        for position, row in enumerate(rows):
            if caption_failed(row):  # no caption, no question asked: nothing to agree on
                continue
            judge = row["judge"]
            identity.setdefault(judge, row["judge_identity"])
            stand_in[judge] = stand_in.get(judge, False) or bool(row["stand_in"])
            items = table.setdefault(condition, {}).setdefault(row["policy"], {}).setdefault(judge, {})
            if _key(row) in items:
                raise ValueError(f"capeval answers ({condition}) row {position}: judge '{judge}' answered "
                                 f"{_key(row)} of policy '{row['policy']}' twice")
            items[_key(row)] = row
    judges = sorted(identity)
    agreement, disagreements = [], []
    for judge_a, judge_b in combinations(judges, 2):
        pooled: dict[tuple[str, str], list[tuple[Mapping, Mapping]]] = {}
        for condition in table:
            for policy, by_judge in sorted(table[condition].items()):
                a_items, b_items = by_judge.get(judge_a, {}), by_judge.get(judge_b, {})
                pairs = [(a_items[k], b_items[k]) for k in sorted(set(a_items) & set(b_items))]
                for scope in ((condition, policy), (condition, ALL), (ALL, ALL)):
                    pooled.setdefault(scope, []).extend(pairs)
                for a, b in pairs:
                    if a["parsed"] != b["parsed"]:
                        disagreements.append({
                            "condition": condition, "policy": policy, "sample_id": a["sample_id"],
                            "context_index": int(a["context_index"]), "question_id": a["question_id"],
                            "is_positive": bool(a["is_positive"]), "answer": a["answer"],
                            "judge_a": judge_a, "parsed_a": a["parsed"], "raw_a": a.get("raw_answer"),
                            "judge_b": judge_b, "parsed_b": b["parsed"], "raw_b": b.get("raw_answer"),
                        })
        for (condition, policy), pairs in pooled.items():
            if not pairs:
                continue
            a_rows, b_rows = [p[0] for p in pairs], [p[1] for p in pairs]
            a_letters, b_letters = [r["parsed"] for r in a_rows], [r["parsed"] for r in b_rows]
            agreement.append({
                "condition": condition, "policy": policy, "judge_a": judge_a, "judge_b": judge_b,
                "n_items": len(pairs),
                "agreement": sum(x == y for x, y in zip(a_letters, b_letters)) / len(pairs),
                "kappa": cohen_kappa(a_letters, b_letters),
                "acc_pos_a": _accuracy(a_rows, True), "acc_neg_a": _accuracy(a_rows, False),
                "acc_pos_b": _accuracy(b_rows, True), "acc_neg_b": _accuracy(b_rows, False),
                "unparseable_a": 100.0 * sum(bool(r["unparseable"]) for r in a_rows) / len(a_rows),
                "unparseable_b": 100.0 * sum(bool(r["unparseable"]) for r in b_rows) / len(b_rows),
                "judge_a_identity": identity[judge_a], "judge_b_identity": identity[judge_b],
                "stand_in": stand_in[judge_a] or stand_in[judge_b],
            })
    return agreement, disagreements


def _accuracy(rows: Sequence[Mapping], positive: bool) -> float | None:
    chosen = [bool(r["correct"]) for r in rows if bool(r["is_positive"]) == positive]
    return 100.0 * sum(chosen) / len(chosen) if chosen else None
