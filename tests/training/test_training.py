"""GSPO training (SPEC section 4) on a tiny random Qwen-VL, on CPU: the loss TRL computes for our
configuration against a hand computation, a learning test through generation -> reward -> advantage
-> loss -> optimiser, the clip ratio under both presets, resume after a kill, the merged model, the
records layout and the launch set-up."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image
from transformers import TrainerCallback

from covip.clients.base import ImagePart, TextPart
from covip.clients.registry import ModelRegistry
from covip.prompts import PromptBook
from covip.protocol.requests import build_caption_request
from covip.local.tiny_vlm import build_tiny_vlm
from covip.training.records import assign_tasks, build_record, build_records
from covip.training.settings import ACCELERATE_CONFIGS, TrainingSettings, launch_command
from covip.training.trainer import build_trainer, last_checkpoint, train_policy

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_gspo")
    return {arch: str(build_tiny_vlm(root / arch, architecture=arch, seed=0)) for arch in ("qwen2_5_vl", "qwen3_vl")}


def _tiny_settings(base: str, **overrides) -> TrainingSettings:
    values = dict(base_model=base, num_generations=4, per_device_train_batch_size=8, max_completion_length=8,
                  learning_rate=3e-2, lora_r=8, lora_alpha=16, lora_dropout=0.0, modules_to_save=["lm_head"],
                  gradient_checkpointing=False, save_steps=1000)
    values.update(overrides)
    return TrainingSettings(**values)


def _toy_records(n: int = 16) -> list[dict]:
    """Small one-image prompts of different lengths (left padding must cope with that)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 255, (56, 56, 3), dtype=np.uint8))
        text = "Describe the photo" + " please" * (i % 3)
        records.append({"prompt": [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": text}]}],
                        "images": [image], "task": "toy", "truth": "{}", "sample_id": str(i)})
    return records


# A toy reward with a real signal: the share of completion tokens drawn from a chosen half of the vocabulary.
TARGET = set(range(300, 812))


def toy_reward(prompts, completions, completion_ids, **_):
    return [sum(t in TARGET for t in ids) / max(len(ids), 1) for ids in completion_ids]


class _Metrics(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.logs.append({"step": state.global_step, **logs})


# ---------------------------------------------------------------------------------------------------
# The loss


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_trl_loss_equals_hand_computed_gspo_loss(tiny_models, arch, tmp_path):
    settings = _tiny_settings(tiny_models[arch], temperature=1.0)
    trainer = build_trainer(settings, _toy_records(4), [toy_reward], tmp_path / "ckpt", seed=0)
    assert trainer.args.importance_sampling_level == "sequence"
    assert trainer.beta == 0.0 and trainer.ref_model is None  # no KL term, no reference model
    assert (trainer.epsilon_low, trainer.epsilon_high) == (3e-4, 4e-4)
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1

    torch.manual_seed(0)
    batch, prompt_len, completion_len = 4, 6, 5
    vocab = model.config.get_text_config().vocab_size
    prompt_ids = torch.randint(20, vocab, (batch, prompt_len))
    completion_ids = torch.randint(20, vocab, (batch, completion_len))
    completion_mask = torch.ones(batch, completion_len, dtype=torch.long)
    completion_mask[1, 3:] = 0  # a shorter completion: its padding must not count
    completion_mask[3, 4:] = 0
    advantages = torch.tensor([1.0, 0.5, -0.7, -1.2])

    with torch.no_grad():
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, prompt_len - 1 : -1]
        logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    # Old-policy log-probs chosen so the four sequences fall inside the clip range, above it with A > 0
    # (clipped), below it with A < 0 (clipped) and above it with A < 0 (not clipped: min keeps s*A).
    shift = torch.tensor([-1e-4, -1e-2, 1e-2, -1e-2]).unsqueeze(1)
    old = logp + shift
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
              "completion_mask": completion_mask, "advantages": advantages, "old_per_token_logps": old}
    trl_loss = trainer._compute_loss(model, inputs).item()

    # SPEC section 4 by hand: s = exp(mean over completion tokens of log pi - log pi_old),
    # loss = -mean over sequences of min(s*A, clip(s, 1 - 3e-4, 1 + 4e-4)*A).
    m = completion_mask.float()
    s = torch.exp(((logp - old) * m).sum(1) / m.sum(1))
    clipped = torch.clamp(s, 1 - 3e-4, 1 + 4e-4)
    hand = -torch.minimum(s * advantages, clipped * advantages).mean().item()
    assert trl_loss == pytest.approx(hand, rel=1e-5, abs=1e-7)
    # The batch really exercises the clipping (otherwise the test could not tell the two apart).
    assert abs(hand - (-(s * advantages).mean().item())) > 1e-4
    # A token-weighted mean (a different loss_type) would differ on this batch: the choice is tested.
    token_weighted = -(torch.minimum(s * advantages, clipped * advantages).unsqueeze(1) * m).sum() / m.sum()
    assert abs(token_weighted.item() - hand) > 1e-4


