"""Benchmark 3: rerun the embedded default with only the response cache kept.

A cold `snakemake --cores N` run of config/config.yaml into a fresh output folder, then every output
is deleted except `<outdir>/cache/` (the SQLite response cache) and the workflow runs again. Model
calls and model-call time come from the usage summary each job logs on exit (`model NAME (identity):
{'requests': ..., 'cache_hits': ..., 'seconds': ...}`, written by covip.workflow.StageRun): a model
call is a request that was not a cache hit. Only chat models and image generators keep usage;
embedders do not, so embedding calls are not counted. The tiny VLM under resources/ is a build
input outside the output folder and is kept.
"""

from __future__ import annotations

import ast
import re
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

from benchmarks.embedded_default import run_default

_USAGE = re.compile(r"model (\S+) \(([^)]*)\): (\{.*\})\s*$")


def usage_from_logs(outdir: Path) -> dict:
    """Sum the usage lines of every job log under `outdir/logs`, in total and per registry entry."""
    total = {"requests": 0, "cache_hits": 0, "model_calls": 0, "seconds": 0.0}
    per_model: dict[str, dict] = defaultdict(lambda: {"requests": 0, "cache_hits": 0, "model_calls": 0, "seconds": 0.0})
    for log in sorted((outdir / "logs").rglob("*.log")):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            match = _USAGE.search(line)
            if not match:
                continue
            usage = ast.literal_eval(match[3])
            calls = usage["requests"] - usage["cache_hits"]
            for bucket in (total, per_model[match[1]]):
                bucket["requests"] += usage["requests"]
                bucket["cache_hits"] += usage["cache_hits"]
                bucket["model_calls"] += calls
                bucket["seconds"] += usage["seconds"]
    return {"total": total, "per_model": dict(per_model)}


def run(cores: int = 2) -> dict:
    with tempfile.TemporaryDirectory(prefix="covip-rerun-bench-") as tmp:
        outdir = Path(tmp) / "out"
        cold = run_default(outdir, cores)
        cold_usage = usage_from_logs(outdir)
        for child in outdir.iterdir():
            if child.name != "cache":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        kept = sorted(str(p.relative_to(outdir)) for p in outdir.rglob("*") if p.is_file())
        warm = run_default(outdir, cores)
        warm_usage = usage_from_logs(outdir)
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
