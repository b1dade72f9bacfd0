"""The plan against what a run used: calls and tokens per rule, planned and recorded, and their ratio.

The run's usage (`<outdir>/usage/**/*.parquet`, schemas.USAGE) counts every request a job made, cache
hits and copies of identical requests included (an embedder: every image), and the tokens of its
fresh calls as the backend reported them. A GSPO run's planned calls are its judge's; the rollouts
are generated in the training process, not sent as requests. Two caveats for reading the ratios: the plan counts first attempts only (re-asks,
repairs and retries are measured, not planned), and offline stand-ins report words rather than
tokens (and no image tokens), so their token ratios compare characters/4 with words.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def _ratio(used: float, planned: float) -> float | None:
    return used / planned if planned else None


def compare(plan_rows: Iterable[Mapping], usage_rows: Iterable[Mapping]) -> list[dict]:
    """Per rule: planned and used calls, input and output tokens, and used / planned for each."""
    planned: dict[str, dict[str, float]] = {}
    for row in plan_rows:
        entry = planned.setdefault(row["rule"], {"calls": 0, "input_tokens": 0, "output_tokens": 0})
        calls = row["calls"] if not str(row["role"]).startswith("training.runs.") else 0  # rollouts are not requests
        entry["calls"] += calls
        if calls:
            entry["input_tokens"] += row["input_tokens"]
            entry["output_tokens"] += row["output_tokens"]
    used: dict[str, dict[str, float]] = {}
    for row in usage_rows:
        entry = used.setdefault(row["rule"], {"calls": 0, "input_tokens": 0, "output_tokens": 0})
        entry["calls"] += row["requests"]
        entry["input_tokens"] += row["input_tokens"]
        entry["output_tokens"] += row["output_tokens"]
    out = []
    for rule in sorted(set(planned) | set(used)):
        p, u = planned.get(rule, {}), used.get(rule, {})
        row = {"rule": rule}
        for name in ("calls", "input_tokens", "output_tokens"):
            row[f"planned_{name}"] = int(p.get(name, 0))
            row[f"used_{name}"] = int(u.get(name, 0))
            row[f"{name}_ratio"] = _ratio(u.get(name, 0), p.get(name, 0))
        out.append(row)
    return out


def comparison_markdown(rows: list[dict]) -> str:
    """The comparison as a Markdown table (used / planned; '–' where nothing was planned)."""
    def ratio(value):
        return "–" if value is None else f"{value:.2f}"

    lines = ["| rule | calls planned | calls used | ratio | input tokens planned | used | ratio | "
             "output tokens planned | used | ratio |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['rule']} | {r['planned_calls']} | {r['used_calls']} | {ratio(r['calls_ratio'])} | "
            f"{r['planned_input_tokens']} | {r['used_input_tokens']} | {ratio(r['input_tokens_ratio'])} | "
            f"{r['planned_output_tokens']} | {r['used_output_tokens']} | {ratio(r['output_tokens_ratio'])} |")
    return "\n".join(lines)