# ---------------------------------------------------------------------------------------------------
# Learning, clipping


def test_mean_reward_rises_on_a_toy_reward(tiny_models, tmp_path):
    """A real signal flows: generation -> reward -> group advantage -> GSPO loss -> optimiser."""
    settings = _tiny_settings(tiny_models["qwen2_5_vl"], preset="authors", max_steps=20)
    metrics = _Metrics()
    trainer = build_trainer(settings, _toy_records(), [toy_reward], tmp_path / "ckpt", seed=0, callbacks=[metrics])
    trainer.train()
    rewards = [log["reward"] for log in metrics.logs if "reward" in log]
    assert len(rewards) == 20
    first, last = np.mean(rewards[:5]), np.mean(rewards[-5:])
    print(f"toy reward: first 5 steps {first:.3f}, last 5 steps {last:.3f}")
    assert last > first + 0.15


@pytest.mark.parametrize("preset, expect_clipping", [("clip-active", True), ("authors", False)])
def test_clip_ratio_under_each_preset(tiny_models, tmp_path, preset, expect_clipping):
    """authors: one pass per generation, s == 1, nothing is ever clipped; clip-active: several optimiser
    steps reuse each generation batch, s moves and GSPO's clipping acts."""
    settings = _tiny_settings(tiny_models["qwen2_5_vl"], preset=preset, max_steps=6)
    metrics = _Metrics()
    trainer = build_trainer(settings, _toy_records(), [toy_reward], tmp_path / "ckpt", seed=0, callbacks=[metrics])
    trainer.train()
    clip = [log["clip_ratio/region_mean"] for log in metrics.logs]
    print(f"{preset}: clip ratio per step {clip}")
    assert len(clip) == 6
    if expect_clipping:
        assert max(clip) > 0
    else:
        assert max(clip) == 0


# ---------------------------------------------------------------------------------------------------
# The stage: records, judge reward, log, checkpoints, resume, merged model


class _KillAfter(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"killed after step {self.step}")


