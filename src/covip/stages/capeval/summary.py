"""Aggregation: Acc+ / Acc- with cluster-bootstrap intervals from the answer rows, and a text table."""


from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from covip.core.metrics import (
    TallyError,
    capeval_sample_tallies,
    failed_caption_samples,
)
from covip.core.seeding import rng_for
from covip.core.stats import bootstrap_draws, ratio_interval
from covip.stages.capeval.settings import CapEvalInputError


def _summary_row(policy, judge, count, per_sample, n_bootstrap, seed, confidence, policy_identity, judge_identity, stand_in,
                 n_caption_failed=0):
    stats = np.array([s[1:] for s in per_sample], dtype=np.int64).reshape(-1, 6)
    pos_c, pos_t, neg_c, neg_t, unparseable, failed = stats.T
    row = {
        "policy": policy,
        "judge": judge,
        "num_positives": count,
        "acc_pos": 100.0 * pos_c.sum() / pos_t.sum() if pos_t.sum() else None,
        "acc_neg": 100.0 * neg_c.sum() / neg_t.sum() if neg_t.sum() else None,
        "acc_pos_low": None,
        "acc_pos_high": None,
        "acc_neg_low": None,
        "acc_neg_high": None,
        "n_pos_questions": int(pos_t.sum()),
        "n_neg_questions": int(neg_t.sum()),
        "n_unparseable": int(unparseable.sum()),
        "n_judge_failed": int(failed.sum()),
        "n_caption_failed": int(n_caption_failed),
        "policy_identity": policy_identity,
        "judge_identity": judge_identity,
        "stand_in": stand_in,
    }
    if n_bootstrap > 0 and len(per_sample):
        # The same sample draws serve Acc+ and Acc-.
        draws = bootstrap_draws(rng_for(seed, "capeval-bootstrap", policy, judge, count), len(per_sample), n_bootstrap)
        row["acc_pos_low"], row["acc_pos_high"] = ratio_interval(pos_c, pos_t, draws, confidence) if pos_t.sum() else (None, None)
        row["acc_neg_low"], row["acc_neg_high"] = ratio_interval(neg_c, neg_t, draws, confidence) if neg_t.sum() else (None, None)
    return row


def summarize_capeval(
    answer_rows: list[dict],
    n_bootstrap: int = 1000,
    seed: int = 0,
    *,
    confidence: float = 0.95,
    policy_identities: Mapping[str, str] | None = None,
    failed_calls: str = "as_d",
) -> list[dict]:
    """Acc+ / Acc- in percent per (policy, judge, number of positives), plus a pooled row (0).

    Acc+ pools every positive question of the group, Acc- every negative one (the pooled row pools
    questions over all counts, it does not average the per-count accuracies). Intervals are
    `confidence` percentile intervals of a cluster bootstrap: samples are drawn with replacement,
    each bringing all its questions, because the questions of one caption are not independent.
    Seeded per (seed, policy, judge, count), numpy only. `policy_identities` maps a policy to what
    produced its captions (see `policy_identities_from`); by default the policy name. `failed_calls`
    'drop_sample' leaves a sample with a failed judge call out of the accuracies (CapEvalSettings).
    Samples whose caption failed are in no accuracy; each row counts them in `n_caption_failed`.
    """
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be >= 0, got {n_bootstrap}")
    meta: dict[tuple[str, str], dict] = {}
    for position, row in enumerate(answer_rows):
        key = (row["policy"], row["judge"])
        info = meta.setdefault(key, {"judge_identity": row["judge_identity"], "stand_in": False})
        if row["judge_identity"] != info["judge_identity"]:
            raise CapEvalInputError(
                f"capeval answers row {position} (sample_id={row['sample_id']}): judge '{row['judge']}' has two "
                f"identities ({info['judge_identity']!r}, {row['judge_identity']!r}); give each judge its own name"
            )
        info["stand_in"] |= bool(row["stand_in"])
    try:
        groups = capeval_sample_tallies(answer_rows, drop_failed_samples=failed_calls == "drop_sample")
    except TallyError as error:
        raise CapEvalInputError(str(error)) from None
    failed = failed_caption_samples(answer_rows)
    summary = []
    for policy, judge in sorted(set(groups) | set(failed)):
        info = meta[(policy, judge)]
        identity = (policy_identities or {}).get(policy, policy)
        per_sample = [tuple(stats) for _, stats in sorted(groups.get((policy, judge), {}).items())]
        lost = list(failed.get((policy, judge), {}).values())
        for count in sorted({s[0] for s in per_sample} | set(lost)) + [0]:
            chosen = [s for s in per_sample if count == 0 or s[0] == count]
            n_failed = sum(1 for n in lost if count == 0 or n == count)
            summary.append(
                _summary_row(policy, judge, count, chosen, n_bootstrap, seed, confidence, identity,
                             info["judge_identity"], info["stand_in"], n_failed)
            )
    return summary


def format_summary(summary_rows: list[dict]) -> str:
    """A plain-text table of summary rows (for the CLI and logs)."""

    def pct(value):
        return "  n/a" if value is None else f"{value:5.1f}"

    def ci(low, high):
        return "" if low is None else f" [{low:5.1f}, {high:5.1f}]"

    lines = [(f"{'policy':<20} {'judge':<12} {'#pos':>4}  {'Acc+':>5}{'':16}  {'Acc-':>5}{'':16}  unparseable  failed"
             "  captions failed")]
    for r in summary_rows:
        count = "all" if r["num_positives"] == 0 else str(r["num_positives"])
        lines.append(
            f"{r['policy']:<20} {r['judge']:<12} {count:>4}  {pct(r['acc_pos'])}{ci(r['acc_pos_low'], r['acc_pos_high']):<16}"
            f"  {pct(r['acc_neg'])}{ci(r['acc_neg_low'], r['acc_neg_high']):<16}  {r['n_unparseable']:>11}  "
            f"{r['n_judge_failed']:>6}  {r.get('n_caption_failed') or 0:>15}" + ("  (stand-in)" if r["stand_in"] else "")
        )
    return "\n".join(lines)
