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
    args = parser.parse_args()
    outdir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="covip-bench-"))
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", str(args.cores), "--config", f"outdir={outdir}", "--quiet", "all"],
        cwd=ROOT, check=True,
    )
    total = time.perf_counter() - start
    rows = []
    for tsv in sorted((outdir / "benchmarks").glob("*.tsv")):
        with open(tsv) as handle:
            record = next(csv.DictReader(handle, delimiter="\t"))
        rows.append((tsv.stem, float(record["s"]), record["max_rss"]))
    print(f"Embedded default, cold run, --cores {args.cores}: {total:.1f} s wall "
          f"({date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible)")
    print()
    print("| rule | wall s | peak RSS MB |")
    print("|---|---:|---:|")
    for rule, seconds, rss in sorted(rows, key=lambda r: -r[1]):
        print(f"| {rule} | {seconds:.1f} | {rss} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
