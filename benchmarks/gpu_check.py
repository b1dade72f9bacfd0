"""The device check behind benchmarks/gpu_check.sh: one GPU, no network, under 8 minutes.

    python -m benchmarks.gpu_check [--allow-cpu] [--out DIR]

1. GPU slots against nvidia-smi: the pool covip.workflow.gpu_slots sees is the devices nvidia-smi and
   torch see; a job that takes a slot runs on that physical device (its memory shows up there in
   nvidia-smi) and is listed as its holder; a request bigger than the pool is refused.
2. The tiny random Qwen-VL, built offline, captions interleaved image-text requests through the
   `transformers` backend on CUDA in bfloat16 (the registry path every stage uses).
3. Four GSPO optimiser steps of it (TRL's GRPOTrainer, sequence-level ratio, LoRA + lm_head) in bf16
   on CUDA, with the trainer the workflow uses (`covip.training.trainer.build_trainer`).

Prints each step's seconds and a verdict; writes the numbers as JSON to --out (default
benchmarks/results/). Exit status 0 when every check passed, 1 when one failed, 2 when there is no
GPU and --allow-cpu was not given (with it, steps 2-3 run on the CPU in float32 and step 1 is skipped:
the code paths, not the device).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "src"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

HOLDER = "import os, sys, time, torch; x = torch.ones(64, 1024, 1024, device='cuda'); print(os.getpid(), flush=True); time.sleep(60)"


def nvidia_smi(*query: str) -> list[list[str]]:
    out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]


def check_gpu_slots(work: Path) -> dict:
    """The pool is nvidia-smi's devices; a slot's job really lands on its device; a too-big request fails."""
    import torch

    from covip.workflow.gpu_slots import GpuRequestError, acquire, device_pool, holders

    gpus = nvidia_smi("--query-gpu=index,uuid,memory.used")
    pool = device_pool()
    result = {"nvidia_smi_gpus": len(gpus), "pool": list(pool.devices), "pool_source": pool.source,
              "torch_devices": torch.cuda.device_count()}
    assert len(pool.devices) == torch.cuda.device_count(), f"pool {pool.devices} but torch sees {torch.cuda.device_count()}"
    if pool.source == "nvidia-smi":
        assert len(pool.devices) == len(gpus), f"pool {pool.devices} but nvidia-smi lists {len(gpus)} GPU(s)"
    locks = work / "locks"
    slots = acquire(1, "gpu_check", pool=pool, directory=locks, wait_s=10)
    device = slots.devices[0]
    try:
        assert "gpu_check" in (holders(locks, pool)[device] or ""), holders(locks, pool)
        # The slot's physical GPU: pool entries are nvidia-smi indices (or UUIDs in CUDA_VISIBLE_DEVICES).
        target = {row[0]: row for row in gpus}.get(device) or {row[1]: row for row in gpus}.get(device)
        before = int(target[2]) if target else None
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=slots.visible)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER], env=env, stdout=subprocess.PIPE, text=True)
        try:
            pid = int(holder.stdout.readline())
            time.sleep(2)
            apps = nvidia_smi("--query-compute-apps=pid,gpu_uuid,used_memory")
            on = [row[1] for row in apps if row[0] == str(pid)]
            after = {row[0]: int(row[2]) for row in nvidia_smi("--query-gpu=index,uuid,memory.used")}
            if on:  # nvidia-smi sees our pid (same pid namespace): it must be on the slot's GPU
                assert target is not None and on == [target[1]], f"slot {device} but the job runs on {on}"
                result["placement"] = f"pid {pid} on {on[0]} (slot {device})"
            else:  # a container may hide pids: the slot's GPU must have gained the job's ~256 MiB
                assert target is not None, f"cannot map slot {device} to a GPU of nvidia-smi: {gpus}"
                grown = after[target[0]] - before
                assert grown >= 200, f"slot {device}: its GPU's memory grew by {grown} MiB only"
                result["placement"] = f"GPU {target[0]} grew by {grown} MiB (slot {device}; pids hidden)"
        finally:
            holder.kill()
            holder.wait()
    finally:
        slots.release()
    try:
        acquire(len(pool.devices) + 1, "too_big", pool=pool, directory=locks, wait_s=1)
        raise AssertionError("a request bigger than the pool was not refused")
    except GpuRequestError as error:
        result["refused"] = str(error)[:120]
    return result


def build_model(work: Path) -> str:
    from covip.local.tiny_vlm import build_tiny_vlm

    return str(build_tiny_vlm(work / "tiny-vlm", seed=0))


def check_captioning(model: str, device: str) -> dict:
    """The registry's transformers backend captions 8 interleaved two-image requests on `device`."""
    import numpy as np
    import torch
    from PIL import Image

    from covip.clients.base import ChatRequest, ImagePart, Message, TextPart
    from covip.clients.registry import ModelRegistry
    from covip.core.io import encode_png

    dtype = "bfloat16" if device == "cuda" else "float32"
    registry = ModelRegistry({"tiny": {"backend": "transformers", "model": model, "device": device, "stand_in": True,
                                       "sampling": {"temperature": 0.0, "max_tokens": 24},
                                       "options": {"batch_size": 4, "dtype": dtype}}})
    rng = np.random.default_rng(0)
    images = [ImagePart(encode_png(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))) for _ in range(16)]
    requests = [ChatRequest((Message("user", (TextPart(f"Dialogue {i}: Ana saw Bo."), images[2 * i], TextPart("New photo:"),
                                               images[2 * i + 1], TextPart("Describe it, reusing names."))),), {}, seed=i)
                for i in range(8)]
    began = time.perf_counter()
    chat = registry.chat("tiny")
    answers = chat.complete_many(requests, progress_file=open(os.devnull, "w"))
    wall = time.perf_counter() - began
    model_obj = chat.inner.model
    failed = [a.error for a in answers if not a.ok]
    assert not failed, failed
    assert all(a.usage.completion_tokens > 0 for a in answers)
    parameter = next(model_obj.parameters())
    assert parameter.device.type == device, parameter.device
    if device == "cuda":
        assert parameter.dtype == torch.bfloat16, parameter.dtype
    return {"requests": len(answers), "seconds_with_load": round(wall, 2), "dtype": str(parameter.dtype),
            "device": str(parameter.device), "completion_tokens": sum(a.usage.completion_tokens for a in answers)}


