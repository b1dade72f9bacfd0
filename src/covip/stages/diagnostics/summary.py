"""Aggregation of scored diagnostic responses: one mean per (policy, task, mode), with an interval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from covip.core.seeding import rng_for
from covip.core.stats import mean_interval


def summarize_diagnostics(rows: Sequence[Mapping], n_bootstrap: int = 1000, seed: int = 0,
                          confidence: float = 0.95) -> list[dict]:
    """Mean score in percent (0-100) per (policy, task, mode) with a bootstrap interval; rows of
    schemas.DIAGNOSTIC_SUMMARY.

    The mean is over the rows that have a score; `n` counts them and `n_failed` counts the rows
    without one (failed responses, failed or unparseable judging), so a failure never hides as a 0.
    """
    groups: dict[tuple[str, str, str], list[Mapping]] = {}
    for row in rows:
        groups.setdefault((row["policy"], row["task"], row["mode"]), []).append(row)
    summary = []
    for (policy, task, mode), group in sorted(groups.items()):
        scores = [float(r["score"]) * 100.0 for r in group if r.get("score") is not None]
        rng = rng_for(seed, "diagnostics-bootstrap", policy, task, mode)
        low, high = mean_interval(scores, n_bootstrap, rng, confidence)
        summary.append({
            "policy": policy,
            "task": task,
            "mode": mode,
            "score": float(np.mean(scores)) if scores else None,
            "score_low": low,
            "score_high": high,
            "n": len(scores),
            "n_failed": len(group) - len(scores),
            "scorer": ", ".join(sorted({str(r["scorer"]) for r in group})),
            "model_identity": ", ".join(sorted({str(r["model_identity"]) for r in group})),
            "stand_in": any(bool(r["stand_in"]) for r in group),
        })
    return summary
