"""Time GSPO steps of the tiny random Qwen-VL on CPU (TRL generation + loss + optimiser), per preset.

    python benchmarks/gspo_cpu.py [--steps 20] [--architecture qwen2_5_vl]

A toy reward (share of completion tokens from a chosen half of the vocabulary) on 16 one-image
prompts, 2 prompts x 4 rollouts per step, 8 new tokens, LoRA r=8 + lm_head. Prints seconds per
optimiser step, the reward of the first and last 5 generation steps and the clip ratio per preset.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import TrainerCallback

from covip.local.tiny_vlm import build_tiny_vlm
from covip.training.settings import TrainingSettings
from covip.training.trainer import build_trainer

TARGET = set(range(300, 812))


def toy_reward(prompts, completions, completion_ids, **_):
    return [sum(t in TARGET for t in ids) / max(len(ids), 1) for ids in completion_ids]


def records(n: int = 16) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"prompt": [{"role": "user", "content": [{"type": "image", "text": None},
                                                       {"type": "text", "text": "Describe the photo" + " please" * (i % 3)}]}],
             "images": [Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8))],
             "task": "toy", "truth": "{}", "sample_id": str(i)} for i in range(n)]


class Logs(TrainerCallback):
    def __init__(self):
        self.rows = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.rows.append(logs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--architecture", default="qwen2_5_vl")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = str(build_tiny_vlm(Path(tmp) / "tiny", architecture=args.architecture, seed=0))
        for preset in ("authors", "clip-active"):
            settings = TrainingSettings(base_model=base, preset=preset, max_steps=args.steps, num_generations=4,
                                        per_device_train_batch_size=8, max_completion_length=8, learning_rate=3e-2, lora_r=8,
                                        lora_alpha=16, lora_dropout=0.0, modules_to_save=["lm_head"],
                                        gradient_checkpointing=False, save_steps=10_000)
            logs = Logs()
            trainer = build_trainer(settings, records(), [toy_reward], Path(tmp) / preset, seed=0, callbacks=[logs])
            start = time.perf_counter()
            trainer.train()
            wall = time.perf_counter() - start
            rewards = [r["reward"] for r in logs.rows if "reward" in r]
            clip = [round(r.get("clip_ratio/region_mean", 0.0), 3) for r in logs.rows]
            print(f"| {preset} | {args.steps} | {wall / args.steps:.2f} | {np.mean(rewards[:5]):.3f} | "
                  f"{np.mean(rewards[-5:]):.3f} | max {max(clip):.3f}, mean {np.mean(clip):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
