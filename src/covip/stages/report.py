"""The run's report: our rows beside the paper's published rows, plots, and where every number came from.

Reads only aggregates (CapEval-QA and diagnostic summaries) and the paper's numbers
(`shared/paper_results.csv`: table, system, setting, metric, value), and writes a Markdown summary
plus two plots. Snakemake's HTML report (`snakemake --report report.html`) embeds the same files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from covip.core.io import atomic_output

COUNT_SETTINGS = {1: "1-concept", 2: "2-concepts", 3: "3-concepts", 4: "4-concepts"}
TASKS = ("lsd", "lar", "itr")
MODES = ("direct", "cag")
STAND_IN_MARK = "†"


def load_paper_results(path: str | Path) -> pd.DataFrame:
    table = pd.read_csv(path)
    expected = {"table", "system", "setting", "metric", "value"}
    if set(table.columns) != expected:
        raise ValueError(f"{path}: expected columns {sorted(expected)}, got {list(table.columns)}")
    return table


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{float(value):.1f}"


def _label(row: Mapping, with_judge: bool) -> str:
    label = f"ours: {row['policy']}"
    if with_judge:
        label += f" (judge: {row['judge']})"
    return label + (f" {STAND_IN_MARK}" if row.get("stand_in") else "")


def capeval_table(summary: Sequence[Mapping], paper: pd.DataFrame) -> str:
    """The paper's CapEval-QA table (Acc+ / Acc- by number of concepts) with our rows below, and per row
    the samples whose caption failed (left out of every accuracy, never scored as an empty caption)."""
    header = "| system | " + " | ".join(f"{k}: Acc+ | {k}: Acc-" for k in COUNT_SETTINGS) + " | captions failed |"
    lines = [header, "|---|" + "---:|" * (2 * len(COUNT_SETTINGS) + 1)]
    published = paper[paper["table"] == "capeval"]
    for system, rows in published.groupby("system", sort=False):
        values = {(r.setting, r.metric): r.value for r in rows.itertuples()}
        cells = [
            _fmt(values.get((setting, metric)))
            for setting in COUNT_SETTINGS.values()
            for metric in ("acc_pos", "acc_neg")
        ]
        lines.append(f"| {system} (paper) | " + " | ".join(cells) + " | |")
    judges = {row["judge"] for row in summary}
    by_policy: dict[tuple[str, str], dict[int, Mapping]] = {}
    for row in summary:
        by_policy.setdefault((row["policy"], row["judge"]), {})[int(row["num_positives"])] = row
    for (policy, judge), counts in sorted(by_policy.items()):
        first = next(iter(counts.values()))
        cells = [_fmt(counts.get(k, {}).get(metric)) for k in COUNT_SETTINGS for metric in ("acc_pos", "acc_neg")]
        failed = counts.get(0, {}).get("n_caption_failed") or 0
        lines.append(f"| {_label(first, len(judges) > 1)} | " + " | ".join(cells) + f" | {failed} |")
    return "\n".join(lines)


def downstream_table(summary: Sequence[Mapping], paper: pd.DataFrame) -> str:
    """The paper's diagnostic table (LSD / LAR / ITR, direct and CAG) with our rows below, and per row the
    items without a score (a failed response, a failed or unreadable judge verdict), which no mean includes."""
    columns = [(task, mode) for task in TASKS for mode in MODES]
    header = "| system | " + " | ".join(f"{task.upper()} {mode}" for task, mode in columns) + " | failed / items |"
    lines = [header, "|---|" + "---:|" * (len(columns) + 1)]
    published = paper[paper["table"] == "downstream"]
    for system, rows in published.groupby("system", sort=False):
        values = {(r.metric, r.setting): r.value for r in rows.itertuples()}
        lines.append(f"| {system} (paper) | " + " | ".join(_fmt(values.get(c)) for c in columns) + " | |")
    by_policy: dict[str, dict[tuple[str, str], Mapping]] = {}
    for row in summary:
        by_policy.setdefault(row["policy"], {})[(row["task"], row["mode"])] = row
    for policy, cells in sorted(by_policy.items()):
        first = next(iter(cells.values()))
        values = [_fmt(cells.get(c, {}).get("score")) for c in columns]
        failed = sum(int(cell.get("n_failed") or 0) for cell in cells.values())
        items = failed + sum(int(cell.get("n") or 0) for cell in cells.values())
        lines.append(f"| {_label(first, False)} | " + " | ".join(values) + f" | {failed} / {items} |")
    return "\n".join(lines)


def provenance_table(capeval: Sequence[Mapping], diagnostics: Sequence[Mapping]) -> str:
    """Which backend and model produced each of our rows, and with which judge or scorer."""
    lines = ["| row | produced by | scored by | stand-in |", "|---|---|---|---|"]
    seen = set()
    for row in capeval:
        key = ("capeval", row["policy"], row["judge"])
        if key not in seen:
            seen.add(key)
            lines.append(f"| CapEval-QA {row['policy']} | `{row['policy_identity']}` | `{row['judge_identity']}` | "
                         f"{'yes' if row['stand_in'] else 'no'} |")
    for row in diagnostics:
        key = ("diag", row["policy"], row["task"], row["mode"])
        if key not in seen:
            seen.add(key)
            lines.append(f"| {row['task'].upper()} {row['mode']} {row['policy']} | `{row['model_identity']}` | "
                         f"`{row['scorer']}` | {'yes' if row['stand_in'] else 'no'} |")
    return "\n".join(lines)


def plot_capeval_by_count(summary: Sequence[Mapping], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    frame = pd.DataFrame([dict(r) for r in summary if int(r["num_positives"]) > 0])
    for metric, axis, title in (("acc_pos", axes[0], "Acc+ (positive questions right)"),
                                ("acc_neg", axes[1], "Acc- (negative questions answered D)")):
        if not frame.empty:
            for (policy, judge), group in frame.groupby(["policy", "judge"]):
                group = group.sort_values("num_positives")
                label = f"{policy} / {judge}" + (f" {STAND_IN_MARK}" if group["stand_in"].any() else "")
                # Clipped at 0: with rounding (or a point estimate at the interval's edge) a bar length
                # can come out a hair below zero, which matplotlib rejects.
                below = (group[metric] - group[f"{metric}_low"]).clip(lower=0)
                above = (group[f"{metric}_high"] - group[metric]).clip(lower=0)
                axis.errorbar(group["num_positives"], group[metric], yerr=[below, above],
                              marker="o", capsize=3, label=label)
        axis.set_title(title)
        axis.set_xlabel("concepts in the query image")
        axis.set_xticks([1, 2, 3, 4])
        axis.set_ylim(-2, 102)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("%")
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with atomic_output(path) as tmp:  # a crash never leaves half a PNG
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_direct_vs_cag(summary: Sequence[Mapping], path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame([dict(r) for r in summary])
    fig, axes = plt.subplots(1, len(TASKS), figsize=(12, 4), sharey=True)
    for axis, task in zip(axes, TASKS):
        part = frame[frame["task"] == task] if not frame.empty else frame
        policies = sorted(part["policy"].unique()) if not part.empty else []
        width = 0.38
        for offset, mode in ((-width / 2, "direct"), (width / 2, "cag")):
            rows = [part[(part["policy"] == p) & (part["mode"] == mode)] for p in policies]
            scores = [float(r["score"].iloc[0]) if len(r) and pd.notna(r["score"].iloc[0]) else 0.0 for r in rows]
            axis.bar([i + offset for i in range(len(policies))], scores, width, label=mode)
        axis.set_xticks(range(len(policies)))
        axis.set_xticklabels(policies, rotation=30, ha="right", fontsize=8)
        axis.set_title(task.upper())
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("score (%)")
    axes[-1].legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:  # a crash never leaves half a PNG
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def render_summary(
    capeval: Sequence[Mapping],
    diagnostics: Sequence[Mapping],
    paper: pd.DataFrame,
    *,
    run_name: str,
    stand_in_note: str,
    capeval_plot: str,
    diagnostics_plot: str,
    usage: Sequence[Mapping] | None = None,
    extra_sections: Sequence[str] = (),
) -> str:
    pooled = [r for r in capeval if int(r["num_positives"]) == 0]
    pooled_lines = ["| policy | judge | Acc+ (95% CI) | Acc- (95% CI) | questions +/- | unparseable | judge failed | "
                    "captions failed |", "|---|---|---|---|---|---:|---:|---:|"]
    for r in sorted(pooled, key=lambda r: (r["policy"], r["judge"])):
        pooled_lines.append(
            f"| {r['policy']} | {r['judge']} | {_fmt(r['acc_pos'])} ({_fmt(r['acc_pos_low'])}–{_fmt(r['acc_pos_high'])}) | "
            f"{_fmt(r['acc_neg'])} ({_fmt(r['acc_neg_low'])}–{_fmt(r['acc_neg_high'])}) | "
            f"{r['n_pos_questions']}/{r['n_neg_questions']} | {r['n_unparseable']} | {r.get('n_judge_failed') or 0} | "
            f"{r.get('n_caption_failed') or 0} |"
        )
    sections = [
        f"# CoViP evaluation report — {run_name}",
        stand_in_note.strip(),
        f"Rows marked {STAND_IN_MARK} were produced with an offline stand-in or a reference policy "
        "(a policy or judge that is not a trained model); they check the pipeline and the metric, and are "
        "not comparable with the paper's rows.",
        "## CapEval-QA (SPEC §3): Acc+ / Acc- by number of concepts in the query image",
        "A caption a policy could not produce is a failed row: it is counted under 'captions failed' and left "
        "out of Acc+ and Acc-, never judged as an empty caption.",
        capeval_table(capeval, paper),
        "### All concept counts pooled",
        "\n".join(pooled_lines),
        f"![Acc+ and Acc- against the number of concepts]({capeval_plot})",
        "## Diagnostics (SPEC §5): LSD, LAR, ITR, direct and with caption-augmented generation",
        downstream_table(diagnostics, paper),
        f"![Direct vs CAG]({diagnostics_plot})",
        *extra_sections,
        "## Where each of our numbers came from",
        provenance_table(capeval, diagnostics),
    ]
    if usage is not None:
        from covip.clients.usage import usage_markdown

        sections += [
            "## Model usage (requests, cache hits, failures, tokens, estimated cost per rule)",
            "Every job's row is in `usage/<job>.parquet`; tokens and cost count fresh calls only, and a "
            "cost is an estimate from the config's `prices:` list prices.",
            usage_markdown(list(usage)),
        ]
    return "\n\n".join(sections) + "\n"


def backends_note(config: Mapping) -> str:
    """Which backend serves every model role of this run, and what that means for its numbers."""
    from covip.clients.spec import ModelSpec

    specs = [ModelSpec.from_config(name, entry) for name, entry in config["models"].items()]
    lines = ["## Backends of this run", "", "| role | backend | model | stand-in |", "|---|---|---|---|"]
    for spec in specs:
        lines.append(f"| {spec.name} | {spec.backend} | {spec.model or '–'} | {'yes' if spec.is_stand_in else 'no'} |")
    if any(spec.is_stand_in for spec in specs):
        lines += [
            "",
            "Some roles are served by offline stand-ins (compositor instead of an image model, template "
            "matcher instead of a VLM filter, facts-first writer instead of an LLM, lexical judge instead "
            "of an LLM judge) or by reference policies that read the ground truth. The benchmark data and "
            "the scores are therefore checks of the pipeline and of the metric, not estimates of the "
            "paper's numbers; point the `models:` registry at real models (config/paper.yaml) for those.",
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# "Does it look?": visual-context controls and judge agreement

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


def plot_controls(effects: Sequence[Mapping], path: str | Path) -> None:
    """Pooled Acc+ per policy under each condition (one panel per judge), with drop intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = pd.DataFrame([dict(r) for r in effects if r["metric"] == "acc_pos" and int(r["num_positives"]) == 0])
    judges = sorted(frame["judge"].unique()) if not frame.empty else ["–"]
    fig, axes = plt.subplots(1, len(judges), figsize=(6 * len(judges), 4), sharey=True, squeeze=False)
    for axis, judge in zip(axes[0], judges):
        part = frame[frame["judge"] == judge] if not frame.empty else frame
        policies = sorted(part["policy"].unique()) if not part.empty else []
        conditions = [c for c in CONDITION_ORDER if not part.empty and c in set(part["condition"])]
        width = 0.8 / max(1, len(conditions))
        for k, condition in enumerate(conditions):
            values, low, high = [], [], []
            for policy in policies:
                row = part[(part["policy"] == policy) & (part["condition"] == condition)]
                value = float(row["value"].iloc[0]) if len(row) else 0.0
                values.append(value)
                # The interval is on the drop; shown around the value as value ± the drop's spread.
                has = len(row) and pd.notna(row["drop_low"].iloc[0])
                low.append(float(row["drop_high"].iloc[0] - row["drop"].iloc[0]) if has else 0.0)
                high.append(float(row["drop"].iloc[0] - row["drop_low"].iloc[0]) if has else 0.0)
            axis.bar([i + (k - (len(conditions) - 1) / 2) * width for i in range(len(policies))], values, width,
                     yerr=[low, high], capsize=2, label=condition)
        axis.set_xticks(range(len(policies)))
        axis.set_xticklabels(policies, rotation=20, ha="right", fontsize=8)
        axis.set_title(f"Acc+ by condition (judge: {judge})")
        axis.set_ylim(0, 105)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Acc+ (%)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Human evaluation (rule human_eval_summary; only when a votes database is configured)

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


def plot_human_eval(pairs: Sequence[Mapping], path: str | Path) -> None:
    """Per criterion, one stacked bar per pair of policies: X wins, tie, Y wins (percent of votes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    criteria = list(_CRITERION_TITLES)
    fig, axes = plt.subplots(1, len(criteria), figsize=(11, 1.5 + 0.5 * max(1, len(pairs) // 2)), squeeze=False)
    for axis, criterion in zip(axes[0], criteria):
        rows = [r for r in pairs if r["criterion"] == criterion]
        labels = [f"{r['policy_x']} vs {r['policy_y']}" for r in rows]
        left = [0.0] * len(rows)
        for key, colour, name in (("x_win", "#2b6cb0", "X wins"), ("tie", "#bbbbbb", "tie"), ("y_win", "#dd6b20", "Y wins")):
            values = [float(r[key]) for r in rows]
            axis.barh(labels, values, left=left, color=colour, label=name)
            left = [a + b for a, b in zip(left, values)]
        axis.set_xlim(0, 100)
        axis.set_xlabel("% of votes")
        axis.set_title(_CRITERION_TITLES[criterion])
        axis.invert_yaxis()
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
