"""The benchmarks the workflow runs through lmms-eval, read from `catalog.yaml` beside this module.

A checked table instead of lmms-eval's own task registry: indexing lmms-eval's tasks takes about 15 s
and importing it about 25 s, too slow for `snakemake -n`. tests/harness/test_catalog.py checks each
entry against the installed lmms-eval (its task folder exists and names the task).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

SOURCES = ("lmms_eval", "covip")
DATA_KINDS = ("built", "hub")
PER_SAMPLE = ("value", "muirbench")
TASKS_FOLDER = "tasks"


class UnknownBenchmarkError(ValueError):
    """A benchmark name the catalog does not list."""


@dataclass(frozen=True)
class Benchmark:
    name: str
    label: str
    task: str
    source: str
    task_dir: str
    data: dict[str, Any]
    metric: str
    per_sample: str
    stand_in: bool
    text_only: bool
    licence: str
    size: str
    paper: str | None = None
    data_files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        where = f"harness catalog entry '{self.name}'"
        if self.source not in SOURCES:
            raise ValueError(f"{where}: source must be one of {SOURCES}, got {self.source!r}")
        if self.data.get("kind") not in DATA_KINDS:
            raise ValueError(f"{where}: data.kind must be one of {DATA_KINDS}, got {self.data.get('kind')!r}")
        if self.data["kind"] == "hub" and not self.data.get("repo_id"):
            raise ValueError(f"{where}: a hub dataset needs data.repo_id")
        if self.per_sample not in PER_SAMPLE:
            raise ValueError(f"{where}: per_sample must be one of {PER_SAMPLE}, got {self.per_sample!r}")

    @property
    def data_name(self) -> str:
        """The dataset this benchmark reads (several benchmarks may share one, e.g. the tiny variants)."""
        return self.data["name"]

    @property
    def from_hub(self) -> bool:
        return self.data["kind"] == "hub"

    def task_folder(self) -> Path:
        """The folder of the task definition: lmms-eval's own, or ours under covip/harness/tasks."""
        if self.source == "covip":
            return Path(str(resources.files("covip.harness"))) / TASKS_FOLDER / self.task_dir
        import importlib.util

        spec = importlib.util.find_spec("lmms_eval")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError("lmms-eval is not installed (it is a dependency of covip: pip install -e .)")
        return Path(list(spec.submodule_search_locations)[0]) / "tasks" / self.task_dir


@cache
def catalog() -> dict[str, Benchmark]:
    text = resources.files("covip.harness").joinpath("catalog.yaml").read_text(encoding="utf-8")
    entries = yaml.safe_load(text)
    return {name: Benchmark(name=name, **entry) for name, entry in entries.items()}


def benchmark(name: str, where: str = "benchmark") -> Benchmark:
    """The catalog entry `name`; an unknown name fails naming the known ones."""
    known = catalog()
    if name not in known:
        raise UnknownBenchmarkError(f"{where}: unknown benchmark '{name}'; the harness knows {sorted(known)} "
                                    "(covip/harness/catalog.yaml)")
    return known[name]


def benchmark_names() -> list[str]:
    return sorted(catalog())
