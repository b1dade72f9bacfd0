"""The report's plots, readable at a glance: one colour and marker per policy, the same in every plot;
one panel per judge (or task); the paper's systems drawn in grey for reference; the legend below the
panels, never over the data; written atomically."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from covip.core.io import atomic_output
from covip.stages.report.sections import _CRITERION_TITLES, CONDITION_ORDER
from covip.stages.report.tables import COUNT_SETTINGS, MODES, STAND_IN_MARK, TASKS

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
_PAPER_HIGHLIGHT = "Qwen3-VL-8B+CoViP"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def policy_styles(policies) -> dict[str, tuple]:
    """policy -> (colour, marker), fixed by the sorted policy names, so a policy looks the same everywhere."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    return {policy: (colours[i % len(colours)], _MARKERS[i % len(_MARKERS)]) for i, policy in enumerate(sorted(set(policies)))}


def _offsets(n: int, step: float) -> list[float]:
    """Small horizontal offsets, so equal values of several policies stay visible side by side."""
    return [(i - (n - 1) / 2) * step for i in range(n)]


def _save(fig, path, handles: dict) -> None:
    """One legend below the panels (never over the data), then an atomic write."""
    fig.tight_layout()
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=min(5, len(handles)),
                   fontsize=8, frameon=False, bbox_to_anchor=(0.5, 0.0))
    with atomic_output(path) as tmp:  # a crash never leaves half a PNG
        fig.savefig(tmp, dpi=120, format="png", bbox_inches="tight")  # the box takes in the legend below
    _pyplot().close(fig)


def plot_capeval_by_count(summary: Sequence[Mapping], path: str | Path, paper: pd.DataFrame | None = None) -> None:
    """Acc+ and Acc- against the number of concepts: one row of panels per judge, one colour and marker
    per policy (dodged, with 95% intervals); the paper's systems, when given, as a grey range and the
    CoViP policy as a dashed line."""
    plt = _pyplot()
    frame = pd.DataFrame([dict(r) for r in summary if int(r["num_positives"]) > 0])
    judges = sorted(frame["judge"].unique()) if not frame.empty else ["–"]
    styles = policy_styles(frame["policy"]) if not frame.empty else {}
    fig, axes = plt.subplots(len(judges), 2, figsize=(11, 3.4 * len(judges) + 0.8), sharex=True, squeeze=False)
    published = None if paper is None else paper[paper["table"] == "capeval"]
    handles: dict = {}
    for row_axes, judge in zip(axes, judges):
        part = frame[frame["judge"] == judge] if not frame.empty else frame
        for metric, axis, title in (("acc_pos", row_axes[0], "Acc+ (positive questions right)"),
                                    ("acc_neg", row_axes[1], "Acc- (negative questions answered D)")):
            if published is not None and not published.empty:
                values = published[published["metric"] == metric].copy()
                values["k"] = values["setting"].map({v: k for k, v in COUNT_SETTINGS.items()})
                band = values.groupby("k")["value"].agg(["min", "max"])
                handles["paper: range of its systems"] = axis.fill_between(band.index, band["min"], band["max"],
                                                                          color="0.85", zorder=0)
                best = values[values["system"] == _PAPER_HIGHLIGHT].sort_values("k")
                if not best.empty:
                    handles[f"paper: {_PAPER_HIGHLIGHT}"], = axis.plot(best["k"], best["value"], "--", color="0.3", lw=1.2)
            policies = sorted(part["policy"].unique()) if not part.empty else []
            for offset, policy in zip(_offsets(len(policies), 0.07), policies):
                group = part[part["policy"] == policy].sort_values("num_positives")
                colour, marker = styles[policy]
                # Clipped at 0: a bar length can come out a hair below zero, which matplotlib rejects.
                below = (group[metric] - group[f"{metric}_low"]).clip(lower=0)
                above = (group[f"{metric}_high"] - group[metric]).clip(lower=0)
                drawn = axis.errorbar(group["num_positives"] + offset, group[metric], yerr=[below, above], color=colour,
                                      marker=marker, capsize=2, lw=1.4, ms=5)
                handles[policy + (f" {STAND_IN_MARK}" if group["stand_in"].any() else "")] = drawn
            axis.set_title(f"{title}, judge: {judge}", fontsize=9)
            axis.set_xticks([1, 2, 3, 4])
            axis.set_ylim(-3, 103)
            axis.grid(alpha=0.3)
        row_axes[0].set_ylabel("%")
    for axis in axes[-1]:
        axis.set_xlabel("concepts in the query image")
    _save(fig, path, handles)


