"""GSPO under two ranks: `accelerate launch --multi_gpu --num_processes 2` with no GPU visible, so the two
processes train on the CPU over gloo (`accelerate launch --cpu` would start one process only), the tiny
random VLM, two optimiser steps, through the real `covip train` entry point.

What it pins: rank 0 alone prepares the checkpoint folder behind a barrier (a foreign configuration's
checkpoint is cleared once, not by every rank at once, and not resumed); the records are streamed
to one Arrow file with the images still encoded and both ranks train from it; rank 0 alone writes the
training log and the merged model; the other rank logs no INFO lines; each rank writes its judge
usage; and the checkpoints are gone at the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from covip.core import schemas
from covip.core.io import write_artifact
from covip.local.tiny_vlm import build_tiny_vlm

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_two_ranks_on_cpu(benchmark_splits, tmp_path):
    if shutil.which("accelerate") is None:
        pytest.skip("the accelerate command is not installed")
    train_rows, _ = benchmark_splits
    write_artifact(train_rows[:4], tmp_path / "train.parquet", schemas.SPLIT)
    model = build_tiny_vlm(tmp_path / "tiny", architecture="qwen2_5_vl", seed=0)
    run = {"base_model": str(model), "max_samples": 4, "max_steps": 2, "num_generations": 2, "per_device_train_batch_size": 2,
           "max_completion_length": 8, "learning_rate": 1e-3, "lora_r": 8, "lora_alpha": 16,
           "modules_to_save": ["lm_head"], "gradient_checkpointing": False, "save_steps": 1, "preset": "authors",
           "bf16": False, "use_vllm": False}
    config = {"training": {"judge": "lexical_judge", "runs": {"r": run}},
              "models": {"lexical_judge": {"backend": "local_lexical_judge", "model": "lexical-v1"}},
              "seed": 7, "outdir": str(tmp_path / "out")}
    checkpoints = tmp_path / "out" / "ckpt"
    foreign = checkpoints / "checkpoint-9"  # another configuration's: cleared once by rank 0, never resumed
    foreign.mkdir(parents=True)
    (checkpoints / "resume_key.json").write_text(json.dumps({"key": "someone-else"}))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", COVIP_LOG_LEVEL="INFO")
    command = [shutil.which("accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "covip", "train",
               "--config-json", json.dumps(config), "--run", "r", "--train", str(tmp_path / "train.parquet"),
               "--model-dir", str(tmp_path / "out" / "model"), "--log", str(tmp_path / "out" / "log.parquet"),
               "--checkpoints", str(checkpoints)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]

    log = pq.read_table(tmp_path / "out" / "log.parquet").to_pandas()
    assert log["step"].tolist() == [1, 2]  # one writer: no row twice
    assert log["judge_calls"].notna().any()
    assert (tmp_path / "out" / "model" / "config.json").is_file()
    assert not checkpoints.exists()  # rank 0 removed them once the model was saved
    assert output.count("clearing ") == 1  # the foreign checkpoint folder was cleared by one rank
    assert "resuming run" not in output
    assert output.count("training records in") == 1  # rank 0 streamed the records once
    assert output.count("training run r finished") == 1  # rank 1 logs warnings only
    assert "world size 2 (gloo)" in output  # really two processes, on the CPU
    usage = sorted(p.name for p in (tmp_path / "out" / "usage" / "training").glob("*.parquet"))
    assert usage == ["r.parquet", "r.rank1.parquet"]