def test_killed_run_resumes_from_its_last_checkpoint(tiny_models, benchmark_splits, tmp_path):
    train_rows, _ = benchmark_splits
    judge = ModelRegistry({"j": {"backend": "local_lexical_judge"}}).chat("j")
    settings = _tiny_settings(tiny_models["qwen2_5_vl"], max_samples=4, num_generations=2, per_device_train_batch_size=2,
                              max_steps=4, save_steps=2, max_completion_length=8, judge="j")
    paths = dict(model_dir=tmp_path / "model", log_path=tmp_path / "log.parquet", checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(KeyboardInterrupt):
        train_policy("r", settings, train_rows, seed=0, judge=judge, callbacks=[_KillAfter(3)], **paths)
    assert Path(last_checkpoint(tmp_path / "ckpt")).name == "checkpoint-2"
    assert not (tmp_path / "model").exists()
    summary = train_policy("r", settings, train_rows, seed=0, judge=judge, **paths)
    assert Path(summary["resumed_from"]).name == "checkpoint-2"
    assert summary["steps"] == 4
    assert not (tmp_path / "ckpt").exists()  # done: the checkpoints only had to survive the kill
    log = pq.read_table(tmp_path / "log.parquet").to_pandas()
    assert log["step"].tolist() == [1, 2, 3, 4]  # step 3 of the killed run was dropped, then redone
    assert log["learning_rate"].notna().all() and log["clip_ratio"].notna().all()
    assert log["reward_mean"].notna().any()
    # The merged policy is a plain model folder the captioning backend loads.
    from transformers import AutoModelForImageTextToText

    trained = AutoModelForImageTextToText.from_pretrained(tmp_path / "model")
    base = AutoModelForImageTextToText.from_pretrained(tiny_models["qwen2_5_vl"])
    assert not any("lora" in name for name, _ in trained.named_parameters())
    # (The random model earns the same reward on every rollout here, so these 4 steps move no weight;
    # that training does move weights is what the toy-reward test shows.)
    visual = [n for n, _ in base.named_parameters() if "visual" in n]
    assert all(torch.equal(trained.state_dict()[n], base.state_dict()[n]) for n in visual)  # vision frozen
    policy = ModelRegistry({"p": {"backend": "transformers", "model": str(tmp_path / "model"), "device": "cpu",
                                  "sampling": {"temperature": 0.0, "max_tokens": 8}}}).chat("p")
    request = build_caption_request(train_rows[0], PromptBook())
    assert policy.complete(request).ok


def test_checkpoints_of_another_configuration_are_not_resumed(tmp_path):
    from covip.training.trainer import _prepare_checkpoints

    ckpt = tmp_path / "ckpt"
    _prepare_checkpoints(ckpt, "a")
    assert last_checkpoint(ckpt) is None
    (ckpt / "checkpoint-2").mkdir()
    _prepare_checkpoints(ckpt, "a")
    assert Path(last_checkpoint(ckpt)).name == "checkpoint-2"
    _prepare_checkpoints(ckpt, "b")  # settings or data changed: start over
    assert last_checkpoint(ckpt) is None and not (ckpt / "checkpoint-2").exists()


def test_records_follow_the_caption_prompt_layout(benchmark_splits):
    train_rows, _ = benchmark_splits
    prompts = PromptBook()
    row = train_rows[0]
    n = len(row["context_names"])
    request = build_caption_request(row, prompts)
    caption = build_record(row, "caption", prompts, seed=0, where="train row 0")
    parts = request.messages[0].parts
    content = caption["prompt"][0]["content"]
    assert [p["type"] for p in content] == ["image" if isinstance(p, ImagePart) else "text" for p in parts]
    assert [p["text"] for p in content if p["type"] == "text"] == [p.text for p in parts if isinstance(p, TextPart)]
    assert len(caption["images"]) == n + 1
    truth = json.loads(caption["truth"])
    assert truth["positive_indices"] == sorted(row["positive_indices"]) and len(truth["questions"]) == n

    # multi_vision as the authors lay it out: "Concept 0".. headers over the photos alone (no dialogue),
    # the instruction, then the query photo; the truth numbers concepts from 0 as the headers do.
    multi = build_record(row, "multi_vision", prompts, seed=0, where="train row 0")
    parts = multi["prompt"][0]["content"]
    assert [p["type"] for p in parts] == ["text", "image"] * n + ["text", "image"]
    assert [p["text"] for p in parts[:-2:2]] == [f"=== Concept {k} ===" for k in range(n)]
    assert r"\boxed{" in parts[-2]["text"] and "numbered from 0" in parts[-2]["text"]
    assert len(multi["images"]) == n + 1 and not any(d in p["text"] for p in parts if p["type"] == "text"
                                                      for d in row["context_dialogues"])
    assert json.loads(multi["truth"])["indices"] == sorted(row["positive_indices"])

    vision = build_record(row, "vision", prompts, seed=0, where="train row 0")
    assert len(vision["images"]) == 2
    asked = [name for name in row["context_names"] if name in vision["prompt"][0]["content"][-1]["text"]]
    present = json.loads(vision["truth"])["present"]
    assert present == any(row["context_names"][i] in asked for i in row["positive_indices"])

    # The vision questions ask about present and absent concepts alike.
    answers = {json.loads(build_record(r, "vision", prompts, seed=0, where="x")["truth"])["present"] for r in train_rows}
    assert answers == {True, False}


def test_task_mixture_proportions():
    ids = [f"s{i}" for i in range(3000)]
    tasks = assign_tasks(ids, {"caption": 2.0, "multi_vision": 1.0, "vision": 1.0}, seed=0)
    share = {t: tasks.count(t) / len(tasks) for t in set(tasks)}
    assert share["caption"] == pytest.approx(0.5, abs=0.04)
    assert share["vision"] == pytest.approx(0.25, abs=0.04)
    assert assign_tasks(ids[:50], {"caption": 0.0, "vision": 1.0}, seed=0) == ["vision"] * 50
    assert assign_tasks(ids[:10], {"caption": 1, "vision": 1}, 0) == assign_tasks(ids[:10], {"caption": 1, "vision": 1}, 0)


def test_joint_mode_builds_joint_records(benchmark_splits):
    train_rows, _ = benchmark_splits
    settings = TrainingSettings(reward_mode="joint")
    records = build_records(train_rows[:3], settings.mixture(), PromptBook(), seed=0)
    assert settings.tasks() == ["joint"] and {r["task"] for r in records} == {"joint"}
    truth = json.loads(records[0]["truth"])
    assert {"indices", "questions", "positive_indices"} <= set(truth)


# ---------------------------------------------------------------------------------------------------
# Settings, presets, launch


def test_presets_and_run_overrides():
    section = TrainingSettings(runs={"a": {"base_model": "m", "preset": "clip-active", "per_device_train_batch_size": 4},
                                     "b": {"base_model": "m", "per_device_train_batch_size": 4},
                                     "c": {"base_model": "m", "preset": "clip-active", "num_iterations": 3,
                                           "per_device_train_batch_size": 4}})
    assert TrainingSettings().preset == "authors"
    assert section.for_run("a").schedule() == (4, 2)
    assert section.for_run("b").schedule() == (1, 1)
    assert section.for_run("c").schedule() == (4, 3)
    for old, new in (("default", "clip-active"), ("paper-code", "authors")):
        with pytest.raises(ValueError, match=f"renamed: use '{new}'"):
            TrainingSettings(preset=old)
    with pytest.raises(ValueError, match="per_device_train_batch_size"):
        TrainingSettings(runs={"x": {"base_model": "m", "prompts_per_device": 1}}).for_run("x")
    # One process, 1 completion per micro-step: a generation batch cannot hold a group of 4 rollouts.
    with pytest.raises(ValueError, match=r"training.runs.x: a generation batch of 1 completions"):
        TrainingSettings(runs={"x": {"base_model": "m"}}).for_run("x")
    with pytest.raises(ValueError, match="unknown setting"):
        TrainingSettings(runs={"x": {"base_model": "m", "lr": 1}}).for_run("x")
    with pytest.raises(ValueError, match="base_model"):
        TrainingSettings(runs={"x": {}}).for_run("x")
    with pytest.raises(ValueError, match="task_mixture"):
        TrainingSettings(task_mixture={"captions": 1.0})


def test_launch_command_runs_one_accelerate_over_all_gpus():
    assert launch_command(TrainingSettings(gpus=0)) == "python"
    assert launch_command(TrainingSettings(gpus=1, deepspeed="zero2")) == "python"
    cmd = launch_command(TrainingSettings(gpus=4, deepspeed="zero3"), "/cfg")
    assert cmd == "accelerate launch --num_processes 4 --config_file /cfg/zero3.yaml"
    assert launch_command(TrainingSettings(gpus=2)) == "accelerate launch --num_processes 2 --multi_gpu"


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs_load(stage):
    from accelerate.commands.config.config_args import load_config_from_file

    path = ACCELERATE_CONFIGS / f"zero{stage}.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["deepspeed_config"]["zero_stage"] == stage
    loaded = load_config_from_file(str(path))
    assert str(loaded.distributed_type).endswith("DEEPSPEED")
    assert str(loaded.mixed_precision).endswith("bf16") or loaded.mixed_precision == "bf16"
    assert loaded.deepspeed_config["offload_optimizer_device"] == "none"
    if stage == 3:
        assert loaded.deepspeed_config["zero3_save_16bit_model"] is True


def test_paper_config_has_the_authors_training_setup():
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    section = TrainingSettings(**paper["training"])
    (run,) = section.runs
    s = section.for_run(run)
    assert "Qwen3-VL-8B" in s.base_model
    assert (s.lora_r, s.lora_alpha, s.lora_dropout) == (64, 128, 0.05)
    assert (s.learning_rate, s.num_train_epochs, s.num_generations, s.max_completion_length) == (5e-6, 2, 4, 512)
    assert (s.deepspeed, s.gpus, s.save_steps) == ("zero2", 4, 50)
    assert (s.per_device_train_batch_size, s.gradient_accumulation_steps, s.preset) == (1, 1, "authors")
    assert s.lr_scheduler_type == "linear" and "lm_head" in s.lora_target_modules and not s.modules_to_save
    assert run in paper["evaluation"]["policies"]


# ---------------------------------------------------------------------------------------------------
# Batch arithmetic as TRL counts it, the schedule, LoRA on lm_head


def _trl_config_on(settings: TrainingSettings, processes: int, tmp_path, monkeypatch):
    """TRL's GRPOConfig for `settings` as `processes` launched processes would each build it."""
    from transformers import TrainingArguments

    from covip.training.trainer import grpo_config

    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: processes))
    return grpo_config(dataclasses.replace(settings, bf16=False), tmp_path / "ckpt", 0, cuda=False)


