"""Run one benchmark on one model through lmms-eval, in this process, offline.

`run_benchmark` lays out the task (covip.harness.tasks), builds the lmms-eval model
(covip.harness.models), calls `lmms_eval.evaluator.simple_evaluate` with per-sample logging, and returns
the harness's own aggregate, its per-sample records and the versions it reports. The hub is never
asked: HF_HUB_OFFLINE and HF_DATASETS_OFFLINE are set before lmms-eval is imported, and the task reads
the local data a download rule (or the tiny benchmark's builder) prepared.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.harness.catalog import Benchmark
from covip.harness.models import HarnessModel
from covip.harness.tasks import stage_task

DATA_VARIABLE = "COVIP_BENCHMARK_DATA"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@dataclass
class HarnessRun:
    """What lmms-eval returned for one task: its aggregate metrics, per-sample records and versions."""

    task: str
    metrics: dict[str, Any]  # lmms-eval's results[task]: 'metric,filter' -> value
    samples: list[dict[str, Any]] = field(default_factory=list)
    task_version: str = ""
    harness_version: str = ""
    n_samples: int = 0


def lmms_eval_version() -> str:
    from importlib.metadata import version

    return version("lmms_eval")


def build_model(model: HarnessModel):
    """The lmms-eval model object (constructed directly: `simple_evaluate` only takes string args)."""
    from lmms_eval import models

    return models.get_model(model.name)(**model.args)


def run_benchmark(benchmark: Benchmark, model: HarnessModel, data_dir: str | Path, *, limit: int | None = None,
                  seed: int = 0, workdir: str | Path | None = None, lm=None) -> HarnessRun:
    """Evaluate `model` on `benchmark` with lmms-eval; `lm` reuses an already built lmms-eval model."""
    os.environ.update(OFFLINE)
    os.environ[DATA_VARIABLE] = str(Path(data_dir).resolve())  # our tasks resolve relative image paths here
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="covip-lmms-eval-", dir=workdir) as scratch:
        folder = stage_task(benchmark, data_dir, scratch)
        manager = TaskManager("WARNING", include_path=[str(folder)], include_defaults=False)
        lm = lm if lm is not None else build_model(model)
        results = simple_evaluate(
            model=lm, tasks=[benchmark.task], task_manager=manager, log_samples=True, limit=limit,
            bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
            fewshot_random_seed=seed, verbosity="WARNING", process_docs_parallel=1,
        )
    if results is None:  # lmms-eval returns None on non-zero ranks only
        raise RuntimeError("lmms-eval returned no results (more than one process?)")
    task = benchmark.task
    return HarnessRun(
        task=task,
        metrics=dict(results["results"].get(task, {})),
        samples=list(results.get("samples", {}).get(task, [])),
        task_version=str(results.get("versions", {}).get(task, "")),
        harness_version=lmms_eval_version(),  # its results' own field is the git state of the working directory
        n_samples=int((results.get("n-samples", {}).get(task) or {}).get("effective", 0)),
    )
