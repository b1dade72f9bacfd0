"""Stage 8: GSPO post-training with TRL's GRPOTrainer (sequence-level importance sampling).

`train_policy` builds the records, the TRL config, the model with LoRA on the language model's
linear layers and lm_head (vision tower frozen), runs `GRPOTrainer`, resuming from the last checkpoint in
`checkpoint_dir` when there is one, and saves the merged policy as an ordinary model folder (weights
plus processor) that `AutoModelForImageTextToText` / `AutoProcessor` and the captioning backends
load. `TrainingLogCallback` writes every logged step to Parquet (schemas.TRAINING_LOG).

Under several ranks (`accelerate launch`), rank 0 alone prepares the checkpoint folder (clearing a
foreign configuration's checkpoints) and streams the records into `<checkpoint_dir>/records/`
(images still encoded), behind a barrier; every rank then memory-maps the same file and decodes the
images of its own batches only. Rank 0 alone writes the training log and the merged model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import logging
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from covip.core import schemas
from covip.core.io import write_artifact
from covip.prompts import PromptBook
from covip.training.records import iter_records, load_records, row_questions, to_dataset, write_records
from covip.training.rewards import RewardSuite
from covip.training.settings import TrainingSettings

log = logging.getLogger("covip.training")

# TRL metric name -> training log column.
_LOG_COLUMNS = {
    "loss": "loss",
    "reward": "reward_mean",
    "reward_std": "reward_std",
    "clip_ratio/region_mean": "clip_ratio",
    "clip_ratio/low_mean": "clip_ratio_low",
    "clip_ratio/high_mean": "clip_ratio_high",
    "completions/mean_length": "completion_length_mean",
    "completions/clipped_ratio": "completion_truncated_ratio",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
    "epoch": "epoch",
    "judge/calls": "judge_calls",
    "judge/failed": "judge_failed",
    "judge/failure_rate": "judge_failure_rate",
}


def _transformers_callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class TrainingLogCallback(_transformers_callback_base()):
    """Keeps one row per logging step and rewrites the Parquet log after each (main process only).

    Rows also go to `<checkpoint_dir>/log.jsonl`, so a resumed run keeps the rows up to its
    checkpoint and drops those of the steps it repeats.
    """

    def __init__(self, run: str, parquet_path: str | Path, journal_path: str | Path, tasks: Sequence[str]):
        self.run, self.parquet_path, self.journal_path = run, Path(parquet_path), Path(journal_path)
        self.tasks = list(tasks)
        self.rows: list[dict] = []
        self.started = time.perf_counter()

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        if self.journal_path.is_file():
            rows = [json.loads(line) for line in self.journal_path.read_text().splitlines() if line.strip()]
            self.rows = [r for r in rows if r["step"] <= state.global_step]  # a resumed run repeats later steps
        self._write()

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Every optimiser step logs loss and clip ratio; only a step that generated logs rewards (null otherwise).
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        row = {"run": self.run, "step": int(state.global_step), "wall_s": time.perf_counter() - self.started}
        for key, column in _LOG_COLUMNS.items():
            row[column] = float(logs[key]) if logs.get(key) is not None else None
        for task in ("caption", "multi_vision", "vision", "joint"):
            value = logs.get(f"rewards/{task}/mean")
            row[f"reward_{task}"] = float(value) if task in self.tasks and value is not None else None
        self.rows.append(row)
        self._write()
        log.info("step %d: reward %s (std %s), clip ratio %s, completion length %s, lr %s", row["step"],
                 row["reward_mean"], row["reward_std"], row["clip_ratio"], row["completion_length_mean"], row["learning_rate"])

    def _write(self) -> None:
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        self.journal_path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))
        write_artifact(self.rows, self.parquet_path, schemas.TRAINING_LOG)


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def grpo_config(settings: TrainingSettings, checkpoint_dir: str | Path, seed: int, *, cuda: bool):
    """TRL's GRPOConfig for these settings (GSPO: importance_sampling_level='sequence')."""
    from trl import GRPOConfig

    steps_per_generation, num_iterations = settings.schedule()
    bf16 = cuda if settings.bf16 is None else settings.bf16
    use_vllm = (_has_vllm() and cuda) if settings.use_vllm is None else settings.use_vllm
    extra: dict[str, Any] = {}
    if use_vllm:
        extra = {"vllm_mode": settings.vllm_mode, "vllm_gpu_memory_utilization": settings.vllm_gpu_memory_utilization}
    return GRPOConfig(
        output_dir=str(checkpoint_dir),
        importance_sampling_level="sequence",
        loss_type=settings.loss_type,
        epsilon=settings.epsilon,
        epsilon_high=settings.epsilon_high,
        beta=settings.beta,
        scale_rewards="group",
        num_generations=settings.num_generations,
        per_device_train_batch_size=settings.per_device_train_batch_size,  # completions, as TRL counts them
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        steps_per_generation=steps_per_generation,
        num_iterations=num_iterations,
        max_completion_length=settings.max_completion_length,
        temperature=settings.temperature,
        learning_rate=settings.learning_rate,
        lr_scheduler_type=settings.lr_scheduler_type,
        num_train_epochs=settings.num_train_epochs,
        max_steps=settings.max_steps,
        bf16=bf16,
        gradient_checkpointing=settings.gradient_checkpointing,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=settings.save_total_limit,
        logging_steps=settings.logging_steps,
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_vllm=use_vllm,
        use_cpu=not cuda,
        remove_unused_columns=False,
        **extra,
    )


