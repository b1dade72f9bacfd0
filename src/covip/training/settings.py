"""Settings of stage 8, GSPO training (config section `training`), its presets and its launcher.

The section holds defaults for every run plus `runs`, a mapping run name -> overrides (at least
`base_model`). `TrainingSettings.for_run(name)` merges them. Batch sizes count completions, as TRL
does: one micro-step of one device takes `per_device_train_batch_size` completions, one optimiser step
takes that x devices x `gradient_accumulation_steps` (`BatchPlan`). Two presets decide how many
optimiser steps each generation batch feeds (SPEC section 4):

- `authors` (the default): one optimisation pass per generation, as the authors' run script ran it;
  with its batch sizes (1 completion per device, 4 devices, no accumulation) one optimiser step sees
  ONE prompt's 4 rollouts. The sequence ratio s is always 1, so GSPO's clipping never acts (clip
  ratio 0 in the log, as in theirs).
- `clip-active`: `steps_per_generation` = 4 x gradient accumulation and `num_iterations` = 2, so every
  batch of rollouts (4x larger) is reused for 8 optimiser steps and s moves away from 1: the clipping
  acts (clip ratio > 0).

Explicit `steps_per_generation` / `num_iterations` values override either preset.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS = ("authors", "clip-active")
RENAMED_PRESETS = {"default": "clip-active", "paper-code": "authors"}  # the names before issue 15
REWARD_MODES = ("mixture", "joint")
DEEPSPEED = ("zero2", "zero3")
# Every linear layer of the language model (attention and MLP projections) and the output head, nothing
# of the vision tower: the layers the authors' trainer gives LoRA (every nn.Linear outside the vision
# modules, lm_head included; their trainable-parameter count includes lm_head's LoRA).
LANGUAGE_LINEAR = r"(.*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|(.*\.)?lm_head)$"
ACCELERATE_CONFIGS = Path(__file__).resolve().parents[3] / "config" / "accelerate"


@dataclass
class TrainingSettings:
    """Settings of stage 8 (config section `training`)."""

    runs: dict[str, Any] = field(default_factory=dict, metadata={"help": "Training runs: run name -> overrides of the settings below, with at least `base_model` (a local model folder or hub id). Output: <outdir>/training/<run>/model."})
    base_model: str | None = field(default=None, metadata={"help": "Model to post-train (set per run)."})
    preset: str = field(default="authors", metadata={"help": "'authors' (one optimisation pass per generation, as the authors ran it: the ratio s stays 1 and the clipping never acts) or 'clip-active' (each generation batch, 4x larger, feeds 8 optimiser steps, so GSPO's clipping acts).", "enum": list(PRESETS)})
    reward_mode: str = field(default="mixture", metadata={"help": "'mixture': each sample gets one task type of task_mixture and only that task's reward (authors' code); 'joint': the paper's r_vis + r_caps on one answer.", "enum": list(REWARD_MODES)})
    task_mixture: dict[str, float] = field(default_factory=lambda: {"caption": 1.0, "multi_vision": 1.0, "vision": 1.0}, metadata={"help": "Relative weights of the task types caption, multi_vision, vision (mixture mode)."})
    judge: str | None = field(default=None, metadata={"help": "Registry entry that judges the caption reward's questions (same client and cache as CapEval-QA)."})
    max_judge_failure_rate: float = field(default=0.2, metadata={"help": "A failed judge call gives its completion no reward; a generation batch where more than this share of the caption reward's judge calls failed (over all ranks) stops training with an error. One uncached judge call before training starts checks the judge is up.", "minimum": 0, "maximum": 1})
    max_samples: int | None = field(default=None, metadata={"help": "Train on the first N rows of the train split only (null: all)."})
    num_generations: int = field(default=4, metadata={"help": "Rollouts per prompt (group size).", "minimum": 2})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Completions (not prompts) per device per micro-step, as TRL counts them (authors: 1). One optimiser step sees this x devices x gradient_accumulation_steps completions; with the authors' 1 x 4 x 1 that is one prompt's 4 rollouts.", "minimum": 1})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-steps per optimiser step (authors: 1).", "minimum": 1})
    steps_per_generation: int | None = field(default=None, metadata={"help": "Micro-steps each generation batch is split over (null: from the preset)."})
    num_iterations: int | None = field(default=None, metadata={"help": "Passes over each generation batch (null: from the preset)."})
    max_completion_length: int = field(default=512, metadata={"help": "Most new tokens per rollout.", "minimum": 1})
    caption_token_limit: int = field(default=511, metadata={"help": "A caption with more tokens than this gets reward -1 (authors: 511).", "minimum": 1})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the rollouts."})
    learning_rate: float = field(default=5e-6, metadata={"help": "Peak learning rate."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers scheduler name (authors: the Trainer's default, linear decay to 0 without warm-up)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs over the training records."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimiser steps (-1: run the epochs)."})
    epsilon: float = field(default=3e-4, metadata={"help": "Lower clip range of the sequence ratio (1 - epsilon)."})
    epsilon_high: float = field(default=4e-4, metadata={"help": "Upper clip range of the sequence ratio (1 + epsilon_high)."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; 0 (authors) loads no reference model."})
    loss_type: str = field(default="grpo", metadata={"help": "TRL loss aggregation; 'grpo' averages per sequence then over sequences, SPEC section 4's -mean over sequences."})
    lora: bool = field(default=True, metadata={"help": "Train LoRA adapters (merged at the end); false: full fine-tuning of the language model."})
    lora_r: int = field(default=64, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(default=LANGUAGE_LINEAR, metadata={"help": "Regex of the module names that get LoRA (default, as the authors: every language-model linear layer and lm_head, no vision layer)."})
    modules_to_save: list[str] = field(default_factory=list, metadata={"help": "Modules trained in full next to LoRA (they then get no LoRA of their own); the tiny random model needs ['lm_head'] to learn."})
    bf16: bool | None = field(default=None, metadata={"help": "bf16 weights and autocast (null: on when a GPU is present)."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations in the backward pass to save memory."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N optimiser steps (a rerun resumes from the last one).", "minimum": 1})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (null: all)."})
    logging_steps: int = field(default=1, metadata={"help": "Log (console and Parquet) every N optimiser steps.", "minimum": 1})
    gpus: int = field(default=0, metadata={"help": "GPUs of the job (Snakemake resource gpu); more than 1 runs one accelerate launch over them.", "minimum": 0})
    deepspeed: str | None = field(default=None, metadata={"help": "'zero2' or 'zero3' (config/accelerate/<name>.yaml) when gpus > 1; null: plain DDP."})
    use_vllm: bool | None = field(default=None, metadata={"help": "Generate rollouts with vLLM (null: when vLLM and a GPU are present)."})
    vllm_mode: str = field(default="colocate", metadata={"help": "'colocate' (vLLM in the training processes) or 'server' (trl vllm-serve).", "enum": ["colocate", "server"]})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "GPU memory share of colocated vLLM."})

    def __post_init__(self):
        if self.preset in RENAMED_PRESETS:
            raise ValueError(f"training.preset {self.preset!r} was renamed: use {RENAMED_PRESETS[self.preset]!r} "
                             f"(presets: {list(PRESETS)})")
        if self.preset not in PRESETS:
            raise ValueError(f"training.preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if self.reward_mode not in REWARD_MODES:
            raise ValueError(f"training.reward_mode must be one of {list(REWARD_MODES)}, got {self.reward_mode!r}")
        unknown = sorted(set(self.task_mixture) - {"caption", "multi_vision", "vision"})
        if unknown:
            raise ValueError(f"training.task_mixture: unknown task type(s) {unknown}; known: caption, multi_vision, vision")
        if any(w < 0 for w in self.task_mixture.values()) or not any(w > 0 for w in self.task_mixture.values()):
            raise ValueError(f"training.task_mixture needs non-negative weights, at least one positive: {self.task_mixture}")
        if not 0.0 <= self.max_judge_failure_rate <= 1.0:
            raise ValueError(f"training.max_judge_failure_rate must be in [0, 1], got {self.max_judge_failure_rate}")
        if self.num_generations < 2:
            raise ValueError(f"training.num_generations must be >= 2 (group-relative advantages), got {self.num_generations}")
        if self.deepspeed is not None and self.deepspeed not in DEEPSPEED:
            raise ValueError(f"training.deepspeed must be one of {list(DEEPSPEED)} or null, got {self.deepspeed!r}")
        for name in ("steps_per_generation", "num_iterations"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"training.{name} must be >= 1 or null, got {value}")
        if not isinstance(self.runs, dict):
            raise ValueError(f"training.runs must map run names to settings, got {type(self.runs).__name__}")

    def for_run(self, name: str) -> "TrainingSettings":
        """The settings of run `name`: this section with the run's overrides applied."""
        if name not in self.runs:
            raise ValueError(f"training.runs has no run '{name}' (have: {sorted(self.runs)})")
        overrides = dict(self.runs[name] or {})
        known = {f.name for f in dataclasses.fields(self)} - {"runs"}
        if "prompts_per_device" in overrides:
            raise ValueError(f"training.runs.{name}: prompts_per_device was replaced by per_device_train_batch_size, "
                             "which counts completions as TRL does (the authors' run: 1 on each of 4 GPUs)")
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"training.runs.{name}: unknown setting(s) {unknown}; known: {sorted(known)}")
        merged = dataclasses.replace(self, runs={}, **overrides)
        if not merged.base_model:
            raise ValueError(f"training.runs.{name}: set base_model (a model folder or hub id)")
        try:
            merged.batch_plan()
        except ValueError as error:
            raise ValueError(f"training.runs.{name}: {error}") from None
        return merged

    def tasks(self) -> list[str]:
        """The task types (= reward functions) this run trains on."""
        if self.reward_mode == "joint":
            return ["joint"]
        return [t for t in ("caption", "multi_vision", "vision") if self.task_mixture.get(t, 0) > 0]

    def mixture(self) -> dict[str, float]:
        return {"joint": 1.0} if self.reward_mode == "joint" else dict(self.task_mixture)

    def schedule(self) -> tuple[int, int]:
        """(steps_per_generation, num_iterations) after the preset; explicit values win."""
        if self.preset == "authors":
            steps, iterations = self.gradient_accumulation_steps, 1
        else:
            steps, iterations = 4 * self.gradient_accumulation_steps, 2
        return (self.steps_per_generation or steps, self.num_iterations or iterations)

    @property
    def processes(self) -> int:
        """Training processes (one per GPU; one on the CPU or a single GPU)."""
        return max(1, self.gpus)

    def batch_plan(self, processes: int | None = None) -> "BatchPlan":
        """How many completions and prompts each optimiser step and each generation batch hold, counted
        as TRL's GRPOConfig counts them; a batch that cannot hold whole groups is an error."""
        steps, iterations = self.schedule()
        return BatchPlan(self.per_device_train_batch_size, self.processes if processes is None else processes,
                         self.gradient_accumulation_steps, steps, iterations, self.num_generations)


