"""benchmarks/compare_runs.py: two output folders compared table by table, timings left out."""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from benchmarks.compare_runs import compare_runs  # noqa: E402


def write(root: Path, relative: str, columns: dict) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def test_identical_runs_differ_only_in_timings_and_usage(tmp_path):
    for name, latency in (("old", 0.5), ("new", 9.0)):
        write(tmp_path / name, "captions/intact/oracle.parquet", {"caption": ["a", "b"], "latency_s": [latency, latency]})
        write(tmp_path / name, f"usage/{name}.parquet", {"requests": [1]})  # left out
        write(tmp_path / name, "dialogues/dialogues.shards/0.parquet", {"x": [len(name)]})  # scratch: left out
    report = compare_runs(tmp_path / "old", tmp_path / "new")
    assert report["identical"] and list(report["tables"]) == ["captions/intact/oracle.parquet"]


def test_a_changed_value_a_changed_schema_and_a_missing_table_are_reported(tmp_path):
    write(tmp_path / "old", "a.parquet", {"score": [1.0, 2.0], "name": ["x", "y"]})
    write(tmp_path / "new", "a.parquet", {"score": [1.0, 2.5], "name": ["x", "y"]})
    write(tmp_path / "old", "b.parquet", {"n": pa.array([1], pa.int32())})
    write(tmp_path / "new", "b.parquet", {"n": pa.array([1], pa.int64())})
    write(tmp_path / "old", "c.parquet", {"n": [1]})
    report = compare_runs(tmp_path / "old", tmp_path / "new")
    assert not report["identical"]
    assert report["tables"]["a.parquet"] == {"verdict": "values differ",
                                             "columns": {"score": {"rows": 1, "max_abs_diff": 0.5}}}
    assert report["tables"]["b.parquet"]["verdict"] == "schema differs"
    assert report["only_old"] == ["c.parquet"]
