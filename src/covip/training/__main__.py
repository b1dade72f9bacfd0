"""Command line of the training stage; rule train_gspo runs it (under `accelerate launch` on N GPUs).

    python -m covip.training --config-json CONFIG.json --run NAME --train TRAIN.parquet \
        --model-dir OUT/model --log OUT/log.parquet --checkpoints OUT/checkpoints

CONFIG.json holds the run's config (the `training`, `models`, `prompts`, `seed`, `outdir` keys are
read); the judge is built from the models registry with the shared response cache.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from covip import schemas
from covip.clients.registry import ModelRegistry
from covip.io import read_rows
from covip.prompts import PromptBook
from covip.settings import settings_from
from covip.training.settings import TrainingSettings
from covip.training.trainer import train_policy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m covip.training", description=__doc__.splitlines()[0])
    parser.add_argument("--config-json", required=True, help="JSON text or a path to a JSON file with the run's config")
    parser.add_argument("--run", required=True)
    parser.add_argument("--train", required=True, help="train split Parquet (schemas.SPLIT)")
    parser.add_argument("--model-dir", required=True, help="where the merged policy is saved")
    parser.add_argument("--log", required=True, help="training log Parquet (schemas.TRAINING_LOG)")
    parser.add_argument("--checkpoints", required=True, help="checkpoint folder (kept across reruns, for resume)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    logging.basicConfig(level=os.environ.get("COVIP_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    text = args.config_json
    config = json.loads(open(text, encoding="utf-8").read() if os.path.isfile(text) else text)
    settings = settings_from(TrainingSettings, config.get("training"), "config 'training'").for_run(args.run)
    prompts = PromptBook(config.get("prompts") or {})
    judge = None
    if settings.judge and any(t in ("caption", "joint") for t in settings.tasks()):
        cache = (config.get("cache") or {}).get("path") or f"{config['outdir']}/cache/responses.sqlite"
        judge = ModelRegistry(config.get("models", {}), cache_path=cache).chat(settings.judge)
    rows = read_rows(args.train, schemas.SPLIT)
    summary = train_policy(args.run, settings, rows, model_dir=args.model_dir, log_path=args.log,
                           checkpoint_dir=args.checkpoints, seed=int(config.get("seed", 0)), judge=judge, prompts=prompts)
    logging.getLogger("covip.training").info("training run %s finished in %.1f s: %s", args.run,
                                             time.perf_counter() - started, json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