@dataclass(frozen=True)
class BatchPlan:
    """TRL's batch arithmetic (GRPOConfig of TRL 1.16): a micro-step of one process takes
    `per_device` completions; an optimiser step takes `accumulation` micro-steps on every process; a
    generation batch is `per_device x processes x steps_per_generation` completions, whole groups of
    `num_generations` rollouts of one prompt, reused for `num_iterations` passes."""

    per_device: int
    processes: int
    accumulation: int
    steps_per_generation: int
    num_iterations: int
    num_generations: int

    def __post_init__(self):
        if self.generation_batch % self.num_generations:
            raise ValueError(
                f"a generation batch of {self.generation_batch} completions (per_device_train_batch_size "
                f"{self.per_device} x {self.processes} process(es) x steps_per_generation {self.steps_per_generation}) "
                f"does not hold whole groups of num_generations = {self.num_generations} rollouts; for one prompt per "
                f"optimiser step set per_device_train_batch_size x gpus x gradient_accumulation_steps to {self.num_generations}")

    @property
    def completions_per_step(self) -> int:
        """Completions in one optimiser step (over all processes and accumulated micro-steps)."""
        return self.per_device * self.processes * self.accumulation

    @property
    def generation_batch(self) -> int:
        """Completions generated at once (TRL's generation_batch_size)."""
        return self.per_device * self.processes * self.steps_per_generation

    @property
    def prompts_per_generation(self) -> int:
        return self.generation_batch // self.num_generations

    @property
    def prompts_per_step(self) -> float:
        """Prompts whose rollouts one optimiser step sees (a fraction: a step sees part of a group)."""
        return self.completions_per_step / self.num_generations

    @property
    def steps_per_generation_batch(self) -> float:
        """Optimiser steps one generation batch feeds (its micro-steps x passes / accumulation)."""
        return self.steps_per_generation * self.num_iterations / self.accumulation


def launch_command(settings: TrainingSettings, config_dir: str | Path = ACCELERATE_CONFIGS) -> str:
    """The launcher prefix of the training job: plain python for 0/1 GPU, else ONE accelerate launch
    over all the job's GPUs (with the ZeRO config that `deepspeed` names). Kept here, in one place,
    so a GPU-slot allocator or cluster profile can wrap it."""
    if settings.gpus <= 1:
        return "python"
    parts = ["accelerate launch", f"--num_processes {settings.gpus}"]
    if settings.deepspeed:
        parts.append(f"--config_file {Path(config_dir) / (settings.deepspeed + '.yaml')}")
    else:
        parts.append("--multi_gpu")
    return " ".join(parts)
