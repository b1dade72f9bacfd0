# Config validation, paths and the small helpers every rule uses.
import dataclasses
import json
import os
import re
from pathlib import Path

from snakemake.utils import validate

from covip.clients.backends import backend_module

from covip.clients.spec import ModelSpec
from covip.core.fingerprint import code_fingerprint
from covip.prompts import PromptBook
from covip.core.sharding import shard_count
from covip.core.settings import settings_from
from covip.training.settings import TrainingSettings, launch_command


validate(config, schema="../config/schemas/config.schema.yaml")

OUT = config["outdir"].rstrip("/")
LOGS = f"{OUT}/logs"
# A registry entry may name a model the workflow itself writes as "{outdir}/..." (a GSPO-trained
# policy), so it follows `outdir`. Resolved in the config itself, which every job receives.
for _entry in config["models"].values():
    if isinstance(_entry.get("model"), str) and "{outdir}" in _entry["model"]:
        _entry["model"] = _entry["model"].replace("{outdir}", OUT)
PROMPTS = PromptBook(config["prompts"])
MODELS = {name: ModelSpec.from_config(name, entry) for name, entry in config["models"].items()}
for _role in [*config["evaluation"]["policies"], *config["evaluation"]["judges"], config["evaluation"]["diagnostic_judge"]]:
    if _role not in MODELS:
        raise ValueError(f"evaluation: '{_role}' is not an entry of the models registry (have: {sorted(MODELS)})")
TRAINING = settings_from(TrainingSettings, config.get("training"), "config 'training'")
if TRAINING.judge is not None and TRAINING.judge not in MODELS:
    raise ValueError(f"training.judge: '{TRAINING.judge}' is not an entry of the models registry (have: {sorted(MODELS)})")
# Policy folders the workflow trains itself: <outdir>/training/<run>/model -> run.
TRAINED_MODELS = {os.path.normpath(f"{OUT}/training/{run}/model"): run for run in TRAINING.runs}


onstart:
    # A remote backend without its API key fails here, before any job runs (and never on a dry run),
    # naming the environment variable; the key itself is never printed.
    from covip.clients.spec import check_credentials

    for spec in MODELS.values():
        check_credentials(spec)
    # On one machine, a job that wants more GPUs than the machine has fails now, not hours into the
    # run (Snakemake would start it anyway). Cluster jobs are checked by SLURM against their node.
    if workflow.local_exec and not workflow.remote_exec:
        from covip.workflow.gpu_slots import check_requests

        check_requests({job.rule.name: int(job.resources.get("gpu", 0) or 0) for job in workflow.dag.needrun_jobs()})


def out(path):
    """A path under the run's output folder."""
    return f"{OUT}/{path}"


def get_final_output():
    return [
        out("splits/train.parquet"),
        out("splits/test.parquet"),
        out("splits/split_report.parquet"),
        out("report/summary.md"),
        out("report/capeval_by_count.png"),
        out("report/direct_vs_cag.png"),
        out("report/controls.png"),
    ] + [
        out(f"released/{name}/{judge}/summary.parquet")
        for name in config["released_scoring"]
        for judge in config["evaluation"]["judges"]
    ]


def model_inputs(*roles, **named):
    """Named inputs plus, for a model the workflow builds itself (the tiny VLM, a GSPO-trained
    policy), its directory, so the job waits for build_tiny_vlm / train_gspo."""
    inputs = dict(named)
    for role in roles:
        spec = MODELS[role]
        if spec.backend in ("transformers", "vllm") and (
            spec.model == config["tiny_vlm"]["path"] or os.path.normpath(spec.model) in TRAINED_MODELS
        ):
            inputs[f"model_{role}"] = spec.model
    return inputs


def training_settings(run):
    """The merged settings of training run `run` (config training + training.runs.<run>)."""
    return TRAINING.for_run(run)


def training_roles(run):
    """Registry entries a training job calls: the caption reward's judge, when the run needs one."""
    settings = training_settings(run)
    needs_judge = any(task in ("caption", "joint") for task in settings.tasks())
    return [settings.judge] if needs_judge and settings.judge else []


def training_inputs(run):
    """The train split, the base model's folder when the workflow builds it, and the judge's inputs."""
    named = {"train": out("splits/train.parquet")}
    base = training_settings(run).base_model
    if base == config["tiny_vlm"]["path"] or os.path.normpath(base) in TRAINED_MODELS:
        named["base_model"] = base
    return model_inputs(*training_roles(run), **named)


