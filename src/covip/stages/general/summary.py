"""The multi-image table: every policy's score per general benchmark with a bootstrap interval over
samples, and each trained policy's difference to its base with a paired interval over the samples both
answered (schemas.GENERAL_SUMMARY); and its Markdown beside the paper's `multi_image` rows."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from covip.core.seeding import derive_seed
from covip.core.stats import bootstrap_draws, mean_interval, percentile_bounds

STAND_IN_MARK = "†"
PAPER_TABLE = "multi_image"


def _scores_by_doc(samples: Sequence[Mapping]) -> dict[tuple[str, str], dict[str, float]]:
    found: dict[tuple[str, str], dict[str, float]] = {}
    for row in samples:
        if row["score"] is not None:
            found.setdefault((row["policy"], row["benchmark"]), {})[row["doc_id"]] = float(row["score"])
    return found


def _paired_interval(ours: dict[str, float], base: dict[str, float], n_bootstrap: int, rng, confidence: float):
    shared = sorted(set(ours) & set(base))
    if not shared or n_bootstrap == 0:
        return None, None
    difference = np.array([ours[d] - base[d] for d in shared]) * 100.0
    draws = bootstrap_draws(rng, len(shared), n_bootstrap)
    return percentile_bounds(difference[draws].mean(axis=1), confidence)


def summarize_general(scores: Sequence[Mapping], samples: Sequence[Mapping], base_of: Mapping[str, str],
                      labels: Mapping[str, tuple[str, str | None]], n_bootstrap: int, seed: int,
                      confidence: float = 0.95) -> list[dict]:
    """One row per (policy, benchmark). `labels`: benchmark -> (label, the paper's label or None)."""
    per_doc = _scores_by_doc(samples)
    value_of = {(r["policy"], r["benchmark"]): r["value"] for r in scores}
    rows = []
    for score in sorted(scores, key=lambda r: (r["benchmark"], r["policy"])):
        policy, name = score["policy"], score["benchmark"]
        ours = per_doc.get((policy, name), {})
        rng = np.random.default_rng(derive_seed(seed, "general", policy, name))
        low, high = mean_interval([100.0 * v for v in ours.values()], n_bootstrap, rng, confidence) if ours else (None, None)
        base = base_of.get(policy)
        diff = diff_low = diff_high = None
        if base is not None and value_of.get((base, name)) is not None and score["value"] is not None:
            diff = score["value"] - value_of[(base, name)]
            diff_low, diff_high = _paired_interval(ours, per_doc.get((base, name), {}), n_bootstrap, rng, confidence)
        label, paper = labels.get(name, (name, None))
        rows.append({**{k: score[k] for k in ("policy", "benchmark", "metric", "value", "n", "harness", "task",
                                              "task_version", "harness_model", "route", "model_identity", "stand_in")},
                     "label": label, "paper_label": paper, "low": low, "high": high,
                     "base_policy": base if diff is not None else None, "diff": diff, "diff_low": diff_low,
                     "diff_high": diff_high})
    return rows


def _fmt(value) -> str:
    return "–" if value is None or (isinstance(value, float) and np.isnan(value)) else f"{float(value):.1f}"


def _signed(value) -> str:
    return "–" if value is None else f"{float(value):+.1f}"


def general_section(summary: Sequence[Mapping], paper) -> str:
    """The report's section: the paper's multi-image rows, ours beside them, and trained minus base."""
    published = paper[paper["table"] == PAPER_TABLE] if paper is not None else None
    columns: list[tuple[str, str]] = []  # (column title, our benchmark or '')
    paper_columns = list(dict.fromkeys(published["setting"])) if published is not None else []
    by_paper_label = {r["paper_label"]: r["benchmark"] for r in summary if r["paper_label"]}
    for label in paper_columns:
        columns.append((label, by_paper_label.get(label, "")))
    for row in summary:
        if row["benchmark"] not in {c[1] for c in columns}:
            columns.append((row["label"], row["benchmark"]))
    lines = ["| system | " + " | ".join(title for title, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    if published is not None:
        for system, rows in published.groupby("system", sort=False):
            values = {r.setting: r.value for r in rows.itertuples()}
            lines.append(f"| {system} (paper) | " + " | ".join(_fmt(values.get(t)) for t, _ in columns) + " |")
    cells = {(r["policy"], r["benchmark"]): r for r in summary}
    policies = list(dict.fromkeys(r["policy"] for r in summary))
    for policy in policies:
        mine = [cells.get((policy, b)) for _, b in columns]
        mark = f" {STAND_IN_MARK}" if any(c and c["stand_in"] for c in mine) else ""
        texts = ["–" if c is None else f"{_fmt(c['value'])} [{_fmt(c['low'])}, {_fmt(c['high'])}]" for c in mine]
        lines.append(f"| ours: {policy}{mark} | " + " | ".join(texts) + " |")
    for policy in policies:
        mine = [cells.get((policy, b)) for _, b in columns]
        if not any(c and c["diff"] is not None for c in mine):
            continue
        base = next(c["base_policy"] for c in mine if c and c["base_policy"])
        mark = f" {STAND_IN_MARK}" if any(c and c["stand_in"] for c in mine) else ""
        texts = ["–" if c is None or c["diff"] is None else f"{_signed(c['diff'])} [{_signed(c['diff_low'])}, "
                 f"{_signed(c['diff_high'])}]" for c in mine]
        lines.append(f"| ours: {policy} − {base}{mark} | " + " | ".join(texts) + " |")
    if published is not None:
        systems = list(dict.fromkeys(published["system"]))
        if len(systems) == 2:
            first, second = (published[published["system"] == s] for s in systems)
            a = {r.setting: r.value for r in first.itertuples()}
            b = {r.setting: r.value for r in second.itertuples()}
            lines.append(f"| {systems[1]} − {systems[0]} (paper) | "
                         + " | ".join(_signed(b[t] - a[t]) if t in a and t in b else "–" for t, _ in columns) + " |")
    provenance = ["| policy | benchmark | lmms-eval task (version) | harness | model class | route | model |",
                  "|---|---|---|---|---|---|---|"]
    for r in summary:
        provenance.append(f"| {r['policy']} | {r['benchmark']} | `{r['task']}` ({r['task_version'] or '–'}) | "
                          f"{r['harness']} | `{r['harness_model']}` | {r['route']} | `{r['model_identity']}` |")
    intro = ("Accuracy in percent with a 95% bootstrap interval over samples [low, high]; a difference row "
             "is trained minus base on the same samples, with a paired bootstrap interval. "
             f"Rows marked {STAND_IN_MARK} come from a stand-in policy or the tiny offline benchmark.")
    return "\n\n".join(["## General multi-image benchmarks (lmms-eval): no regression after training", intro,
                        "\n".join(lines), "\n".join(provenance)])
