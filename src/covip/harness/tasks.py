"""Lay out one benchmark's lmms-eval task for a job, pointed at the job's local data.

lmms-eval reads a task from a YAML file in a folder it indexes. The job copies the task's folder (ours
or lmms-eval's own) into a scratch folder, renames the task's YAML so that it is not indexed itself,
and writes a YAML of the same task name that `include:`s it and only replaces where the data is: a
local folder or files, so the run never asks the hub. (lmms-eval's task-dict overrides would do the
same, but with a chat model it then builds the task as a plain one; checked with lmms-eval 0.7.3.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from covip.harness.catalog import Benchmark

BASE_SUFFIX = "_base"  # an included file without the .yaml suffix is not indexed as a task


def data_override(benchmark: Benchmark, data_dir: str | Path, cache_dir: str | Path) -> dict:
    """The task keys that point lmms-eval at the local data (and a private `datasets` cache)."""
    data_dir = Path(data_dir).resolve()
    kwargs: dict = {"cache_dir": str(Path(cache_dir).resolve())}
    if benchmark.data_files:
        files = {split: str(data_dir / pattern) for split, pattern in benchmark.data_files.items()}
        suffix = Path(next(iter(benchmark.data_files.values()))).suffix.lstrip(".")
        kind = {"jsonl": "json", "json": "json", "parquet": "parquet", "csv": "csv"}[suffix]
        return {"dataset_path": kind, "dataset_kwargs": {**kwargs, "data_files": files}}
    return {"dataset_path": str(data_dir), "dataset_kwargs": kwargs}


def stage_task(benchmark: Benchmark, data_dir: str | Path, workdir: str | Path) -> Path:
    """Write the job's task folder under `workdir` and return it (to index with include_defaults=False)."""
    source = benchmark.task_folder()
    target = Path(workdir) / "tasks" / benchmark.task_dir
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.glob("*.yaml"):  # the other tasks of a shared folder are not needed
        path.rename(path.with_name(path.stem + BASE_SUFFIX))
    defining = next((p for p in sorted(target.iterdir()) if p.name.endswith(BASE_SUFFIX) and _defines(p, benchmark.task)),
                    None)
    if defining is None:
        raise FileNotFoundError(f"no YAML in {source} defines the lmms-eval task '{benchmark.task}'")
    override = {"include": defining.name, "task": benchmark.task,
                **data_override(benchmark, data_dir, Path(workdir) / "datasets_cache")}
    (target / f"{benchmark.task}.yaml").write_text(yaml.safe_dump(override, sort_keys=False), encoding="utf-8")
    return target


def _defines(path: Path, task: str) -> bool:
    return any(line.strip() in (f"task: {task}", f'task: "{task}"', f"task: '{task}'")
               for line in path.read_text(encoding="utf-8").splitlines())
