"""Benchmark 2: DAG overhead, the time `snakemake -n` takes on the paper-scale config.

`config/paper.yaml` (5,200 synthesized samples, every stage, 6 policies x 2 judges, 3 diagnostic
tasks x 2 modes) plus an overlay that points the concept manifest at an empty temporary CSV and the
output folder at a temporary directory, so the DAG is the paper's and nothing is written to the
checkout. The API keys are dummies: a dry run never runs `onstart` (where keys are checked) nor any
job, and the proxy variables point at a closed loopback port, so any attempt to reach a server would
fail rather than leave the machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


# The paper config as it ships, and with every API stage sharded (many jobs: the scale-out case).
VARIANTS = {
    "paper": {},
    "paper, 5 API stages sharded by 500": {
        "sharding": {"shard_size": 500,
                     "rules": ["synthesize_queries", "write_dialogues", "write_mcqas", "caption", "capeval"]},
    },
}


def run(repeats: int = 3) -> dict:
    with tempfile.TemporaryDirectory(prefix="covip-dag-bench-") as tmp:
        manifest = Path(tmp) / "manifest.csv"
        manifest.write_text("path,category\n", encoding="utf-8")
        env = {
            **os.environ,
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "OPENAI_API_KEY": "dummy-for-dry-run",
            "GEMINI_API_KEY": "dummy-for-dry-run",
            "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": "",
        }
        variants = {}
        for name, extra in VARIANTS.items():
            overlay = Path(tmp) / f"overlay-{len(variants)}.yaml"
            overlay.write_text(yaml.safe_dump({"outdir": f"{tmp}/out", "concept_pool": {"path": str(manifest)}, **extra}))
            command = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "reason", "host", "--cores", "1",
                       "--configfile", "config/paper.yaml", str(overlay), "--"]
            times, summary = [], ""
            for _ in range(repeats):
                start = time.perf_counter()
                done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
                times.append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise RuntimeError(f"dry run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                summary = done.stdout + done.stderr
            variants[name] = {"seconds": times, "median_s": statistics.median(times), "jobs": _job_count(summary),
                              "overlay": extra}
        floor = []
        for _ in range(repeats):  # interpreter + Snakemake import alone, for scale
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "snakemake", "--version"], cwd=ROOT, env=env, capture_output=True,
                           check=True, timeout=120)
            floor.append(time.perf_counter() - start)
        written = [p for p in Path(tmp, "out").rglob("*") if p.is_file()] if Path(tmp, "out").exists() else []
    paper = variants["paper"]
    return {"seconds": paper["seconds"], "median_s": paper["median_s"], "jobs": paper["jobs"], "variants": variants,
            "files_written": len(written), "snakemake_version_median_s": statistics.median(floor),
            "command": "snakemake -n --quiet rules reason host --cores 1 --configfile config/paper.yaml <overlay> --"}


def _job_count(text: str) -> int | None:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            return int(parts[1])
    return None


def markdown(result: dict) -> str:
    lines = ["| config | jobs | median s | runs s |", "|---|---:|---:|---|"]
    for name, variant in result.get("variants", {"paper": result}).items():
        runs = ", ".join(f"{s:.2f}" for s in variant["seconds"])
        lines.append(f"| {name} | {variant['jobs']} | {variant['median_s']:.2f} | {runs} |")
    lines += ["", f"`snakemake --version` alone: {result['snakemake_version_median_s']:.2f} s; files written: "
              f"{result['files_written']}; target (paper config) < 5 s: {'met' if result['median_s'] < 5 else 'NOT met'}."]
    return "\n".join(lines)
