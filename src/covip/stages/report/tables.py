"""The Markdown summary: our rows beside the paper's, the measurement protocol, and provenance.

Reads only aggregates (CapEval-QA and diagnostic summaries) and the paper's numbers
(`reference/paper_results.csv`: table, system, setting, metric, value). Every row of ours names the
protocol that measured it (docs/protocol.md); the paper's rows are printed beside ours only when that
protocol is the authors' (`comparable`). Snakemake's HTML report embeds the same files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

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


def _paper_rows(paper: pd.DataFrame, table: str, cells) -> list[str]:
    """The paper's rows of one table: `cells(values)` gives a system's cells from {(a, b): value}."""
    lines = []
    for system, rows in paper[paper["table"] == table].groupby("system", sort=False):
        values = {(r.setting, r.metric): r.value for r in rows.itertuples()}
        lines.append(f"| {system} (paper) | paper | " + " | ".join(cells(values)) + " | |")
    return lines


def capeval_table(summary: Sequence[Mapping], paper: pd.DataFrame, protocol: str = "default",
                  comparable: bool = True) -> str:
    """The CapEval-QA table (Acc+ / Acc- by number of concepts): the paper's rows, when our protocol is
    the authors' (`comparable`), then ours, each with the protocol that measured it, and per row of ours
    the samples whose caption failed (left out of every accuracy, never scored as an empty caption)."""
    header = ("| system | protocol | " + " | ".join(f"{k}: Acc+ | {k}: Acc-" for k in COUNT_SETTINGS)
              + " | captions failed |")
    lines = [header, "|---|---|" + "---:|" * (2 * len(COUNT_SETTINGS) + 1)]
    if comparable:
        lines += _paper_rows(paper, "capeval", lambda values: [
            _fmt(values.get((setting, metric))) for setting in COUNT_SETTINGS.values() for metric in ("acc_pos", "acc_neg")])
    judges = {row["judge"] for row in summary}
    by_policy: dict[tuple[str, str], dict[int, Mapping]] = {}
    for row in summary:
        by_policy.setdefault((row["policy"], row["judge"]), {})[int(row["num_positives"])] = row
    for (policy, judge), counts in sorted(by_policy.items()):
        first = next(iter(counts.values()))
        cells = [_fmt(counts.get(k, {}).get(metric)) for k in COUNT_SETTINGS for metric in ("acc_pos", "acc_neg")]
        failed = counts.get(0, {}).get("n_caption_failed") or 0
        lines.append(f"| {_label(first, len(judges) > 1)} | {protocol} | " + " | ".join(cells) + f" | {failed} |")
    return "\n".join(lines)


def downstream_table(summary: Sequence[Mapping], paper: pd.DataFrame, protocol: str = "default",
                     comparable: bool = True) -> str:
    """The diagnostic table (LSD / LAR / ITR, direct and CAG): the paper's rows when `comparable`, then
    ours, each with the items that have no score (a failed response, a failed or unreadable verdict),
    which no mean includes."""
    columns = [(task, mode) for task in TASKS for mode in MODES]
    header = ("| system | protocol | " + " | ".join(f"{task.upper()} {mode}" for task, mode in columns)
              + " | failed / items |")
    lines = [header, "|---|---|" + "---:|" * (len(columns) + 1)]
    if comparable:
        lines += _paper_rows(paper, "downstream", lambda values: [_fmt(values.get((mode, task))) for task, mode in columns])
    by_policy: dict[str, dict[tuple[str, str], Mapping]] = {}
    for row in summary:
        by_policy.setdefault(row["policy"], {})[(row["task"], row["mode"])] = row
    for policy, cells in sorted(by_policy.items()):
        first = next(iter(cells.values()))
        values = [_fmt(cells.get(c, {}).get("score")) for c in columns]
        failed = sum(int(cell.get("n_failed") or 0) for cell in cells.values())
        items = failed + sum(int(cell.get("n") or 0) for cell in cells.values())
        lines.append(f"| {_label(first, False)} | {protocol} | " + " | ".join(values) + f" | {failed} / {items} |")
    return "\n".join(lines)


def provenance_table(capeval: Sequence[Mapping], diagnostics: Sequence[Mapping], protocol: str = "default") -> str:
    """Which backend and model produced each of our rows, with which judge or scorer, under which protocol."""
    lines = ["| row | produced by | scored by | protocol | stand-in |", "|---|---|---|---|---|"]
    seen = set()
    for row in capeval:
        key = ("capeval", row["policy"], row["judge"])
        if key not in seen:
            seen.add(key)
            lines.append(f"| CapEval-QA {row['policy']} | `{row['policy_identity']}` | `{row['judge_identity']}` | "
                         f"{protocol} | {'yes' if row['stand_in'] else 'no'} |")
    for row in diagnostics:
        key = ("diag", row["policy"], row["task"], row["mode"])
        if key not in seen:
            seen.add(key)
            lines.append(f"| {row['task'].upper()} {row['mode']} {row['policy']} | `{row['model_identity']}` | "
                         f"`{row['scorer']}` | {protocol} | {'yes' if row['stand_in'] else 'no'} |")
    return "\n".join(lines)


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
    protocol: str = "default",
    comparable: bool = True,
) -> str:
    """The Markdown summary. `protocol` names the measurement protocol of every number of ours (the
    config's `protocol`, or a 'custom (...)' label); `comparable` is False when the run deviates from a
    named protocol, and the paper's rows are then left out."""
    pooled = [r for r in capeval if int(r["num_positives"]) == 0]
    pooled_lines = ["| policy | judge | protocol | Acc+ (95% CI) | Acc- (95% CI) | questions +/- | unparseable | "
                    "judge failed | captions failed |", "|---|---|---|---|---|---|---:|---:|---:|"]
    for r in sorted(pooled, key=lambda r: (r["policy"], r["judge"])):
        pooled_lines.append(
            f"| {r['policy']} | {r['judge']} | {protocol} | {_fmt(r['acc_pos'])} ({_fmt(r['acc_pos_low'])}–{_fmt(r['acc_pos_high'])}) | "
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
        protocol_note(protocol, comparable),
        "## CapEval-QA (SPEC §3): Acc+ / Acc- by number of concepts in the query image",
        "A caption a policy could not produce is a failed row: it is counted under 'captions failed' and left "
        "out of Acc+ and Acc-, never judged as an empty caption.",
        capeval_table(capeval, paper, protocol, comparable),
        "### All concept counts pooled",
        "\n".join(pooled_lines),
        f"![Acc+ and Acc- against the number of concepts]({capeval_plot})",
        "## Diagnostics (SPEC §5): LSD, LAR, ITR, direct and with caption-augmented generation",
        downstream_table(diagnostics, paper, protocol, comparable),
        f"![Direct vs CAG]({diagnostics_plot})",
        *extra_sections,
        "## Where each of our numbers came from",
        provenance_table(capeval, diagnostics, protocol),
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


def protocol_note(protocol: str, comparable: bool) -> str:
    """The report's paragraph on the measurement protocol of every number of ours."""
    text = (f"## Measurement protocol: `{protocol}`\n\nEvery number of ours below was measured with the protocol "
            f"`{protocol}` (docs/protocol.md lists each choice: prompts, token caps, sampling, parsing, scoring).")
    if comparable:
        return text + (" It is the authors' protocol (`authors-code` reproduces their code; `default` fixes its "
                       "defects), so the paper's rows are printed beside ours.")
    return text + (" It departs from the authors' protocol, so the paper's rows are not printed beside ours: "
                   "the numbers would not be comparable.")


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
