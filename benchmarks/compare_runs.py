"""Do two runs of the workflow hold the same artifacts? Every Parquet file under each output folder is
compared, table by table, exactly, leaving out what measures time rather than content.

    python -m benchmarks.compare_runs OLD_RESULTS NEW_RESULTS [--json OUT.json]

Left out: the usage records (`usage/`, they count cache hits, which depend on what ran before), the
benchmarks and logs folders, the response cache, scratch shards, and the columns that hold
timings (`latency_s` of captions, `wall_s` of the training log). Exit code 0 when every table is
identical, 1 otherwise; the report lists each table's verdict and, for a difference, the columns
that differ and by how much.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SKIPPED_FOLDERS = ("usage", "benchmarks", "logs", "cache")
TIMING_COLUMNS = ("latency_s", "wall_s")


def artifacts(root: Path) -> dict[str, Path]:
    """Relative path -> file for every compared artifact under `root`."""
    found = {}
    for path in sorted(root.rglob("*.parquet")):
        relative = path.relative_to(root)
        if relative.parts[0] in SKIPPED_FOLDERS or any(part.endswith(".shards") for part in relative.parts):
            continue
        found[str(relative)] = path
    return found


def _without_timings(table: pa.Table) -> pa.Table:
    return table.drop_columns([c for c in TIMING_COLUMNS if c in table.column_names])


def compare_tables(old: pa.Table, new: pa.Table) -> dict:
    """'identical', or what differs: schema, row count, or the columns (with the largest numeric gap)."""
    old, new = _without_timings(old), _without_timings(new)
    if old.schema != new.schema:
        return {"verdict": "schema differs", "old": str(old.schema), "new": str(new.schema)}
    if old.num_rows != new.num_rows:
        return {"verdict": "row count differs", "old": old.num_rows, "new": new.num_rows}
    differing = {}
    for name in old.column_names:
        a, b = old.column(name), new.column(name)
        if a.equals(b):
            continue
        detail = {"rows": int(sum(x != y for x, y in zip(a.to_pylist(), b.to_pylist())))}
        if pa.types.is_floating(a.type):
            x, y = a.to_numpy(zero_copy_only=False).astype(float), b.to_numpy(zero_copy_only=False).astype(float)
            both = ~(np.isnan(x) | np.isnan(y))
            detail["max_abs_diff"] = float(np.max(np.abs(x[both] - y[both]))) if both.any() else None
        differing[name] = detail
    return {"verdict": "identical"} if not differing else {"verdict": "values differ", "columns": differing}


def compare_runs(old_root: Path, new_root: Path) -> dict:
    old, new = artifacts(old_root), artifacts(new_root)
    report = {"only_old": sorted(set(old) - set(new)), "only_new": sorted(set(new) - set(old)), "tables": {}}
    for name in sorted(set(old) & set(new)):
        report["tables"][name] = compare_tables(pq.read_table(old[name]), pq.read_table(new[name]))
    report["identical"] = (not report["only_old"] and not report["only_new"]
                           and all(t["verdict"] == "identical" for t in report["tables"].values()))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path)
    parser.add_argument("new", type=Path)
    parser.add_argument("--json", type=Path, help="also write the whole report here")
    args = parser.parse_args(argv)
    report = compare_runs(args.old, args.new)
    for name, verdict in report["tables"].items():
        print(f"{verdict['verdict']:>20}  {name}")
        if verdict["verdict"] != "identical":
            print(f"{'':>22}{json.dumps({k: v for k, v in verdict.items() if k != 'verdict'})[:600]}")
    for side in ("only_old", "only_new"):
        for name in report[side]:
            print(f"{side:>20}  {name}")
    same = sum(t["verdict"] == "identical" for t in report["tables"].values())
    print(f"{same} of {len(report['tables'])} tables identical (timings left out); "
          f"{len(report['only_old'])} only in {args.old}, {len(report['only_new'])} only in {args.new}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
