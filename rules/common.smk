# Config validation, paths and the small helpers every rule uses.
import json
from pathlib import Path

from snakemake.utils import validate

from covip.clients.registry import ModelSpec, backend_module
from covip.fingerprint import code_fingerprint
from covip.prompts import PromptBook


validate(config, schema="../config/schemas/config.schema.yaml")

OUT = config["outdir"].rstrip("/")
LOGS = f"{OUT}/logs"
PROMPTS = PromptBook(config["prompts"])
MODELS = {name: ModelSpec.from_config(name, entry) for name, entry in config["models"].items()}
for _role in [*config["evaluation"]["policies"], *config["evaluation"]["judges"], config["evaluation"]["diagnostic_judge"]]:
    if _role not in MODELS:
        raise ValueError(f"evaluation: '{_role}' is not an entry of the models registry (have: {sorted(MODELS)})")


onstart:
    # A remote backend without its API key fails here, before any job runs (and never on a dry run),
    # naming the environment variable; the key itself is never printed.
    from covip.clients.registry import check_credentials

    for spec in MODELS.values():
        check_credentials(spec)


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
    """Named inputs plus, for a model the workflow builds itself (the tiny VLM), its directory."""
    inputs = dict(named)
    for role in roles:
        spec = MODELS[role]
        if spec.backend in ("transformers", "vllm") and spec.model == config["tiny_vlm"]["path"]:
            inputs[f"model_{role}"] = spec.model
    return inputs


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