def check_gspo(model: str, device: str, work: Path) -> dict:
    """Four GSPO optimiser steps (bf16 on CUDA), through the workflow's trainer."""
    import math

    import torch

    from benchmarks.gspo_cpu import Logs, records, toy_reward
    from covip.training.settings import TrainingSettings
    from covip.training.trainer import build_trainer

    cuda = device == "cuda"
    settings = TrainingSettings(base_model=model, max_steps=4, num_generations=2, prompts_per_device=2,
                                max_completion_length=16, learning_rate=1e-3, lora_r=8, lora_alpha=16, lora_dropout=0.0,
                                modules_to_save=["lm_head"], gradient_checkpointing=False, save_steps=10_000,
                                bf16=cuda, use_vllm=False)
    logs = Logs()
    trainer = build_trainer(settings, records(8), [toy_reward], work / "gspo", seed=0, callbacks=[logs])
    assert trainer.args.bf16 == cuda and trainer.args.importance_sampling_level == "sequence"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - began
    losses = [row["loss"] for row in logs.rows]
    assert trainer.state.global_step == 4, trainer.state.global_step
    assert losses and all(math.isfinite(loss) for loss in losses), losses
    parameter = next(p for p in trainer.model.parameters() if p.requires_grad)
    assert parameter.device.type == device, parameter.device
    return {"steps": trainer.state.global_step, "seconds": round(wall, 2), "seconds_per_step": round(wall / 4, 2),
            "bf16": trainer.args.bf16, "losses": [round(loss, 4) for loss in losses],
            "clip_ratio": [round(row.get("clip_ratio/region_mean", 0.0), 4) for row in logs.rows],
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-cpu", action="store_true", help="without a GPU, run steps 2-3 on the CPU")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and shutil.which("nvidia-smi") is not None
    if not cuda and not args.allow_cpu:
        print("gpu_check: no CUDA GPU here (torch.cuda.is_available() is False or nvidia-smi is missing); this check "
              "needs one. `--allow-cpu` runs the captioning and GSPO code paths on the CPU instead.", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    report: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": device,
                    "gpu": torch.cuda.get_device_name(0) if cuda else None, "torch": torch.__version__,
                    "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE"), "steps": {}}
    if cuda:
        report["bf16_supported"] = torch.cuda.is_bf16_supported()
    ok = True
    with tempfile.TemporaryDirectory(prefix="covip-gpu-check-") as tmp:
        work = Path(tmp)
        model = None
        steps = [("gpu_slots", lambda: check_gpu_slots(work) if cuda else {"skipped": "no GPU"}),
                 ("build_tiny_vlm", lambda: {"path": build_model(work)}),
                 ("captioning", lambda: check_captioning(model, device)),
                 ("gspo_4_steps", lambda: check_gspo(model, device, work))]
        for name, step in steps:
            began = time.perf_counter()
            try:
                outcome = step()
                status = "ok"
            except Exception as error:  # noqa: BLE001 - every check reports, then the verdict
                outcome, status, ok = {"error": f"{type(error).__name__}: {error}",
                                       "trace": traceback.format_exc()[-2000:]}, "FAILED", False
            outcome["wall_s"] = round(time.perf_counter() - began, 2)
            report["steps"][name] = {"status": status, **outcome}
            if name == "build_tiny_vlm" and status == "ok":
                model = outcome["path"]
            print(f"{name:16s} {status:7s} {outcome['wall_s']:8.1f} s  "
                  f"{json.dumps({k: v for k, v in outcome.items() if k not in ('wall_s', 'trace')})[:300]}", flush=True)
            if status != "ok":
                print(outcome["trace"], file=sys.stderr)
            if name == "build_tiny_vlm" and status != "ok":
                break
    report["ok"] = ok
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-gpu-check-{device}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"gpu_check: {'all checks passed' if ok else 'FAILED'} on {report['gpu'] or 'the CPU'}; numbers in {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
