"""Every policy's scores under every control condition, with the paired drop against intact."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from covip.core.metrics import capeval_sample_tallies
from covip.core.names import CONDITIONS, INTACT
from covip.core.seeding import rng_for
from covip.core.stats import bootstrap_draws, paired_difference_interval
from covip.stages.controls.settings import ControlError


def control_effects(
    capeval_answers: Mapping[str, Sequence[Mapping]],
    diagnostic_responses: Mapping[str, Sequence[Mapping]],
    *,
    n_bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    policy_identities: Mapping[str, str] | None = None,
    failed_calls: str = "as_d",
) -> list[dict]:
    """Rows of schemas.CONTROL_EFFECTS from CapEval-QA answers and diagnostic responses per condition.

    For every (policy, judge) and condition: Acc+ and Acc- per concept count (1-4, and 0 = pooled);
    for every (policy, task, mode) and condition: the mean diagnostic score. `drop` is intact minus the
    condition, over the samples present in both, and its interval comes from a PAIRED cluster
    bootstrap: one set of sample draws serves both conditions (`paired_difference_interval`), so the
    interval is about the change, not about which samples were drawn. Intact rows carry drop 0 and
    no interval. `failed_calls` is `capeval.failed_calls` ('drop_sample': a sample with a failed judge
    call counts no question, as in the CapEval-QA summary).
    """
    if INTACT not in capeval_answers:
        raise ControlError("control effects need the 'intact' CapEval-QA answers to measure drops against")
    identities = dict(policy_identities or {})
    rows: list[dict] = []

    def interval(base_c, base_t, c, t, keys):
        if n_bootstrap <= 0 or not len(base_c):
            return None, None
        draws = bootstrap_draws(rng_for(seed, "controls-bootstrap", *keys), len(base_c), n_bootstrap)
        return paired_difference_interval(base_c, base_t, c, t, draws, confidence)

    drop = failed_calls == "drop_sample"
    tallies = {condition: capeval_sample_tallies(answers, drop_failed_samples=drop)
               for condition, answers in capeval_answers.items()}
    meta = {}
    for condition, answers in capeval_answers.items():
        for row in answers:
            info = meta.setdefault((condition, row["policy"], row["judge"]), {"identity": row["judge_identity"], "stand_in": False})
            info["stand_in"] |= bool(row["stand_in"])
    for condition in _ordered(capeval_answers):
        for (policy, judge), samples in sorted(tallies[condition].items()):
            base = tallies[INTACT].get((policy, judge))
            if base is None:
                continue
            shared = sorted(set(samples) & set(base))
            info = meta[(condition, policy, judge)]
            for count in sorted({base[s][0] for s in shared}) + [0]:
                chosen = [s for s in shared if count == 0 or base[s][0] == count]
                b = np.array([base[s][1:5] for s in chosen], dtype=np.float64).reshape(-1, 4)
                x = np.array([samples[s][1:5] for s in chosen], dtype=np.float64).reshape(-1, 4)
                for metric, (ci, ti) in (("acc_pos", (0, 1)), ("acc_neg", (2, 3))):
                    if not b[:, ti].sum() or not x[:, ti].sum():
                        continue
                    value = 100.0 * x[:, ci].sum() / x[:, ti].sum()
                    intact = 100.0 * b[:, ci].sum() / b[:, ti].sum()
                    low, high = (None, None) if condition == INTACT else interval(
                        b[:, ci], b[:, ti], x[:, ci], x[:, ti], ("capeval", policy, judge, condition, count))
                    rows.append(_effect(policy, condition, metric, "", judge, count, value, intact, low, high,
                                        len(chosen), identities.get(policy, policy), info["identity"], info["stand_in"]))

    scores: dict[str, dict[tuple[str, str, str], dict[str, float]]] = {}
    dmeta: dict[tuple, dict] = {}
    for condition, responses in diagnostic_responses.items():
        for row in responses:
            key = (row["policy"], row["task"], row["mode"])
            info = dmeta.setdefault(key, {"scorer": row["scorer"], "identity": row["model_identity"], "stand_in": False})
            info["stand_in"] |= bool(row["stand_in"])
            if row.get("score") is not None:
                scores.setdefault(condition, {}).setdefault(key, {})[row["sample_id"]] = float(row["score"])
    for condition in _ordered(scores):
        for key, values in sorted(scores[condition].items()):
            base = scores.get(INTACT, {}).get(key)
            if base is None:
                continue
            shared = sorted(set(values) & set(base))
            if not shared:
                continue
            b = np.array([base[s] for s in shared])
            x = np.array([values[s] for s in shared])
            ones = np.ones(len(shared))
            policy, task, mode = key
            low, high = (None, None) if condition == INTACT else interval(b, ones, x, ones, ("diagnostics", *key, condition))
            info = dmeta[key]
            rows.append(_effect(policy, condition, task, mode, info["scorer"], 0, 100.0 * x.mean(), 100.0 * b.mean(),
                                low, high, len(shared), info["identity"], info["scorer"], info["stand_in"]))
    return rows


def _ordered(conditions) -> list[str]:
    return sorted(conditions, key=lambda c: CONDITIONS.index(c) if c in CONDITIONS else len(CONDITIONS))


def _effect(policy, condition, metric, mode, judge, count, value, intact, low, high, n, policy_identity,
            judge_identity, stand_in) -> dict:
    return {
        "policy": policy, "condition": condition, "metric": metric, "mode": mode, "judge": judge,
        "num_positives": int(count), "value": float(value), "intact": float(intact),
        "drop": float(intact - value), "drop_low": low, "drop_high": high, "n_samples": int(n),
        "policy_identity": policy_identity, "judge_identity": judge_identity, "stand_in": bool(stand_in),
    }
