"""One policy on one general benchmark: run lmms-eval (covip.harness) and turn what it returns into our
tables, the harness's aggregate (schemas.GENERAL_SCORES) and its per-sample records
(schemas.GENERAL_SAMPLES). Per-sample records first, aggregate second; the aggregate we report is the
harness's own, and a per-sample mean that disagrees with it is logged."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from covip.clients.spec import ModelSpec
from covip.harness.catalog import Benchmark
from covip.harness.models import HarnessModel, harness_model
from covip.stages.general.settings import GeneralSettings

log = logging.getLogger("covip.general")


def sample_score(benchmark: Benchmark, sample: Mapping[str, Any]) -> float | None:
    """A sample's score in [0, 1] from lmms-eval's per-sample record (None when it has none)."""
    value = sample.get(benchmark.metric)
    if benchmark.per_sample == "muirbench":  # MuirBench's aggregation: pred == answer, case-folded
        if not isinstance(value, Mapping):
            return None
        return float(str(value.get("pred", "")).lower().strip() == str(value.get("answer", "")).lower().strip())
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(float(value)):
        return float(value)
    return None


def harness_metric(benchmark: Benchmark, metrics: Mapping[str, Any]) -> float | None:
    """The benchmark's metric from lmms-eval's results ('metric,filter' keys), as a fraction."""
    for key, value in metrics.items():
        if key.split(",")[0] == benchmark.metric and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _first(value) -> str:
    while isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    return "" if value is None else str(value)


def sample_rows(benchmark: Benchmark, policy: str, samples: list[Mapping[str, Any]]) -> list[dict]:
    return [{
        "policy": policy, "benchmark": benchmark.name, "doc_id": str(s.get("doc_id")), "target": _first(s.get("target")),
        "response": _first(s.get("resps")), "filtered": _first(s.get("filtered_resps")),
        "score": sample_score(benchmark, s), "doc_hash": s.get("doc_hash"),
    } for s in samples]


def score_rows(benchmark: Benchmark, policy: str, metrics: Mapping[str, Any], samples: list[dict],
               provenance: Mapping[str, Any]) -> list[dict]:
    """The harness's aggregate in percent (fallback: the per-sample mean, when lmms-eval gave none)."""
    value = harness_metric(benchmark, metrics)
    scored = [row["score"] for row in samples if row["score"] is not None]
    mean = sum(scored) / len(scored) if scored else None
    if value is not None and mean is not None and abs(value - mean) > 1e-9:
        log.warning("%s/%s: lmms-eval's %s is %.4f but the per-sample mean is %.4f", policy, benchmark.name,
                    benchmark.metric, value, mean)
    value = mean if value is None else value
    return [{"policy": policy, "benchmark": benchmark.name, "metric": benchmark.metric,
             "value": None if value is None else 100.0 * value, "n": len(samples), **provenance}]


def evaluate_general(benchmark: Benchmark, policy: str, spec: ModelSpec, data_dir: str, settings: GeneralSettings,
                     seed: int, *, model_type: str | None = None, base_url: str | None = None,
                     workdir: str | None = None, model: HarnessModel | None = None) -> tuple[list[dict], list[dict]]:
    """Run `benchmark` on registry entry `spec` through lmms-eval; (score rows, sample rows).

    `base_url` set: a policy the workflow serves, reached as an OpenAI-compatible endpoint."""
    from covip.harness.runner import run_benchmark

    model = model or harness_model(spec, model_type=model_type, base_url=base_url, batch_size=settings.batch_size,
                                   extra=settings.model_args.get(policy))
    log.info("%s on %s: lmms-eval model %s (%s) %s", policy, benchmark.name, model.name, model.route, model.public_args())
    run = run_benchmark(benchmark, model, data_dir, limit=settings.limit, seed=seed, workdir=workdir)
    samples = sample_rows(benchmark, policy, run.samples)
    provenance = {"harness": f"lmms-eval {run.harness_version}", "task": run.task, "task_version": run.task_version,
                  "harness_model": model.name, "route": model.route, "model_identity": spec.identity,
                  "stand_in": bool(spec.is_stand_in or benchmark.stand_in)}
    return score_rows(benchmark, policy, run.metrics, samples, provenance), samples