def load_base(settings: TrainingSettings, *, cuda: bool):
    """The base model and its processor (left padding: Qwen's multimodal rotary positions need it)."""
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    bf16 = cuda if settings.bf16 is None else settings.bf16
    processor = AutoProcessor.from_pretrained(settings.base_model, padding_side="left")
    model = AutoModelForImageTextToText.from_pretrained(settings.base_model, dtype=torch.bfloat16 if bf16 else torch.float32)
    for name, parameter in model.named_parameters():
        if "visual" in name:  # the vision tower stays frozen (LoRA also never touches it)
            parameter.requires_grad_(False)
    return model, processor


def lora_target_regex(settings: TrainingSettings) -> str:
    """The LoRA target regex, less the modules trained in full (`modules_to_save` get no LoRA of their own)."""
    if not settings.modules_to_save:
        return settings.lora_target_modules
    saved = "|".join(re.escape(name) for name in settings.modules_to_save)
    return rf"(?!(?:.*\.)?(?:{saved})$)(?:{settings.lora_target_modules})"


def lora_config(settings: TrainingSettings):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=lora_target_regex(settings),
        modules_to_save=list(settings.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


def build_trainer(settings: TrainingSettings, records, reward_funcs, checkpoint_dir: str | Path, seed: int,
                  callbacks=(), args=None):
    """A GRPOTrainer for these settings and records (a list, or a `datasets.Dataset` from `load_records`);
    `args`: the GRPOConfig when the caller made it already (it sets up the process group)."""
    import datasets
    import torch
    from trl import GRPOTrainer

    cuda = torch.cuda.is_available()
    # The config comes first: under ZeRO-3 it must exist before the weights load, so they load sharded.
    args = args if args is not None else grpo_config(settings, checkpoint_dir, seed, cuda=cuda)
    model, processor = load_base(settings, cuda=cuda)
    return GRPOTrainer(
        model=model,
        reward_funcs=list(reward_funcs),
        args=args,
        train_dataset=records if isinstance(records, datasets.Dataset) else to_dataset(records),
        processing_class=processor,
        peft_config=lora_config(settings) if settings.lora else None,
        callbacks=list(callbacks),
    )


def last_checkpoint(checkpoint_dir: str | Path) -> str | None:
    """The newest `checkpoint-N` folder in `checkpoint_dir`, or None."""
    from transformers.trainer_utils import get_last_checkpoint

    path = Path(checkpoint_dir)
    return get_last_checkpoint(str(path)) if path.is_dir() else None


def save_merged(trainer, settings: TrainingSettings, out_dir: str | Path) -> Path:
    """Save the trained policy as a plain model folder (LoRA merged in) with the base's processor.

    The adapter is saved through the trainer (which gathers ZeRO-3 shards), then merged into a fresh
    copy of the base on the main process; the folder is written next to `out_dir` and renamed into
    place, so a crash never leaves a half-written model behind.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    out = Path(out_dir)
    staging = out.with_name(out.name + ".partial")
    adapter_dir = out.with_name(out.name + ".adapter")
    trainer.save_model(str(adapter_dir))
    if not trainer.accelerator.is_main_process:
        return out
    shutil.rmtree(staging, ignore_errors=True)
    if settings.lora:
        from peft import PeftModel

        dtype = next(trainer.model.parameters()).dtype
        base = AutoModelForImageTextToText.from_pretrained(settings.base_model, dtype=dtype)
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    else:
        merged = AutoModelForImageTextToText.from_pretrained(str(adapter_dir), dtype=torch.float32)
    merged.generation_config = AutoModelForImageTextToText.from_pretrained(settings.base_model).generation_config
    merged.save_pretrained(staging)
    processor = AutoProcessor.from_pretrained(settings.base_model)
    processor.save_pretrained(staging)
    processor.tokenizer.save_pretrained(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    shutil.rmtree(adapter_dir, ignore_errors=True)
    return out


def _prepare_checkpoints(checkpoint_dir: Path, key: str) -> None:
    """Make `checkpoint_dir` this configuration's (rank 0 only, before the others look at it): checkpoints
    written by a job with another resume key (settings, seed, data, base model) are cleared rather than
    silently continued; the newest of our own is resumed from (`last_checkpoint`)."""
    marker = checkpoint_dir / "resume_key.json"
    if checkpoint_dir.is_dir() and (not marker.is_file() or json.loads(marker.read_text()).get("key") != key):
        log.info("clearing %s: its checkpoints belong to another configuration", checkpoint_dir)
        shutil.rmtree(checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"key": key}))


def resume_key(settings: TrainingSettings, rows: Iterable[Mapping], seed: int) -> str:
    """A digest of what a run's result depends on, so a rerun resumes only its own checkpoints."""
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(settings), sort_keys=True, default=str).encode())
    digest.update(str(seed).encode())
    for row in rows:
        digest.update(json.dumps({k: row.get(k) for k in ("sample_id", "positive_indices", "context_names", "context_dialogues")},
                                 sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]


class _FirstRows:
    """The first `limit` rows of a re-iterable source (a list, or rows streamed from Parquet), re-iterable."""

    def __init__(self, rows: Iterable[Mapping], limit: int | None):
        self.rows, self.limit = rows, limit

    def __iter__(self):
        return itertools.islice(iter(self.rows), self.limit)


def _first_question(rows: Iterable[Mapping]) -> dict | None:
    for i, row in enumerate(rows):
        for questions in row_questions(row, f"train split row {i}"):
            if questions:
                return questions[0]
    return None


def train_policy(
    run: str,
    settings: TrainingSettings,
    train_rows: Iterable[Mapping],
    *,
    model_dir: str | Path,
    log_path: str | Path,
    checkpoint_dir: str | Path,
    seed: int,
    judge=None,
    prompts: PromptBook | None = None,
    callbacks: Sequence = (),
    keep_checkpoints: bool = False,
) -> dict:
    """Train run `run` (settings already merged with `for_run`) and save the merged policy.

    `train_rows` is re-iterable (a list, or rows streamed from the split file: it is read twice, for
    the resume key and for the records, and never held whole). Resumes from the last checkpoint in
    `checkpoint_dir` when there is one; `callbacks` are extra transformers TrainerCallbacks. Before
    anything heavy, one uncached judge call checks that the caption reward's judge answers.
    Checkpoints (and the records file) are removed once the merged model is saved (they exist to
    survive a kill) unless `keep_checkpoints`. Returns a small summary (steps, resumed-from, wall time).
    """
    import torch
    from accelerate import PartialState

    prompts = prompts or PromptBook()
    rows = _FirstRows(train_rows, settings.max_samples)
    if next(iter(rows), None) is None:
        raise ValueError(f"training run '{run}': the train split has no rows")
    tasks = settings.tasks()
    needs_judge = any(t in ("caption", "joint") for t in tasks)
    if needs_judge and judge is None:
        raise ValueError(f"training run '{run}': the {tasks} reward(s) need a judge; set training.judge")
    suite = RewardSuite(judge, prompts, max_tokens=settings.caption_token_limit, seed=seed,
                        max_judge_failure_rate=settings.max_judge_failure_rate)
    if needs_judge:
        suite.preflight(_first_question(rows))  # every rank, before any barrier: a dead judge stops them all
    checkpoints = Path(checkpoint_dir)
    records_path = checkpoints / "records" / "train.arrow"
    # The config sets up the process group (nccl on GPUs, gloo on CPUs, DeepSpeed when launched with it)
    # under accelerate launch; a single process otherwise.
    args = grpo_config(settings, checkpoint_dir, seed, cuda=torch.cuda.is_available())
    state = PartialState()
    if state.is_main_process:
        _prepare_checkpoints(checkpoints, resume_key(settings, rows, seed))
        count = write_records(iter_records(rows, settings.mixture(), prompts, seed=seed), records_path)
        log.info("run %s: %d training records in %s; world size %d (%s)", run, count, records_path,
                 state.num_processes, state.backend or "single process")
    state.wait_for_everyone()
    records = load_records(records_path)
    resume = last_checkpoint(checkpoints)
    callback = TrainingLogCallback(run, log_path, checkpoints / "log.jsonl", tasks)
    trainer = build_trainer(settings, records, suite.functions(tasks), checkpoint_dir, seed, [callback, *callbacks],
                            args=args)
    if resume:
        log.info("resuming run %s from %s", run, resume)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    wall = time.perf_counter() - started
    save_merged(trainer, settings, model_dir)
    state.wait_for_everyone()
    if not keep_checkpoints and state.is_main_process:
        shutil.rmtree(checkpoints, ignore_errors=True)
    if suite.judge_failures:
        log.warning("run %s: %d of %d judge calls failed on this rank; %d completions got no reward", run,
                    suite.judge_failures, suite.judge_calls, suite.unrewarded)
    return {"run": run, "steps": int(trainer.state.global_step), "resumed_from": resume, "wall_s": wall,
            "records": len(records), "judge_calls": suite.judge_calls, "judge_failures": suite.judge_failures}
