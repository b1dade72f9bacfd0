"""What a run records about itself: model usage per job, and the GSPO training log (stage 8)."""

from __future__ import annotations


import pyarrow as pa

from covip.core.schemas.types import _schema


USAGE = _schema(
    "usage",
    "Model usage of one job: one row per registry entry the job used (<outdir>/usage/<job>.parquet).",
    [
        ("job", pa.string()),  # the job's log path under logs/, without .log (rule plus wildcards)
        ("rule", pa.string()),
        ("role", pa.string()),  # registry entry
        ("backend", pa.string()),
        ("model", pa.string()),
        ("requests", pa.int64()),  # every request the stage made, cache hits included
        ("cache_hits", pa.int64()),
        ("failures", pa.int64()),  # calls that failed after the client's retries
        ("input_tokens", pa.int64()),  # of fresh calls only (a cache hit costs nothing)
        ("output_tokens", pa.int64()),
        ("seconds", pa.float64()),  # summed call latency (calls overlap, so this exceeds wall time)
        ("estimated_cost_usd", pa.float64()),  # from the config's price table; 0 without a price
    ],
    ["job", "rule", "role", "backend", "model", "requests", "cache_hits", "failures", "input_tokens",
     "output_tokens", "seconds", "estimated_cost_usd"],
)


PLAN = _schema(
    "plan",
    "`covip plan`: model calls, tokens, dollars and GPU-hours a config will take, per rule and registry entry, "
    "estimated before anything runs (the assumptions are printed with it).",
    [
        ("rule", pa.string()),
        ("role", pa.string()),  # registry entry, or training.runs.<run> for the policy a GSPO run trains
        ("backend", pa.string()),
        ("model", pa.string()),
        ("kind", pa.string()),  # 'api' | 'in_process' | 'stand_in'
        ("jobs", pa.int64()),  # workflow jobs of this rule that call the role (conditions x policies x ...)
        ("calls", pa.int64()),  # model calls (requests; images embedded for an embedder), first attempts only
        ("images", pa.int64()),  # images sent with those calls
        ("input_tokens", pa.int64()),  # text (characters / 4) plus image tokens (the backend's own rule)
        ("output_tokens", pa.int64()),
        ("estimated_cost_usd", pa.float64()),  # from the config's prices; 0 without a price
        ("gpu_hours", pa.float64()),  # in-process models, training and loading, at plan.throughput of plan.gpu; null for APIs
        ("engine_starts", pa.int64()),  # in-process loads of the role's model: one per job that runs it
        ("server_starts", pa.int64()),  # starts of the role's server (a `serve:` entry): one per job that calls it
        ("load_gpu_hours", pa.float64()),  # GPU-hours those starts hold while loading (plan.load_seconds), in gpu_hours
        ("prefix_share", pa.float64()),  # share of input tokens a prefix cache can reuse; null where not estimated
        ("basis", pa.string()),  # how the calls were counted
    ],
    ["rule", "role", "backend", "model", "kind", "jobs", "calls", "images", "input_tokens", "output_tokens",
     "estimated_cost_usd", "engine_starts", "server_starts", "load_gpu_hours", "basis"],
)


TRAINING_LOG = _schema(
    "training_log",
    "Stage 8: one row per logged GSPO optimiser step (TRL's metrics, averaged over the logging interval).",
    [
        ("run", pa.string()),
        ("step", pa.int64()),
        ("epoch", pa.float64()),
        ("wall_s", pa.float64()),  # seconds since this (possibly resumed) process started training
        ("loss", pa.float64()),
        ("reward_mean", pa.float64()),
        ("reward_std", pa.float64()),
        ("reward_caption", pa.float64()),  # per-task means; null when the run has no such task
        ("reward_multi_vision", pa.float64()),
        ("reward_vision", pa.float64()),
        ("reward_joint", pa.float64()),
        ("clip_ratio", pa.float64()),  # share of sequences whose ratio s was clipped
        ("clip_ratio_low", pa.float64()),
        ("clip_ratio_high", pa.float64()),
        ("completion_length_mean", pa.float64()),
        ("completion_truncated_ratio", pa.float64()),
        ("learning_rate", pa.float64()),
        ("grad_norm", pa.float64()),
        ("judge_calls", pa.float64()),  # caption reward's judge calls per generation batch and rank (mean)
        ("judge_failed", pa.float64()),  # of which failed: their completions got no reward
        ("judge_failure_rate", pa.float64()),
    ],
    ["run", "step"],
)