def _completions_per_optimiser_step(args, processes: int) -> int:
    """What one optimiser step of TRL's GRPOTrainer consumes: every process's micro-batches of
    per_device_train_batch_size completions, gradient_accumulation_steps of them."""
    return args.per_device_train_batch_size * processes * args.gradient_accumulation_steps


@pytest.mark.parametrize(
    "preset, processes, per_device, completions_per_step, prompts_per_generation, steps_per_generation_batch",
    [
        ("authors", 4, 1, 4, 1, 1),  # the authors' run: ONE prompt's 4 rollouts per optimiser step
        ("authors", 1, 4, 4, 1, 1),  # the same on one device
        ("clip-active", 4, 1, 4, 4, 8),  # 4 prompts generated at once, reused for 8 optimiser steps
    ],
)
def test_completions_per_optimiser_step_from_the_trl_config(tmp_path, monkeypatch, preset, processes, per_device,
                                                             completions_per_step, prompts_per_generation,
                                                             steps_per_generation_batch):
    settings = TrainingSettings(runs={"r": {"base_model": "m", "gpus": processes, "preset": preset,
                                            "per_device_train_batch_size": per_device}}).for_run("r")
    args = _trl_config_on(settings, processes, tmp_path, monkeypatch)
    assert _completions_per_optimiser_step(args, processes) == completions_per_step
    assert args.generation_batch_size == prompts_per_generation * settings.num_generations
    assert args.generation_batch_size // settings.num_generations == prompts_per_generation
    plan = settings.batch_plan()
    assert (plan.completions_per_step, plan.generation_batch) == (completions_per_step, args.generation_batch_size)
    assert plan.steps_per_generation_batch == steps_per_generation_batch
    assert args.steps_per_generation * args.num_iterations / args.gradient_accumulation_steps == steps_per_generation_batch


