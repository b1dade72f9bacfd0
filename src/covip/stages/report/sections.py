"""The report's "Does it look?" section (visual-context controls, judge agreement) and its human
evaluation section, in Markdown."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from covip.stages.report.tables import MODES, STAND_IN_MARK, _fmt

CONDITION_ORDER = ("intact", "text_only", "corrupted_context", "swapped_context", "blank_query")
_DIAG_METRICS = ("lsd", "lar", "itr")


def _drop(row: Mapping) -> str:
    if row["condition"] == "intact":
        return _fmt(row["value"])
    if row["drop"] >= 0:
        interval = "" if row.get("drop_low") is None else f" [{_fmt(row['drop_low'])}, {_fmt(row['drop_high'])}]"
        return f"{_fmt(row['value'])} (−{_fmt(row['drop'])}{interval})"
    # A rise: show it and its interval as positive numbers (the interval of -drop).
    interval = "" if row.get("drop_low") is None else f" [{_fmt(-row['drop_high'])}, {_fmt(-row['drop_low'])}]"
    return f"{_fmt(row['value'])} (+{_fmt(-row['drop'])}{interval})"


def controls_table(effects: Sequence[Mapping], metric: str, judge: str | None = None, mode: str = "") -> str:
    """policy x condition for one pooled metric: value under the condition, (−drop [paired 95% CI])."""
    chosen = [r for r in effects if r["metric"] == metric and r["mode"] == mode and int(r["num_positives"]) == 0
              and (judge is None or r["judge"] == judge)]
    conditions = [c for c in CONDITION_ORDER if any(r["condition"] == c for r in chosen)]
    lines = ["| policy | produced by | scored by | " + " | ".join(conditions) + " |",
             "|---|---|---|" + "---:|" * len(conditions)]
    cells: dict[str, dict[str, Mapping]] = {}
    for row in chosen:
        cells.setdefault(row["policy"], {})[row["condition"]] = row
    for policy, by_condition in sorted(cells.items()):
        first = by_condition.get("intact") or next(iter(by_condition.values()))
        mark = f" {STAND_IN_MARK}" if first["stand_in"] else ""
        lines.append(f"| {policy}{mark} | `{first['policy_identity']}` | `{first['judge_identity']}` | "
                     + " | ".join(_drop(by_condition[c]) if c in by_condition else "–" for c in conditions) + " |")
    return "\n".join(lines)


def changes_table(changes: Sequence[Mapping]) -> str:
    """What each control changed: image cells per dataset and kind of change."""
    counts: dict[tuple[str, str, str], int] = {}
    for row in changes:
        key = (row["condition"], row["dataset"], row["change"])
        counts[key] = counts.get(key, 0) + 1
    lines = ["| condition | dataset | change | image cells |", "|---|---|---|---:|"]
    for (condition, dataset, change), n in sorted(counts.items(), key=lambda kv: (CONDITION_ORDER.index(kv[0][0]), kv[0][1:])):
        lines.append(f"| {condition} | {dataset} | {change} | {n} |")
    return "\n".join(lines)


def agreement_table(agreement: Sequence[Mapping]) -> str:
    """Judge pairs: kappa, raw agreement, each judge's Acc+/Acc- and unparseable rate."""
    lines = ["| condition | policy | judges (A / B) | items | κ | agreement | Acc+ A / B | Acc- A / B | unparseable % A / B |",
             "|---|---|---|---:|---:|---:|---|---|---|"]
    order = {c: i for i, c in enumerate(("all", *CONDITION_ORDER))}
    for r in sorted(agreement, key=lambda r: (order.get(r["condition"], 99), r["policy"] != "all", r["policy"])):
        kappa = "undefined" if r["kappa"] is None or (isinstance(r["kappa"], float) and math.isnan(r["kappa"])) else f"{r['kappa']:.2f}"
        mark = f" {STAND_IN_MARK}" if r["stand_in"] else ""
        lines.append(
            f"| {r['condition']} | {r['policy']} | `{r['judge_a_identity']}` / `{r['judge_b_identity']}`{mark} | "
            f"{r['n_items']} | {kappa} | {100 * r['agreement']:.1f}% | {_fmt(r['acc_pos_a'])} / {_fmt(r['acc_pos_b'])} | "
            f"{_fmt(r['acc_neg_a'])} / {_fmt(r['acc_neg_b'])} | {_fmt(r['unparseable_a'])} / {_fmt(r['unparseable_b'])} |"
        )
    return "\n".join(lines)