def training_job_config(run):
    """What the training entry point reads, as JSON text: this run's training settings and the registry
    entries it calls, nothing else, so editing another run or model does not retrain this one."""
    section = {**config.get("training", {}), "runs": {run: config["training"]["runs"][run]}}
    job = {"training": section, "models": model_params(*training_roles(run)), "prompts": config.get("prompts") or {},
           "seed": config["seed"], "outdir": config["outdir"]}
    if "cache" in config:
        job["cache"] = config["cache"]
    return json.dumps(job, sort_keys=True)


def training_launcher(run):
    """python, or one `accelerate launch` over the job's GPUs (covip.training.settings.launch_command)."""
    return launch_command(training_settings(run), Path(workflow.basedir) / "config" / "accelerate")


def diagnostic_roles(wildcards):
    """The registry entries a diagnostic job uses: the policy, plus the judge for LAR only."""
    judge = [config["evaluation"]["diagnostic_judge"]] if wildcards.task == "lar" else []
    return [wildcards.policy, *judge]


def model_gpus(role):
    """GPUs a job needs to run this registry entry in-process (0 for APIs and stand-ins)."""
    return MODELS[role].gpus


def diagnostic_source(wildcards):
    """A user's hub-format Parquet for this diagnostic task, else the concept pool to generate from."""
    source = config["diagnostic_sources"].get(wildcards.task)
    return {"source": source} if source else {"concepts": out("concepts/concepts.parquet")}


def get_concept_source():
    """The user's photo folder or manifest, so editing it rebuilds the pool (nothing for builtin)."""
    pool = config["concept_pool"]
    return [] if pool["source"] == "builtin" else [pool["path"]]


def model_params(*roles):
    """The registry entries a stage uses; part of params, so switching a backend reruns the stage."""
    return {role: config["models"][role] for role in roles}


def stage_code(stage_module, capability_roles=()):
    """Fingerprint of the stage's package code plus the backend modules its config selects."""
    modules = [stage_module, "covip.workflow"]
    for capability, role in capability_roles:
        modules.append(backend_module(capability, MODELS[role].backend))
    return code_fingerprint(*modules)


def prompt_params(*names):
    return PROMPTS.fingerprint(*names)


def rule_resources(rule_name, key):
    """A rule's resource from config (resources.rules.<rule>.<key>), else resources.default.<key>."""
    overrides = config["resources"]["rules"].get(rule_name, {})
    return overrides.get(key, config["resources"]["default"][key])


# -- Sharding -----------------------------------------------------------------------------------
# A sharded stage runs as ceil(num_samples / size) jobs, job k on the samples with ordinal in
# [k*size, (k+1)*size) (covip.core.sharding); a gather rule concatenates the shards, in order, into the
# artifact the rest of the DAG reads. Register a stage here (rule -> artifact, schema name), list it
# in the schema's sharding.rules enum, give its rule shard_output/shard_log/shard_benchmark and
# params shard_size=shard_size(rule), and have its script select its rows with run.in_shard() (or
# pass run.shard to a streaming stage function). An artifact path may hold wildcards
# ({condition}/{policy}): each wildcard combination gets its own shards and gather job.
SHARDABLE = {
    "synthesize_queries": ("queries/queries.parquet", "queries"),
    "write_dialogues": ("dialogues/dialogues.parquet", "dialogues"),
    "write_mcqas": ("mcqa/mcqas.parquet", "mcqas"),
    "caption": ("captions/{condition}/{policy}.parquet", "captions"),
    "capeval": ("capeval/{condition}/{policy}/{judge}/answers.parquet", "capeval_answers"),
}


wildcard_constraints:
    shard=r"\d+",


def shard_size(rule_name):
    """Samples per job of a sharded stage (None: one job); a param, so resizing reruns the stage.
    sharding.sizes.<rule> overrides sharding.shard_size for one stage."""
    settings = config["sharding"]
    if rule_name not in settings["rules"]:
        return None
    return settings.get("sizes", {}).get(rule_name, settings["shard_size"])


def sharded(rule_name):
    return shard_size(rule_name) is not None


def _shard_path(path, suffix):
    """`.../name.parquet` -> `.../name.shards/{shard}.parquet`; logs and benchmarks get `.{shard}`."""
    if suffix == ".parquet":
        return path[: -len(suffix)] + ".shards/{shard}.parquet"
    return path[: -len(suffix)] + ".{shard}" + suffix


