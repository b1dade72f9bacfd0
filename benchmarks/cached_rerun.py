"""Benchmark 3: rerun the embedded default with only the response cache kept.

A cold `snakemake --cores N` run of config/config.yaml into a fresh output folder, then every output
is deleted except `<outdir>/cache/` (the SQLite response cache) and the workflow runs again. Model
calls and model-call time come from the usage every job writes to `<outdir>/usage/<job>.parquet`
(covip.workflow.run.StageRun; schema `usage`): a model call is a request that was not a cache hit, and
model-call time is the summed latency of those calls. Every backend goes through the cache (chat
models, image generators, embedders). The tiny VLM under resources/ is a build input outside the
output folder and is kept.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from benchmarks.embedded_default import run_default
from covip.clients.usage import load_usage


def usage_totals(outdir: Path) -> dict:
    """Sum the usage rows of every job under `outdir/usage`, in total and per registry entry."""
    total = {"requests": 0, "cache_hits": 0, "model_calls": 0, "seconds": 0.0}
    per_model: dict[str, dict] = defaultdict(lambda: {"requests": 0, "cache_hits": 0, "model_calls": 0, "seconds": 0.0})
    for row in load_usage(outdir / "usage"):
        for bucket in (total, per_model[row["role"]]):
            bucket["requests"] += row["requests"]
            bucket["cache_hits"] += row["cache_hits"]
            bucket["model_calls"] += row["requests"] - row["cache_hits"]
            bucket["seconds"] += row["seconds"]
    return {"total": total, "per_model": dict(per_model)}


def run(cores: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="covip-rerun-bench-") as tmp:
        outdir = Path(tmp) / "out"
        cold = run_default(outdir, cores)
        cold_usage = usage_totals(outdir)
        for child in outdir.iterdir():
            if child.name != "cache":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        kept = sorted(str(p.relative_to(outdir)) for p in outdir.rglob("*") if p.is_file())
        warm = run_default(outdir, cores)
        warm_usage = usage_totals(outdir)
    cold_s, warm_s = cold_usage["total"]["seconds"], warm_usage["total"]["seconds"]
    return {
        "cores": cores, "kept_files": kept,
        "cold": {"wall_s": cold["wall_s"], **cold_usage},
        "rerun": {"wall_s": warm["wall_s"], **warm_usage},
        "model_time_ratio": warm_s / cold_s if cold_s else None,
    }


def markdown(result: dict) -> str:
    cold, rerun = result["cold"], result["rerun"]
    lines = [
        f"Kept between the runs: {', '.join(result['kept_files']) or 'nothing'}.",
        "",
        "| run | wall s | model requests | cache hits | model calls | model-call s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in (("cold", cold), ("rerun, cache only", rerun)):
        t = r["total"]
        lines.append(f"| {name} | {r['wall_s']:.1f} | {t['requests']} | {t['cache_hits']} | {t['model_calls']} | {t['seconds']:.2f} |")
    ratio = result["model_time_ratio"]
    calls = rerun["total"]["model_calls"]
    met = ratio is not None and ratio < 0.05 and calls == 0
    lines += ["", f"Rerun model-call time / cold: {'n/a' if ratio is None else f'{ratio:.1%}'}; model calls in the rerun: {calls}; "
              f"target (< 5 % and zero calls): {'met' if met else 'NOT met'}.", "",
              "| registry entry | cold calls | cold s | rerun calls | rerun cache hits | rerun s |",
              "|---|---:|---:|---:|---:|---:|"]
    for name in sorted(set(cold["per_model"]) | set(rerun["per_model"])):
        c = cold["per_model"].get(name, {"model_calls": 0, "seconds": 0.0})
        w = rerun["per_model"].get(name, {"model_calls": 0, "cache_hits": 0, "seconds": 0.0})
        lines.append(f"| {name} | {c['model_calls']} | {c['seconds']:.2f} | {w['model_calls']} | {w['cache_hits']} | {w['seconds']:.2f} |")
    return "\n".join(lines)
