"""Time the embedded offline default end to end, cold, and per stage (wall time and peak memory).

    python benchmarks/embedded_default.py [--cores 2] [--keep DIR]

Runs `snakemake --cores N` in a fresh output folder, then reads the per-rule `benchmark:` files that
every rule writes (`<outdir>/benchmarks/<rule>.tsv`) and prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_default(outdir: Path, cores: int = 2, quiet: bool = True) -> dict:
    """One `snakemake --cores N` run of the default config into `outdir`: wall time and per-job rows."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", str(cores), "--config", f"outdir={outdir}", "--quiet", "all"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
        timeout=3600, capture_output=quiet, text=True,
    )
    total = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"snakemake failed ({done.returncode}):\n{(done.stdout or '')[-3000:]}\n{(done.stderr or '')[-3000:]}")
    rows = []
    for tsv in sorted((Path(outdir) / "benchmarks").rglob("*.tsv")):
        with open(tsv) as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        name = str(tsv.relative_to(Path(outdir) / "benchmarks").with_suffix(""))
        rows.append({"job": name, "s": float(record["s"]), "max_rss_mb": record["max_rss"]})
    return {"wall_s": total, "cores": cores, "jobs": rows}


def markdown(result: dict) -> str:
    lines = [f"Embedded default, cold run, --cores {result['cores']}: {result['wall_s']:.1f} s wall", "",
             "| job | wall s | peak RSS MB |", "|---|---:|---:|"]
    for row in sorted(result["jobs"], key=lambda r: -r["s"]):
        lines.append(f"| {row['job']} | {row['s']:.1f} | {row['max_rss_mb']} |")
    lines.append(f"| sum over jobs | {sum(r['s'] for r in result['jobs']):.1f} | |")
    return "\n".join(lines)


def rebuild_tiny_vlm() -> None:
    """Delete the tiny VLM (resources/, shared across runs), for a truly cold run."""
    import shutil

    import yaml

    tiny = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["tiny_vlm"]["path"]
    shutil.rmtree(ROOT / tiny, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", help="output folder to keep (default: a temporary one)")
    parser.add_argument("--rebuild-tiny-vlm", action="store_true",
                        help="delete the tiny VLM (resources/, shared across runs) first, for a truly cold run")
    args = parser.parse_args()
    outdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="covip-bench-"))
    if args.rebuild_tiny_vlm:
        rebuild_tiny_vlm()
    result = run_default(outdir, args.cores, quiet=False)
    print(f"({date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible)")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
