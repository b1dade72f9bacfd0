"""Run the CPU benchmarks and record their numbers with the machine and the date.

    python -m benchmarks [--only judge,dag,rerun,memory,embedded,dedup,tokens] [--quick] [--out FILE]
    python benchmarks/run.py ...   (the same)

Writes a JSON file under benchmarks/results/ (machine: CPU model, cores, RAM, load; date; Python and
package versions; every number) and prints Markdown tables for BENCHMARKS.md. `--quick` shrinks
every size so the whole run takes a few minutes (for checking the harness, not for the record).
Benchmarks report; nothing here fails on a slow number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/run.py` puts benchmarks/ first, not the root
    sys.path.insert(0, str(ROOT))
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

ALL = ("judge", "dag", "rerun", "memory")
# the cold embedded default run (also part of 'rerun'); cross-job dedup; the plan's token counts against
# a real tokenizer (also `python -m benchmarks.plan_tokens`)
OPTIONAL = ("embedded", "dedup", "tokens")

FULL = {
    "judge": {"latencies": [0.2, 2.0], "n_samples": 1300, "authors_samples": 60, "server_ceiling_requests": 20000},
    "dag": {"repeats": 3},
    "memory": {"sizes": [1000, 4000]},
}
QUICK = {
    "judge": {"latencies": [0.2, 2.0], "n_samples": 60, "authors_samples": 4, "server_ceiling_requests": 2000},
    "dag": {"repeats": 1},
    "memory": {"sizes": [120, 360]},
}


def machine() -> dict:
    """CPU model, cores, RAM, load and versions: what a number means depends on them."""
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("snakemake", "openai", "httpx2", "pyarrow", "numpy", "torch", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    try:
        gpu = bool(__import__("torch").cuda.is_available())
    except ImportError:
        gpu = False
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1_5_15": list(os.getloadavg()),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "gpu": gpu,
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(ALL),
                        help=f"comma-separated benchmarks among {', '.join(ALL + OPTIONAL)} (default: {','.join(ALL)})")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the harness in a few minutes")
    parser.add_argument("--cores", type=int, default=2, help="Snakemake --cores for rerun, memory, embedded")
    parser.add_argument("--concurrency", type=int, help="judge concurrency (default: the paper config's judge entry)")
    parser.add_argument("--out", help="results JSON (default: benchmarks/results/<UTC time>[-quick].json)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(ALL + OPTIONAL))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(ALL + OPTIONAL)}")
    sizes = QUICK if args.quick else FULL
    started = datetime.now(timezone.utc)
    record: dict = {"date": started.isoformat(timespec="seconds"), "quick": args.quick, "machine": machine(),
                    "results": {}, "seconds": {}}
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        started.strftime("%Y%m%dT%H%M%SZ") + ("-quick" if args.quick else "") + ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = []
    for name in chosen:
        began = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        if name == "judge":
            from benchmarks import judge_throughput as bench

            def keep_partial(partial):
                record["results"]["judge"] = {**partial, "partial": True}
                out.write_text(json.dumps(record, indent=1, default=str))

            result = bench.run(concurrency=args.concurrency, on_partial=keep_partial, **sizes["judge"])
        elif name == "dag":
            from benchmarks import dag_overhead as bench

            result = bench.run(**sizes["dag"])
        elif name == "rerun":
            from benchmarks import cached_rerun as bench

            result = bench.run(args.cores)
        elif name == "memory":
            from benchmarks import memory as bench

            result = bench.run(cores=args.cores, **sizes["memory"])
        elif name == "dedup":
            from benchmarks import cross_job_dedup as bench

            result = bench.run(**({"per_job": 30} if args.quick else {}))
        elif name == "tokens":
            from benchmarks import plan_tokens as bench

            result = bench.run()
        else:
            import tempfile

            from benchmarks import embedded_default as bench

            with tempfile.TemporaryDirectory(prefix="covip-bench-") as tmp:
                result = bench.run_default(Path(tmp) / "out", args.cores)
        record["results"][name] = result
        record["seconds"][name] = time.perf_counter() - began
        sections.append(f"### {name}\n\n{bench.markdown(result)}\n")
        out.write_text(json.dumps(record, indent=1, default=str))  # after each benchmark: a crash keeps the rest
    m = record["machine"]
    print(f"{record['date']} | {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, load {m['load_avg_1_5_15'][0]:.1f} "
          f"| GPU: {'yes' if m['gpu'] else 'none'} | {'QUICK sizes' if args.quick else 'full sizes'}\n")
    print("\n".join(sections))
    print(f"results: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
