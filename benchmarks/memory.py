"""Benchmark 4: peak memory of each CPU stage as the number of samples grows.

The embedded default's own generators make the data (builtin concept pool, local compositor at the
default 320 px query size unless `image_size` says otherwise), at each sample count in turn; the
workflow then runs every CPU stage on it (synthesis, filtering with the pixel verifier, embeddings,
hard negatives, dialogues and MCQAs with the facts-first writer, splits, captioning by the oracle and
context-dump reference policies, CapEval-QA with the lexical judge, one diagnostic set). Each job is
its own process; its peak RSS is the `max_rss` of the Snakemake `benchmark:` file every rule writes.
A stage that streams its tables keeps a flat peak; one that loads a whole table grows with samples.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ["oracle", "context_dump"]
_PEAK = re.compile(r"finished in [\d.]+ s, peak RSS (\d+) MB")


def _same_job(benchmark_name: str, log_name: str) -> bool:
    """Benchmark files and logs name a job alike up to separators ('capeval/oracle.lexical_judge'
    vs 'capeval/oracle/lexical_judge')."""
    return benchmark_name.replace("/", ".") == log_name.replace("/", ".")


def _run(command: list[str], cwd: Path, env: dict, log) -> None:
    """Run Snakemake with its output in `log`; on failure, raise with the log's tail."""
    done = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=7200)
    if done.returncode != 0:
        log.flush()
        tail = Path(log.name).read_text(errors="replace")[-4000:]
        raise RuntimeError(f"snakemake failed ({done.returncode}):\n{tail}")


def run_size(n_samples: int, image_size: int, cores: int, workdir: Path) -> dict:
    outdir = workdir / f"n{n_samples}"
    overlay = workdir / f"overlay-{n_samples}.yaml"
    overlay.write_text(yaml.safe_dump({
        "outdir": str(outdir),
        "synthesis": {"num_samples": n_samples, "image_size": image_size},
        "evaluation": {"policies": POLICIES},
        "controls": {"conditions": ["intact"]},
    }))
    targets = [f"{outdir}/splits/test.parquet", f"{outdir}/diagnostics/sets/lsd.parquet"]
    targets += [f"{outdir}/capeval/intact/{policy}/lexical_judge/summary.parquet" for policy in POLICIES]
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    with open(workdir / f"snakemake-{n_samples}.log", "w") as log:
        _run(
            [sys.executable, "-m", "snakemake", "--cores", str(cores), "--quiet", "--configfile", "config/config.yaml",
             str(overlay), "--", *targets],
            cwd=ROOT, env=env, log=log)
    wall = time.perf_counter() - start
    jobs = {}
    for tsv in sorted((outdir / "benchmarks").rglob("*.tsv")):
        with open(tsv) as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        jobs[str(tsv.relative_to(outdir / "benchmarks").with_suffix(""))] = {
            "s": float(record["s"]), "max_rss_mb": float(record["max_rss"])
        }
    # The exact peak each job logs on exit (covip.workflow.run.StageRun); Snakemake's own max_rss is
    # sampled every 30 s after a job's first 15 s, so it misses short peaks of long jobs.
    for log_file in sorted((outdir / "logs").rglob("*.log")):
        match = _PEAK.search(log_file.read_text(errors="replace"))
        name = str(log_file.relative_to(outdir / "logs").with_suffix(""))
        for job in jobs:
            if match and _same_job(job, name):
                jobs[job]["peak_rss_mb"] = float(match[1])
    sizes = {name: (outdir / name).stat().st_size / 1e6 for name in
             ("queries/queries.parquet", "splits/train.parquet", "splits/test.parquet") if (outdir / name).exists()}
    return {"wall_s": wall, "jobs": jobs, "artifact_mb": sizes}


def run(sizes: list[int], image_size: int = 320, cores: int = 2, keep: str | None = None) -> dict:
    with tempfile.TemporaryDirectory(prefix="covip-memory-bench-") as tmp:
        workdir = Path(keep) if keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results = {str(n): run_size(n, image_size, cores, workdir) for n in sizes}
    return {"sizes": sizes, "image_size": image_size, "cores": cores, "runs": results}


def markdown(result: dict) -> str:
    sizes = [str(n) for n in result["sizes"]]
    small, large = sizes[0], sizes[-1]
    lines = [
        f"Query images {result['image_size']} px; Parquet sizes: "
        + "; ".join(f"{n} samples: " + ", ".join(f"{k} {v:.0f} MB" for k, v in result["runs"][n]["artifact_mb"].items())
                    for n in sizes),
        "",
        "Peak RSS: the job's own getrusage peak (logged on exit); in brackets Snakemake's sampled max_rss.",
        "",
        "| job | " + " | ".join(f"peak RSS MB @ {n}" for n in sizes) + f" | ratio {large}/{small} | "
        + " | ".join(f"wall s @ {n}" for n in sizes) + " |",
        "|---|" + "---:|" * (2 * len(sizes) + 1),
    ]
    jobs = sorted(set().union(*(result["runs"][n]["jobs"] for n in sizes)))
    for job in jobs:
        rss = [result["runs"][n]["jobs"].get(job, {}).get("peak_rss_mb") for n in sizes]
        sampled = [result["runs"][n]["jobs"].get(job, {}).get("max_rss_mb") for n in sizes]
        secs = [result["runs"][n]["jobs"].get(job, {}).get("s") for n in sizes]
        ratio = f"{rss[-1] / rss[0]:.2f}" if rss[0] and rss[-1] else "n/a"
        cells = [("n/a" if v is None else f"{v:.0f}") + ("" if w is None else f" [{w:.0f}]") for v, w in zip(rss, sampled)]
        lines.append(f"| {job} | " + " | ".join(cells) + f" | {ratio} | "
                     + " | ".join("n/a" if v is None else f"{v:.1f}" for v in secs) + " |")
    return "\n".join(lines)
