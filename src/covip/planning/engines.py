"""Engine and server starts of a config's jobs, for `covip plan`.

A Snakemake job that runs an in-process model (covip.clients.backends.IN_PROCESS_BACKENDS) loads it
once, and a job that calls a served entry (`serve:`) starts that server once (covip.serving), so
both count once per job, and loading holds the job's GPUs for `plan.load_seconds`. The jobs are
counted the way the rules make them: a stage sharded under `sharding` runs one job per shard; caption
one per (condition, policy) and shard; capeval one per (condition, policy, judge) and shard, or, for a
judge under capeval.one_pass, capeval_one_pass one per judge; diagnose
one per (diagnostic condition, policy), covering every task and mode; train_gspo one per run, which
loads the policy it trains and, with vLLM rollouts in colocate mode, a vLLM engine of it too;
general_benchmark one per (policy, benchmark) when configured.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from covip.clients.backends import IN_PROCESS_BACKENDS
from covip.clients.spec import ModelSpec
from covip.config.models import STAGE_ROLES
from covip.config.prepare import Prepared
from covip.planning.settings import PlanSettings


def training_policy(prepared: Prepared, run: str) -> ModelSpec:
    """The model a GSPO run trains, as the plan prices it (transformers, the run's GPUs)."""
    settings = prepared.training_settings(run)
    return ModelSpec(name=f"training.runs.{run}", backend="transformers", model=settings.base_model or "",
                     gpus=settings.gpus)


def _trained(prepared: Prepared, run: str) -> list[ModelSpec]:
    """What a GSPO job loads of the policy: the model it trains, plus TRL's colocated vLLM engine when
    rollouts use vLLM (the same test as Prepared.conda_env; 'server' mode's trl vllm-serve is not
    started by the job)."""
    policy, settings = training_policy(prepared, run), prepared.training_settings(run)
    rollouts = settings.use_vllm is True or (settings.use_vllm is None and settings.gpus > 0)
    if rollouts and settings.vllm_mode == "colocate":
        return [policy, dataclasses.replace(policy, backend="vllm")]
    return [policy]


def _shards(prepared: Prepared, rule: str) -> int:
    return prepared.shard_count(rule) if prepared.sharded(rule) else 1


def jobs(prepared: Prepared) -> Iterator[tuple[str, list[ModelSpec], int]]:
    """(rule, the models one job calls, how many such jobs), for every rule that calls a model."""
    evaluation = prepared.config["evaluation"]
    models = prepared.models

    def specs(rule: str, **wildcards) -> list[ModelSpec]:
        return [models[role] for role in dict.fromkeys(prepared.role_names(rule, wildcards))]

    for rule in STAGE_ROLES:
        yield rule, specs(rule), _shards(prepared, rule)
    for _condition in prepared.conditions:
        for policy in evaluation["policies"]:
            yield "caption", specs("caption", policy=policy), _shards(prepared, "caption")
    for judge in prepared.one_pass_judges():
        yield "capeval_one_pass", specs("capeval_one_pass", judge=judge), 1
    for _condition, key in prepared.capeval_keys():
        judge = key.split("/")[1]
        if not prepared.capeval_one_pass(judge):
            yield "capeval", specs("capeval", judge=judge), _shards(prepared, "capeval")
    if evaluation["diagnostic_tasks"] and evaluation["diagnostic_modes"]:
        for _condition in prepared.diagnostic_conditions:
            for policy in evaluation["policies"]:
                yield "diagnose", specs("diagnose", policy=policy), 1
    for run in prepared.training.runs:
        judges = [models[role] for role in prepared.training_roles(run)]
        yield "train_gspo", [*_trained(prepared, run), *judges], 1
    if prepared.general_enabled:
        for policy in prepared.general_policies:
            yield "general_benchmark", specs("general_benchmark", policy=policy), len(prepared.general_benchmarks)


def load_seconds(spec: ModelSpec, settings: PlanSettings) -> float:
    """Seconds one start of this entry takes: its model's own value, else its server's or backend's."""
    table = settings.load_seconds
    if spec.model in table:
        return float(table[spec.model])
    return float(table.get("serve" if spec.serve is not None else spec.backend, 0.0))


def starts(prepared: Prepared, settings: PlanSettings) -> dict[tuple[str, str], dict]:
    """Per (rule, role): jobs that call it, in-process engine starts, server starts, and the GPU-hours
    their loading holds (an in-process entry with `gpus: 0` loads on the CPU: no GPU-hours)."""
    out: dict[tuple[str, str], dict] = {}
    for rule, specs, count in jobs(prepared):
        for name in dict.fromkeys(spec.name for spec in specs):  # a job counts once per role it calls
            out.setdefault((rule, name), {"spec": next(s for s in specs if s.name == name), "jobs": 0,
                                          "engine_starts": 0, "server_starts": 0, "load_gpu_hours": 0.0})
            out[(rule, name)]["jobs"] += count
        for spec in specs:
            entry = out[(rule, spec.name)]
            if spec.serve is not None:  # `covip gpu-run --serve` starts it in every job that calls it
                entry["server_starts"] += count
                gpus = spec.serve.gpus
            elif spec.backend in IN_PROCESS_BACKENDS:  # the job's script builds the engine once
                entry["engine_starts"] += count
                gpus = spec.gpus
            else:
                continue  # an API or a stand-in: nothing to load
            entry["load_gpu_hours"] += count * load_seconds(spec, settings) * gpus / 3600
    return out