def controls_section(effects, changes, agreement, disagreements, plot: str) -> str:
    """The report's "Does it look?" section (Markdown)."""
    judges = sorted({r["judge"] for r in effects if r["metric"] == "acc_pos"})
    parts = [
        "## Does it look? Visual-context controls",
        "Every policy captions the same test samples again with the visual evidence taken away or falsified "
        "(`text_only`: no context images; `corrupted_context`: context images degraded; `swapped_context`: "
        "another sample's context images under the same dialogues and names; `blank_query`: the query image "
        "replaced). Cells: the score under the condition, then (−drop against `intact` [paired 95% cluster-"
        "bootstrap interval over the same samples]). A policy that uses the images must lose Acc+ under "
        "`swapped_context` and `blank_query`; one that matches text only will not. The reference policies "
        "read the ground truth or the text, not the pixels: they show what the control does to the metric "
        "itself, and the oracle must not move.",
        "### What each control changed",
        changes_table(changes),
    ]
    for judge in judges:
        parts += [f"### CapEval-QA Acc+ (all concept counts pooled), judge `{judge}`", controls_table(effects, "acc_pos", judge),
                  f"### CapEval-QA Acc- (all concept counts pooled), judge `{judge}`", controls_table(effects, "acc_neg", judge)]
    for metric in _DIAG_METRICS:
        for mode in MODES:
            if any(r["metric"] == metric and r["mode"] == mode for r in effects):
                parts += [f"### {metric.upper()} {mode}", controls_table(effects, metric, None, mode)]
    parts += [
        f"![Acc+ by condition]({plot})",
        "Per concept count (1-4) the same drops are in `report/control_effects.parquet`.",
        "## Judge agreement",
        "The same captions scored by every judge: Cohen's κ of their letters over the same questions "
        "('undefined' when both judges give one and the same letter to everything), each judge's Acc+/Acc- "
        "on those questions, and how often each reply had no readable letter (counted as D).",
        agreement_table(agreement) if agreement else "(only one judge configured: nothing to compare)",
        f"{len(disagreements)} questions were answered differently; they are listed in "
        "`report/judge_disagreements.parquet`.",
    ]
    return "\n\n".join(parts)


_CRITERION_TITLES = {"context": "use of the remembered context", "image": "description of the new image"}


def _interval_text(value, low, high) -> str:
    return f"{_fmt(value)} ({_fmt(low)}–{_fmt(high)})"


def human_eval_section(pairs: Sequence[Mapping], ranking: Sequence[Mapping], agreement: Sequence[Mapping], plot: str) -> str:
    """The report's "Human evaluation" section (Markdown) from the human_eval_summary tables."""
    parts = ["## Human evaluation: pairwise caption preference",
             "Raters saw the context, the new image and two captions (sides random) and chose the better one or a "
             "tie. Percent of votes with 95% Wilson intervals; the Bradley–Terry fit counts a tie as half a win "
             "each way. Setup and reading: docs/human-eval.md."]
    for criterion, title in _CRITERION_TITLES.items():
        lines = [f"### {title.capitalize()}", "| X vs Y | votes | X wins | tie | Y wins | raters |",
                 "|---|---:|---|---|---|---:|"]
        for r in (r for r in pairs if r["criterion"] == criterion):
            lines.append(f"| {r['policy_x']} vs {r['policy_y']} | {r['n_votes']} | "
                         f"{_interval_text(r['x_win'], r['x_win_low'], r['x_win_high'])} | "
                         f"{_interval_text(r['tie'], r['tie_low'], r['tie_high'])} | "
                         f"{_interval_text(r['y_win'], r['y_win_low'], r['y_win_high'])} | {r['n_raters']} |")
        ranked = sorted((r for r in ranking if r["criterion"] == criterion), key=lambda r: r["rank"])
        lines.append("")
        lines.append("Bradley–Terry ranking: " + ", ".join(
            f"{r['rank']}. {r['policy']} ({r['strength']:+.2f})" for r in ranked))
        parts.append("\n".join(lines))
    lines = ["### Agreement", "| criterion | measure | judge | value | decisive votes (agree / disagree / equal scores) "
             "| Kendall τ-b | raters |", "|---|---|---|---|---|---:|---:|"]
    for r in agreement:
        if r["measure"] == "krippendorff_alpha":
            value = "undefined" if r["value"] is None or math.isnan(r["value"]) else f"α = {r['value']:.2f}"
            lines.append(f"| {r['criterion']} | Krippendorff's α between raters | – | {value} | "
                         f"{r['n_units']} comparisons rated twice or more | – | {r['n_raters']} |")
            continue
        tau = "–" if r["kendall_tau"] is None or math.isnan(r["kendall_tau"]) else f"{r['kendall_tau']:.2f}"
        measure = "Acc+" if r["measure"] == "capeval_acc_pos" else "Acc-"
        lines.append(f"| {r['criterion']} | preferred caption has the higher {measure} | {r['judge']} | "
                     f"{_interval_text(r['value'], r['low'], r['high'])} | {r['n_agree']} / {r['n_disagree']} / "
                     f"{r['n_capeval_ties']} | {tau} | {r['n_raters']} |")
    parts += ["\n".join(lines), f"![Human preference per pair]({plot})"]
    return "\n\n".join(parts)
