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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--keep", help="output folder to keep (default: a temporary one)")
    parser.add_argument("--rebuild-tiny-vlm", action="store_true",
                        help="delete the tiny VLM (resources/, shared across runs) first, for a truly cold run")
    args = parser.parse_args()
    outdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="covip-bench-"))
    if args.rebuild_tiny_vlm:
        import shutil

        import yaml

        tiny = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["tiny_vlm"]["path"]
        shutil.rmtree(ROOT / tiny, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--config", f"outdir={outdir}", "--quiet", "all"],
        cwd=ROOT, check=True,
    )
    total = time.perf_counter() - start
    rows = []
    for tsv in sorted((outdir / "benchmarks").rglob("*.tsv")):
        with open(tsv) as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        name = str(tsv.relative_to(outdir / "benchmarks").with_suffix(""))
        rows.append((name, float(record["s"]), record["max_rss"]))
    print(f"Embedded default, cold run, --cores {args.cores}: {total:.1f} s wall "
          f"({date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible)")
    print()
    print("| job | wall s | peak RSS MB |")
    print("|---|---:|---:|")
    for rule, seconds, rss in sorted(rows, key=lambda r: -r[1]):
        print(f"| {rule} | {seconds:.1f} | {rss} |")
    print(f"| sum over jobs | {sum(r[1] for r in rows):.1f} | |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
