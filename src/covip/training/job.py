"""One GSPO training run as a job: the train split and the run's config in, a merged policy and a log out.

Rule train_gspo runs it as `python -m covip train ...` (under `accelerate launch` on several GPUs);
`config` holds the run's `training`, `models`, `prompts`, `seed`, `outdir` and `cache` keys, nothing
else, so editing another run or model does not retrain this one. The caption reward's judge is built
from the models registry with the shared response cache, as CapEval-QA builds it. The train split is
streamed from its file (a row group at a time), never held whole; under several ranks only rank 0
logs at INFO (the others log warnings and errors only).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Mapping

from covip.clients.registry import ModelRegistry, served_from_env
from covip.core import schemas
from covip.clients.usage import usage_rows
from covip.core.io import iter_rows, write_artifact
from covip.core.settings import settings_from
from covip.prompts import PromptBook
from covip.training.settings import TrainingSettings
from covip.training.trainer import train_policy


class SplitRows:
    """The rows of a split file, streamed a row group at a time; iterable as often as needed."""

    def __init__(self, path: str):
        self.path = path

    def __iter__(self):
        for batch in iter_rows(self.path, schemas.SPLIT):
            yield from batch


def write_judge_usage(registry: ModelRegistry, config: Mapping, run: str) -> None:
    """The caption reward judge's usage to <outdir>/usage/training/<run>.parquet (rank k > 0: .rank<k>),
    as every other job writes its own, so the report and `covip plan`'s comparison count training too."""
    rank = int(os.environ.get("RANK", "0"))
    rows = usage_rows(registry._built, config.get("prices") or {}, job=f"training/{run}", rule="train_gspo")
    path = f"{config['outdir']}/usage/training/{run}" + (f".rank{rank}" if rank else "") + ".parquet"
    try:
        write_artifact(rows, path, schemas.USAGE)
    except OSError as error:  # never hide the training outcome behind a usage file
        logging.getLogger("covip.training").warning("could not write usage to %s: %s", path, error)


def run_training_job(config: Mapping, run: str, *, train: str, model_dir: str, log: str, checkpoints: str) -> dict:
    """Train run `run` on the train split at `train`; returns the trainer's summary."""
    started = time.perf_counter()
    main = os.environ.get("RANK", "0") == "0"  # set by accelerate launch / torchrun on every process
    level = os.environ.get("COVIP_LOG_LEVEL", "INFO") if main else "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr,
                        force=True)
    settings = settings_from(TrainingSettings, config.get("training"), "config 'training'").for_run(run)
    prompts = PromptBook(config.get("prompts") or {})
    judge, registry = None, None
    if settings.judge and any(task in ("caption", "joint") for task in settings.tasks()):
        cache = (config.get("cache") or {}).get("path") or f"{config['outdir']}/cache/responses.sqlite"
        # A served judge was started by `covip gpu-run` for this job, which passes its address on.
        registry = ModelRegistry(config.get("models", {}), cache_path=cache, served=served_from_env(),
                                 job=f"training/{run}", rule="train_gspo")  # named in its journal, if killed
        judge = registry.chat(settings.judge)
    try:
        summary = train_policy(run, settings, SplitRows(train), model_dir=model_dir, log_path=log, checkpoint_dir=checkpoints,
                               seed=int(config.get("seed", 0)), judge=judge, prompts=prompts)
    finally:
        if registry is not None:
            write_judge_usage(registry, config, run)
            registry.close()
    logging.getLogger("covip.training").info("training run %s finished in %.1f s: %s", run,
                                             time.perf_counter() - started, json.dumps(summary))
    return summary