def test_paper_run_sees_one_prompt_per_optimiser_step(tmp_path, monkeypatch):
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    section = TrainingSettings(**paper["training"])
    (run,) = section.runs
    settings = section.for_run(run)
    args = _trl_config_on(settings, settings.gpus, tmp_path, monkeypatch)
    assert _completions_per_optimiser_step(args, settings.gpus) == settings.num_generations == 4
    assert args.generation_batch_size == 4 and args.num_iterations == 1  # one pass: the authors' clip ratio of 0
    assert args.lr_scheduler_type == "linear" and args.warmup_steps == 0  # the Trainer's default decay


def test_lora_covers_what_the_authors_trainer_covers(tiny_models):
    """Their trainer gives LoRA to every nn.Linear outside the vision modules (lm_head included); ours,
    by default, to exactly those layers."""
    from peft import get_peft_model
    from transformers import AutoModelForImageTextToText

    from covip.training.trainer import lora_config

    for path in tiny_models.values():
        model = AutoModelForImageTextToText.from_pretrained(path)
        authors = {name for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and "visual" not in name}
        assert "lm_head" in authors
        peft_model = get_peft_model(model, lora_config(TrainingSettings(lora_r=4, lora_alpha=8)))
        ours = {name.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0]
                for name, _ in peft_model.named_parameters() if ".lora_A." in name}
        assert ours == authors
        # With lm_head trained in full (the tiny embedded run), it gets no LoRA of its own.
        model = AutoModelForImageTextToText.from_pretrained(path)
        saved = get_peft_model(model, lora_config(TrainingSettings(lora_r=4, lora_alpha=8, modules_to_save=["lm_head"])))
        lora = {name.removeprefix("base_model.model.").rsplit(".lora_A", 1)[0]
                for name, _ in saved.named_parameters() if ".lora_A." in name}
        assert lora == authors - {"lm_head"}
