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
    ]


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