def plot_direct_vs_cag(summary: Sequence[Mapping], path: str | Path, paper: pd.DataFrame | None = None) -> None:
    """Per task, each policy's score direct and with CAG (a line from one to the other, one colour and
    marker per policy); the paper's systems, when given, as grey lines and CoViP dashed."""
    plt = _pyplot()
    frame = pd.DataFrame([dict(r) for r in summary])
    styles = policy_styles(frame["policy"]) if not frame.empty else {}
    published = None if paper is None else paper[paper["table"] == "downstream"]
    fig, axes = plt.subplots(1, len(TASKS), figsize=(12, 4.4), sharey=True)
    handles: dict = {}
    for axis, task in zip(axes, TASKS):
        if published is not None and not published.empty:
            for system, rows in published[published["metric"] == task].groupby("system"):
                values = [float(rows[rows["setting"] == mode]["value"].iloc[0]) for mode in MODES]
                highlight = system == _PAPER_HIGHLIGHT
                line, = axis.plot([0, 1], values, "--" if highlight else "-", color="0.3" if highlight else "0.78",
                                  lw=1.2 if highlight else 0.9, zorder=0)
                handles[f"paper: {system}" if highlight else "paper: its other systems"] = line
        part = frame[frame["task"] == task] if not frame.empty else frame
        policies = sorted(part["policy"].unique()) if not part.empty else []
        for offset, policy in zip(_offsets(len(policies), 0.03), policies):
            rows = part[part["policy"] == policy]
            scores = [rows[rows["mode"] == mode]["score"] for mode in MODES]
            values = [float(v.iloc[0]) if len(v) and pd.notna(v.iloc[0]) else float("nan") for v in scores]
            colour, marker = styles[policy]
            line, = axis.plot([offset, 1 + offset], values, color=colour, marker=marker, lw=1.4, ms=6)
            handles[policy + (f" {STAND_IN_MARK}" if rows["stand_in"].any() else "")] = line
        axis.set_xticks([0, 1])
        axis.set_xticklabels(["direct", "with CAG"])
        axis.set_xlim(-0.3, 1.3)
        axis.set_ylim(-3, 103)
        axis.set_title(task.upper())
        axis.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("score (%)")
    _save(fig, path, handles)


def plot_controls(effects: Sequence[Mapping], path: str | Path) -> None:
    """Pooled Acc+ per policy under each condition (one panel per judge), with drop intervals."""
    plt = _pyplot()
    frame = pd.DataFrame([dict(r) for r in effects if r["metric"] == "acc_pos" and int(r["num_positives"]) == 0])
    judges = sorted(frame["judge"].unique()) if not frame.empty else ["–"]
    fig, axes = plt.subplots(1, len(judges), figsize=(6 * len(judges), 4.4), sharey=True, squeeze=False)
    handles: dict = {}
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
            handles[condition] = axis.bar([i + (k - (len(conditions) - 1) / 2) * width for i in range(len(policies))],
                                          values, width, yerr=[low, high], capsize=2)
        axis.set_xticks(range(len(policies)))
        axis.set_xticklabels(policies, rotation=20, ha="right", fontsize=8)
        axis.set_title(f"Acc+ by condition (judge: {judge})")
        axis.set_ylim(0, 105)
        axis.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("Acc+ (%)")
    _save(fig, path, handles)



def plot_human_eval(pairs: Sequence[Mapping], path: str | Path) -> None:
    """Per criterion, one stacked bar per pair of policies: X wins, tie, Y wins (percent of votes)."""
    plt = _pyplot()
    criteria = list(_CRITERION_TITLES)
    fig, axes = plt.subplots(1, len(criteria), figsize=(11, 2.0 + 0.5 * max(1, len(pairs) // 2)), squeeze=False)
    handles: dict = {}
    for axis, criterion in zip(axes[0], criteria):
        rows = [r for r in pairs if r["criterion"] == criterion]
        labels = [f"{r['policy_x']} vs {r['policy_y']}" for r in rows]
        left = [0.0] * len(rows)
        for key, colour, name in (("x_win", "#2b6cb0", "X wins"), ("tie", "#bbbbbb", "tie"), ("y_win", "#dd6b20", "Y wins")):
            values = [float(r[key]) for r in rows]
            handles[name] = axis.barh(labels, values, left=left, color=colour)
            left = [a + b for a, b in zip(left, values)]
        axis.set_xlim(0, 100)
        axis.set_xlabel("% of votes")
        axis.set_title(_CRITERION_TITLES[criterion])
        axis.invert_yaxis()
    _save(fig, path, handles)