def shard_output(rule_name, artifact):
    """Where a stage job writes: the artifact itself, or its shard of it when the stage is sharded."""
    return out(_shard_path(artifact, ".parquet")) if sharded(rule_name) else out(artifact)


def shard_log(rule_name, path=None):
    """The job's log (default <logs>/<rule>.log), one per shard when the stage is sharded."""
    path = path or f"{LOGS}/{rule_name}.log"
    return _shard_path(path, ".log") if sharded(rule_name) else path


def shard_benchmark(rule_name, path=None):
    path = path or f"{OUT}/benchmarks/{rule_name}.tsv"
    return _shard_path(path, ".tsv") if sharded(rule_name) else path


def shard_inputs(rule_name, artifact):
    """Every shard of an artifact, in order (the artifact's other wildcards are kept)."""
    count = shard_count(config["synthesis"]["num_samples"], shard_size(rule_name))
    return expand(out(_shard_path(artifact, ".parquet")), shard=range(count), allow_missing=True)


def gather_log(rule_name, artifact):
    """gather_<rule>.log, or gather_<rule>/<wildcards>.log when the artifact has wildcards."""
    names = re.findall(r"{(\w+)}", artifact)
    if not names:
        return f"{LOGS}/gather_{rule_name}.log"
    return f"{LOGS}/gather_{rule_name}/" + "/".join("{%s}" % name for name in names) + ".log"


for _stage, (_artifact, _schema) in SHARDABLE.items():
    if sharded(_stage):

        rule:
            name:
                f"gather_{_stage}"
            input:
                shard_inputs(_stage, _artifact),
            output:
                out(_artifact),
            log:
                gather_log(_stage, _artifact),
            params:
                schema=_schema,
            threads: 1
            resources:
                mem_mb=rule_resources("gather_shards", "mem_mb"),
                gpu=0,
            conda:
                "../envs/data.yaml"
            script:
                "../workflow_scripts/gather_shards.py"


def capeval_outputs():
    """The answers (a shard of them when capeval is sharded) and, unsharded, the summary too; a
    sharded run's summary comes from rule summarize_capeval after the gather."""
    outputs = {"answers": shard_output("capeval", "capeval/{condition}/{policy}/{judge}/answers.parquet")}
    if not sharded("capeval"):
        outputs["summary"] = out("capeval/{condition}/{policy}/{judge}/summary.parquet")
    return outputs


def condition_input(condition, dataset):
    """The table a job of this condition reads: the original for 'intact', else the control's copy."""
    if condition == "intact":
        return out("splits/test.parquet") if dataset == "test" else out(f"diagnostics/sets/{dataset}.parquet")
    return out(f"controls/{condition}/{dataset}.parquet")


CONDITIONS = config["controls"]["conditions"]
# Diagnostics run under every condition unless controls.diagnostics is false (then intact only).
DIAGNOSTIC_CONDITIONS = CONDITIONS if config["controls"]["diagnostics"] else ["intact"]
DIAGNOSTIC_JOBS = [
    f"{policy}/{task}.{mode}"
    for policy in config["evaluation"]["policies"]
    for task in config["evaluation"]["diagnostic_tasks"]
    for mode in config["evaluation"]["diagnostic_modes"]
]


def control_keys(policies, judges=None, diagnostics=False):
    """(condition, job) pairs in a fixed order; the scripts read the condition of each input from it."""
    conditions = DIAGNOSTIC_CONDITIONS if diagnostics else CONDITIONS
    if judges is None:
        return [(c, job) for c in conditions for job in policies]
    return [(c, f"{p}/{j}") for c in conditions for p in policies for j in judges]


def control_capeval_answers():
    keys = control_keys(config["evaluation"]["policies"], config["evaluation"]["judges"])
    return [out(f"capeval/{c}/{job}/answers.parquet") for c, job in keys]


def control_diagnostic_responses():
    return [out(f"diagnostics/responses/{c}/{job}.parquet") for c, job in control_keys(DIAGNOSTIC_JOBS, diagnostics=True)]


def control_changes():
    datasets = ["test"] + [t for t in config["evaluation"]["diagnostic_tasks"]]
    return [
        out(f"controls/{c}/{d}.changes.parquet")
        for c in CONDITIONS
        if c != "intact"
        for d in (datasets if c in DIAGNOSTIC_CONDITIONS else ["test"])
    ]
