"""Usage accounting: requests, cache hits, failures, tokens and estimated cost per job and model.

Every workflow job writes one `schemas.USAGE` table to `<outdir>/usage/<job>.parquet`, where `<job>`
is its log path under `<outdir>/logs/` without `.log` (so the rule and its wildcards). The report
sums them. Costs come from the config's `prices:` table, USD per million input and output tokens,
keyed by the model id at the endpoint; a model without a price costs 0 (local and stand-in models).
Only fresh calls cost anything: a cache hit counts as a request and a hit, with no tokens.

A job killed before it wrote its table (kill -9) still paid for the calls it finished; their answers
are in its cache journal with their token counts, and the merge that follows writes them to
`<outdir>/usage/recovered/<journal>.parquet` (`write_recovered_usage`), so the run's totals equal
what the servers answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from covip.core import schemas
from covip.core.io import read_rows


def estimated_cost(model: str, input_tokens: int, output_tokens: int, prices: Mapping[str, Mapping[str, float]]) -> float:
    """USD for the tokens at the model's list price (`prices[model] = {input: $/1M, output: $/1M}`)."""
    price = prices.get(model) or {}
    return (input_tokens * float(price.get("input", 0.0)) + output_tokens * float(price.get("output", 0.0))) / 1e6


def usage_rows(built: Mapping[str, Any], prices: Mapping[str, Mapping[str, float]], *, job: str, rule: str) -> list[dict]:
    """One USAGE row per built registry model that counts usage (CachedChatModel and friends)."""
    rows = []
    for role, model in sorted(built.items()):
        usage = getattr(model, "usage", None)
        spec = getattr(model, "spec", None)
        if usage is None or spec is None:
            continue
        counts = usage.summary()
        rows.append({
            "job": job,
            "rule": rule,
            "role": role,
            "backend": spec.backend,
            "model": spec.model,
            "requests": counts["requests"],
            "cache_hits": counts["cache_hits"],
            "failures": counts["failures"],
            "input_tokens": counts["prompt_tokens"],
            "output_tokens": counts["completion_tokens"],
            "seconds": float(counts["seconds"]),
            "estimated_cost_usd": estimated_cost(spec.model, counts["prompt_tokens"], counts["completion_tokens"], prices),
        })
    return rows


def load_usage(folder: str | Path) -> list[dict]:
    """Every job's usage rows under `folder` (missing folder: none)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [row for path in sorted(folder.rglob("*.parquet")) for row in read_rows(path, schemas.USAGE)]


def totals(rows: Iterable[Mapping], by: str = "rule") -> list[dict]:
    """Usage summed per `by` ('rule', 'role', 'model', ...), sorted by that key."""
    sums: dict[str, dict] = {}
    numeric = ("requests", "cache_hits", "failures", "input_tokens", "output_tokens", "seconds", "estimated_cost_usd")
    for row in rows:
        entry = sums.setdefault(row[by], {by: row[by], **{name: 0 for name in numeric}})
        for name in numeric:
            entry[name] += row[name]
    return [sums[key] for key in sorted(sums)]


def usage_markdown(rows: list[Mapping]) -> str:
    """A Markdown table of usage per rule plus the run's total."""
    if not rows:
        return "No model usage was recorded."
    lines = ["| rule | requests | cache hits | failures | input tokens | output tokens | est. cost (USD) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    per_rule = totals(rows, "rule")
    for entry in per_rule + [dict(totals([{**r, "rule": "**total**"} for r in rows], "rule")[0])]:
        lines.append(
            f"| {entry['rule']} | {entry['requests']} | {entry['cache_hits']} | {entry['failures']} | "
            f"{entry['input_tokens']} | {entry['output_tokens']} | {entry['estimated_cost_usd']:.4f} |"
        )
    return "\n".join(lines)


def write_recovered_usage(records: list[Mapping], owner: Mapping, path: str | Path,
                          prices: Mapping[str, Mapping[str, float]]) -> list[dict]:
    """Usage rows of a killed job's paid calls (its journal records), written to `path`; the rows."""
    from covip.core.io import write_artifact

    sums: dict[tuple, dict] = {}
    for record in records:
        tokens = (record.get("p") or {}).get("usage") or {}
        key = (record.get("r") or "", record.get("b") or "", record.get("m") or "")
        entry = sums.setdefault(key, {"requests": 0, "input_tokens": 0, "output_tokens": 0})
        entry["requests"] += 1
        entry["input_tokens"] += int(tokens.get("prompt_tokens", 0))
        entry["output_tokens"] += int(tokens.get("completion_tokens", 0))
    job = owner.get("job") or "unknown"
    rows = [{"job": f"{job} (killed)", "rule": owner.get("rule") or "unknown", "role": role, "backend": backend,
             "model": model, "requests": entry["requests"], "cache_hits": 0, "failures": 0,
             "input_tokens": entry["input_tokens"], "output_tokens": entry["output_tokens"], "seconds": 0.0,
             "estimated_cost_usd": estimated_cost(model, entry["input_tokens"], entry["output_tokens"], prices)}
            for (role, backend, model), entry in sorted(sums.items())]
    if rows:
        write_artifact(rows, path, schemas.USAGE)
    return rows
