"""What the workflow knows once its config is read: checked models and roles, training runs, and what
each rule needs (inputs of workflow-built models, params, resources, conda env, code fingerprint).

`prepare(config)` runs while Snakemake parses the workflow (rules/common.smk calls it), so a wrong
role, backend or setting fails `snakemake -n` with the entry and the key named, never a job. The
rules stay thin: each directive calls one method here, keyed by the rule's own name.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from covip.clients.backends import BACKENDS, ENV_ORDER, backend_module
from covip.config.general import ConfigError, GeneralLayout, check_general  # noqa: F401 - ConfigError is public here
from covip.clients.weights import HUB, HUB_DATASETS, WeightsSource, parse_source, source_of
from covip.config.layout import Layout
from covip.config.protocol import ProtocolChoice, apply_protocol
from covip.config.models import STAGE_ROLES, RegistryCheckError, check_roles, settle_image_limits
from covip.clients.spec import ModelSpec
from covip.content.book import content_fingerprint
from covip.core.fingerprint import code_fingerprint, imported_modules
from covip.core.settings import settings_from
from covip.prompts import PromptBook
from covip.training.settings import TrainingSettings, launch_command

# Rules whose GPU count is their model's `gpus:` (the wildcard that names the model).
MODEL_GPU_WILDCARD = {"caption": "policy", "capeval": "judge", "capeval_one_pass": "judge", "score_released": "judge",
                      "diagnose": "policy", "general_benchmark": "policy"}
RESOURCE_KEYS = ("mem_mb", "runtime", "slurm_partition")
# Where rule download_models writes one marker per weights source it fetched (covip.clients.weights).
WEIGHTS_MARKERS = "resources/weights"
SERVE_ENTRIES_ENV = "COVIP_SERVE_ENTRIES"  # JSON {entry: registry entry} of the run's served entries


@dataclass
class Prepared(Layout, GeneralLayout):
    """The workflow's config after checking, with the per-rule helpers the .smk files call."""

    config: dict
    root: Path  # the repository (workflow_scripts/, envs/, config/accelerate/)
    models: dict[str, ModelSpec]
    training: TrainingSettings
    prompts: PromptBook
    trained_models: dict[str, str] = field(default_factory=dict)  # <outdir>/training/<run>/model -> run
    protocol: ProtocolChoice = field(default_factory=lambda: ProtocolChoice("default", ()))  # the measurement protocol

    # -- paths --------------------------------------------------------------------------------------
    @property
    def outdir(self) -> str:
        return self.config["outdir"].rstrip("/")

    @property
    def logs(self) -> str:
        return f"{self.outdir}/logs"

    def out(self, path: str) -> str:
        """A path under the run's output folder."""
        return f"{self.outdir}/{path}"

    def log(self, rule: str, path: str | None = None) -> str:
        """The rule's log under <outdir>/logs (path: wildcards, e.g. 'caption/{condition}/{policy}')."""
        return f"{self.logs}/{path or rule}.log"

    def benchmark(self, rule: str, path: str | None = None) -> str:
        return f"{self.outdir}/benchmarks/{path or rule}.tsv"

    # -- models ------------------------------------------------------------------------------------
    def spec(self, role: str) -> ModelSpec:
        return self.models[role]

    def is_built_here(self, model: str) -> bool:
        """A model folder the workflow writes itself: the tiny VLM or a GSPO-trained policy."""
        return model == self.config["tiny_vlm"]["path"] or os.path.normpath(model) in self.trained_models

    def model_inputs(self, *roles: str, **named) -> dict:
        """Named inputs plus, for a model the workflow builds itself, its folder, so the job waits for
        build_tiny_vlm / train_gspo; and for weights fetched from elsewhere, the marker of rule
        download_models (key `weights_<source>`, wrapped in ancient() by rules/common.smk)."""
        inputs = dict(named)
        for role in roles:
            spec = self.models[role]
            if (BACKENDS[spec.backend].kind == "in_process" or spec.serve is not None) and self.is_built_here(spec.model):
                inputs[f"model_{role}"] = spec.model
            source = self.weights_source_of(role)
            if source is not None:
                inputs[f"weights_{source.slug}"] = self.weights_marker(source.slug)
        return inputs

    def model_params(self, *roles: str) -> dict:
        """The registry entries a job uses; part of params, so switching a backend reruns the job. How
        a model is served (`serve:`: GPUs, server flags) is deployment, not result: left out, except
        the request dialect it implies (vLLM's or llama.cpp's sampling keys), which shapes every body."""
        return {role: self._entry_for_job(role) for role in roles}

    def _entry_for_job(self, role: str) -> dict:
        entry = {k: v for k, v in self.config["models"][role].items() if k != "serve"}
        if self.models[role].serve is not None and self.models[role].backend == "openai":
            entry["api_dialect"] = self.models[role].dialect
        return entry

    def served_roles(self, rule: str, wildcards: Mapping | None = None) -> list[str]:
        """The entries a job calls that the workflow serves (each started once, in the job)."""
        return [role for role in dict.fromkeys(self.role_names(rule, wildcards)) if self.models[role].serve is not None]

    def served_role_list(self, rule: str, wildcards: Mapping | None = None) -> str:
        """The served entries of a shell rule's job, comma-separated, for `covip gpu-run --serve`."""
        return ",".join(self.served_roles(rule, wildcards))

    # -- weights (rule download_models) ------------------------------------------------------------
    def weights_source_of(self, role: str) -> WeightsSource | None:
        return source_of(self.models[role], self.is_built_here)

    @property
    def weights_sources(self) -> dict[str, WeightsSource]:
        """slug -> source, for every weights source some job of this run may need."""
        sources = [self.weights_source_of(role) for role in self.models]
        for run in self.training.runs:
            sources.append(self.training_base_weights(run))
        sources += [self.diagnostic_hub_source(task) for task in self.config["diagnostic_sources"]]
        return {source.slug: source for source in sources if source is not None}

    def weights_marker(self, slug: str) -> str:
        return f"{WEIGHTS_MARKERS}/{slug}.json"

    def weights_params(self, slug: str) -> dict:
        """What a download job fetches (a param: another source or hf_home refetches)."""
        if slug not in self.weights_sources:
            raise ConfigError(f"rule download_models: no weights source '{slug}' (have: {sorted(self.weights_sources)})")
        return {"source": self.weights_sources[slug].text, "hf_home": self.config["weights"].get("hf_home")}

    def job_environment(self) -> dict[str, str]:
        """Environment every job of this run gets (set in the Snakemake process at parse time, so jobs
        on this machine and in a SLURM allocation inherit it): HF_HOME, and HF_HUB_OFFLINE=1 so no job
        goes to the hub (rule download_models fetched what they need)."""
        settings = self.config["weights"]
        env = {}
        if settings.get("hf_home"):
            env["HF_HOME"] = os.path.abspath(settings["hf_home"])
        if settings.get("jobs_offline", True):
            env["HF_HUB_OFFLINE"] = "1"
        served = {name: entry for name, entry in self.config["models"].items() if entry.get("serve") is not None}
        if served:  # what `covip gpu-run --serve` starts; not a param, so server flags rerun nothing
            env[SERVE_ENTRIES_ENV] = json.dumps(served, sort_keys=True)
        return env

    def prompt_params(self, *names: str) -> str:
        return self.prompts.fingerprint(*names)

    def content_params(self, *names: str) -> str:
        """Fingerprint of the content files a job reads, as this run uses them (its replacements included)."""
        return content_fingerprint(self.config.get("content"), *names)

    # -- what each rule runs -------------------------------------------------------------------------
    def roles(self, rule: str, wildcards: Mapping | None = None) -> list[tuple[str, str]]:
        """(capability, registry entry) pairs a job of `rule` calls."""
        wildcards = wildcards or {}
        if rule in STAGE_ROLES:
            return list(STAGE_ROLES[rule])
        if rule in ("caption", "general_benchmark"):
            return [("chat", wildcards["policy"])]
        if rule in ("capeval", "capeval_one_pass", "score_released"):
            return [("chat", wildcards["judge"])]
        if rule == "diagnose":  # one job per (condition, policy) answers every task; LAR needs the judge
            lar = "lar" in self.config["evaluation"]["diagnostic_tasks"]
            judge = [("chat", self.config["evaluation"]["diagnostic_judge"])] if lar else []
            return [("chat", wildcards["policy"]), *judge]
        if rule == "train_gspo":
            return [("chat", role) for role in self.training_roles(wildcards["run"])]
        return []

    @staticmethod
    def roles_follow_wildcards(rule: str) -> bool:
        """Whether the models a job of `rule` runs depend on its wildcards (policy, judge, run)."""
        return rule in MODEL_GPU_WILDCARD or rule == "train_gspo"

    def role_names(self, rule: str, wildcards: Mapping | None = None) -> list[str]:
        return [role for _, role in self.roles(rule, wildcards)]

    def code(self, script: str, rule: str, wildcards: Mapping | None = None) -> str:
        """Fingerprint of the package code a job runs: every covip module its workflow script (or, for
        a shell rule, its entry module) imports, transitively, plus the backend modules of its models."""
        if script.endswith(".py"):
            roots = sorted(imported_modules(self.root / "workflow_scripts" / script))
        else:
            roots = [script]
        roots += [backend_module(capability, self.models[role].backend) for capability, role in self.roles(rule, wildcards)]
        return code_fingerprint(*roots)

    def gpus(self, rule: str, wildcards: Mapping | None = None) -> int:
        """GPUs a job needs: its in-process model's `gpus:` for model rules, the run's for train_gspo,
        else config; plus `serve.gpus` of every entry it calls that the workflow serves (the job starts
        those servers on devices of its own, so Snakemake counts them against --resources gpu=N)."""
        served = sum(self.models[role].serve.gpus for role in self.served_roles(rule, wildcards))
        if rule == "train_gspo":
            return self.training_settings(wildcards["run"]).gpus + served
        if rule in MODEL_GPU_WILDCARD:
            own = [self.models[role].gpus for role in self.role_names(rule, wildcards) if self.models[role].serve is None]
            return max(own, default=0) + served
        return int(self.resource(rule, "gpu")) + served

    def conda_env(self, rule: str, wildcards: Mapping | None = None) -> str:
        """The env of the heaviest backend a job runs, or of the servers it starts (envs/<env>.yaml,
        relative to rules/). GSPO with vLLM rollouts, or with a vLLM-served judge, needs the rollout
        env (TRL's vLLM range, envs/rollout.yaml)."""
        roles = self.role_names(rule, wildcards)
        envs = [BACKENDS[self.models[role].backend].env for role in roles]
        envs += [self.models[role].serve.conda_env for role in self.served_roles(rule, wildcards)]
        if rule == "train_gspo":
            settings = self.training_settings(wildcards["run"])
            rollouts = settings.use_vllm is True or (settings.use_vllm is None and settings.gpus > 0)
            return f"../envs/{'rollout' if rollouts or 'vllm' in envs else 'train'}.yaml"
        if rule == "build_tiny_vlm":
            envs.append("train")
        return f"../envs/{max(envs or ['data'], key=ENV_ORDER.index)}.yaml"

    # -- resources ---------------------------------------------------------------------------------
    def resource(self, rule: str, key: str) -> Any:
        """resources.rules.<rule>.<key>, else resources.default.<key> (None when neither sets it).
        capeval_one_pass without an entry of its own takes capeval's."""
        rules = self.config["resources"]["rules"]
        overrides = rules.get(rule, rules.get("capeval", {}) if rule == "capeval_one_pass" else {})
        return overrides.get(key, self.config["resources"]["default"].get(key))

    def threads(self, rule: str) -> int:
        return int(self.resource(rule, "threads"))

    def resources(self, rule: str) -> dict:
        """The `resources:` of a rule: mem_mb, runtime (minutes) and slurm_partition from config, gpu
        from its model or config. Without a partition in config, $SBATCH_PARTITION becomes the rule's
        slurm_partition: the SLURM plugin passes `-p <cluster default>` to sbatch when a job has none,
        and that flag would win over the variable (docs/gpus-and-slurm.md)."""
        found = {key: self.resource(rule, key) for key in RESOURCE_KEYS if self.resource(rule, key) is not None}
        if "slurm_partition" not in found and os.environ.get("SBATCH_PARTITION"):
            found["slurm_partition"] = os.environ["SBATCH_PARTITION"]
        if rule in MODEL_GPU_WILDCARD or rule == "train_gspo":
            found["gpu"] = lambda wildcards: self.gpus(rule, wildcards)
        else:
            found["gpu"] = self.gpus(rule)
        return found

    # -- CapEval-QA: one job per caption table, or one pass per judge --------------------------------
    def capeval_one_pass(self, judge: str) -> bool:
        """Whether rule capeval_one_pass judges this judge's tables (capeval.one_pass; null: when the
        judge is loaded in the job and capeval is not sharded)."""
        choice = (self.config.get("capeval") or {}).get("one_pass")
        if choice is not None:
            return bool(choice)
        spec = self.models[judge]
        return spec.serve is None and BACKENDS[spec.backend].kind != "api" and not self.sharded("capeval")

    def one_pass_judges(self) -> list[str]:
        """The run's judges that rule capeval_one_pass serves (rule capeval serves the others)."""
        return [judge for judge in self.config["evaluation"]["judges"] if self.capeval_one_pass(judge)]

    # -- training (stage 8) ------------------------------------------------------------------------
    def training_settings(self, run: str) -> TrainingSettings:
        """The merged settings of training run `run` (config training + training.runs.<run>)."""
        return self.training.for_run(run)

    def training_roles(self, run: str) -> list[str]:
        """Registry entries a training job calls: the caption reward's judge, when the run needs one."""
        settings = self.training_settings(run)
        needs_judge = any(task in ("caption", "joint") for task in settings.tasks())
        return [settings.judge] if needs_judge and settings.judge else []

    def training_base_weights(self, run: str) -> WeightsSource | None:
        """The base model's weights when they come from the hub (or a local:// source)."""
        base = self.training_settings(run).base_model
        if self.is_built_here(base):
            return None
        source = parse_source(base)
        return source if source.kind == "hub" or base.startswith("local://") else None

    def training_inputs(self, run: str) -> dict:
        """The train split, the base model's folder when the workflow builds it (else its weights
        marker), and the judge's inputs."""
        named = {"train": self.out("splits/train.parquet")}
        base = self.training_settings(run).base_model
        if self.is_built_here(base):
            named["base_model"] = base
        source = self.training_base_weights(run)
        if source is not None:
            named[f"weights_{source.slug}"] = self.weights_marker(source.slug)
        return self.model_inputs(*self.training_roles(run), **named)

    def training_job_config(self, run: str) -> str:
        """What `covip train` reads, as JSON text: this run's settings and the registry entries it calls,
        nothing else, so editing another run or model does not retrain this one."""
        section = {**self.config.get("training", {}), "runs": {run: self.config["training"]["runs"][run]}}
        job = {"training": section, "models": self.model_params(*self.training_roles(run)),
               "prompts": self.config.get("prompts") or {}, "seed": self.config["seed"], "outdir": self.config["outdir"]}
        if "cache" in self.config:
            job["cache"] = self.config["cache"]
        return json.dumps(job, sort_keys=True)

    def training_launcher(self, run: str) -> str:
        """python, or one `accelerate launch` over the job's GPUs (covip.training.settings.launch_command)."""
        return launch_command(self.training_settings(run), self.root / "config" / "accelerate")

    def training_params(self, run: str) -> dict:
        return dataclasses.asdict(self.training_settings(run))

    # -- diagnostics and concept sources -------------------------------------------------------------
    def diagnostic_hub_source(self, task: str) -> WeightsSource | None:
        """The hub dataset (`hf://datasets/org/name[@revision]`) a diagnostic task's set comes from, if any."""
        text = self.config["diagnostic_sources"].get(task)
        return parse_source(text) if text and text.startswith(HUB_DATASETS) else None

    def diagnostic_source(self, task: str) -> dict:
        """What build_diagnostic_set reads for `task`: the marker of a hub dataset rule download_models
        fetched (key `weights_set`), a local copy in a hub layout (`source`), else the concept pool."""
        hub = self.diagnostic_hub_source(task)
        if hub is not None:
            return {"weights_set": self.weights_marker(hub.slug)}
        source = self.config["diagnostic_sources"].get(task)
        return {"source": source} if source else {"concepts": self.out("concepts/concepts.parquet")}

    # -- human evaluation ----------------------------------------------------------------------------
    def human_eval_roles(self) -> tuple[list[str], list[str]]:
        """The policies and judges the human study compares (default: the evaluation's)."""
        section, evaluation = self.config["human_eval"], self.config["evaluation"]
        return list(section.get("policies") or evaluation["policies"]), list(section.get("judges") or evaluation["judges"])

    @property
    def human_eval_enabled(self) -> bool:
        """True once human_eval.votes names a votes database that exists (`covip human-eval serve` made it)."""
        votes = self.config["human_eval"].get("votes")
        return bool(votes) and os.path.exists(votes)

    def human_eval_outputs(self) -> dict:
        """The summary's tables (none when there are no votes)."""
        if not self.human_eval_enabled:
            return {}
        return {name: self.out(f"human_eval/{name}.parquet") for name in ("votes", "pairs", "ranking", "agreement")}

    # -- the authors' released test set --------------------------------------------------------------
    def released_test_inputs(self) -> dict:
        """The released JSONL and ground truth (inputs of import_released_test; editing them reimports)."""
        section = self.config["released_test"]
        return {"meta": section["meta"], "qas_gt": section["qas_gt"]}

    def released_test_image_root(self) -> str:
        return self.config["released_test"]["image_root"]

    def concept_source(self) -> list[str]:
        """The user's photo folder or manifest, so editing it rebuilds the pool (nothing for builtin)."""
        pool = self.config["concept_pool"]
        return [] if pool["source"] == "builtin" else [pool["path"]]


def standalone_config(configfiles) -> bool:
    """Whether one of the command line's config files declares `standalone: true` (it is then the whole
    config: the embedded default config/config.yaml is not merged under it)."""
    import yaml

    for path in configfiles or ():
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if isinstance(data, dict) and data.get("standalone") is True:
            return True
    return False


def check_stage_settings(config: Mapping) -> None:
    """Build every stage's settings dataclass from its section, so a value its checks refuse
    (`controls.severity: 2.0`) fails the dry run, naming the key, instead of the job an hour in."""
    from covip.config.schema import STAGE_SETTINGS, settings_class

    for section in STAGE_SETTINGS:
        if section != "training":  # checked run by run above
            settings_from(settings_class(section), config.get(section), f"config '{section}'")


def check_test_source(config: Mapping) -> None:
    """evaluation.test_source 'released' needs the three paths of released_test."""
    source = config["evaluation"].get("test_source", "built")
    if source not in ("built", "released"):
        raise ConfigError(f"evaluation.test_source: {source!r}; choose 'built' or 'released'")
    if source == "released":
        section = config.get("released_test") or {}
        missing = [key for key in ("meta", "qas_gt", "image_root") if not section.get(key)]
        if missing:
            raise ConfigError(f"evaluation.test_source is 'released' but released_test.{', released_test.'.join(missing)} "
                              "is not set (the JSONL of samples, its QAS_GT_test.json and the image folder)")


def check_adapters(models: Mapping[str, ModelSpec]) -> None:
    """A LoRA adapter an in-process entry names is a folder or hub id, and a local folder holds an
    adapter_config.json (the option keys themselves are checked against covip.clients.backends)."""
    for name, spec in models.items():
        adapter = spec.options.get("adapter")
        if adapter is not None:
            if not isinstance(adapter, str) or not adapter.strip():
                raise ConfigError(f"models.{name}.options.adapter: a LoRA adapter folder or hub id, got {adapter!r}")
            config_file = os.path.join(adapter, "adapter_config.json")
            if os.path.isdir(adapter) and not os.path.isfile(config_file):
                raise ConfigError(f"models.{name}.options.adapter: {adapter} has no adapter_config.json (not a peft LoRA "
                                  "adapter; a merged model goes in `model`)")
            if spec.backend == "vllm" and os.path.isfile(config_file):
                with open(config_file, encoding="utf-8") as handle:
                    saved = (json.load(handle) or {}).get("modules_to_save")
                if saved:
                    raise ConfigError(f"models.{name}.options.adapter: {adapter} trains {saved} in full (modules_to_save), "
                                      "which vLLM cannot serve; merge it into the base, or use backend 'transformers'")


def check_diagnostic_sources(config: Mapping) -> None:
    """A hub source in `diagnostic_sources` names a dataset, spelled as huggingface_hub spells it."""
    for task, text in config["diagnostic_sources"].items():
        if text.startswith(HUB) and not text.startswith(HUB_DATASETS):
            raise ConfigError(f"diagnostic_sources.{task}: '{text}' names a model repository; a hub dataset is "
                              f"'{HUB_DATASETS}{text[len(HUB):]}'")
        if text.startswith(HUB_DATASETS):
            try:
                parse_source(text)
            except ValueError as error:
                raise ConfigError(f"diagnostic_sources.{task}: {error}") from None


def check_rule_names(config: Mapping, rules: list[str]) -> None:
    """Every rule named under resources.rules exists (a misspelled name would be silently ignored)."""
    optional = {"gather_shards", "capeval", "capeval_one_pass", "summarize_capeval", "human_eval_summary",
                "general_benchmark", "collect_general", "build_tiny_benchmark", "download_benchmark_data",
                "import_released_test"}  # rules of some runs only
    unknown = sorted(set(config["resources"]["rules"]) - set(rules) - optional)
    if unknown:
        raise ConfigError(f"resources.rules: no rule named {unknown}; the rules are {sorted(rules)}")


def prepare(config: dict, root: str | Path) -> Prepared:
    """Check `config` (already validated against its JSON schema) and resolve what the rules need.

    Resolves "{outdir}" in registry entries (a GSPO-trained policy lives under the run's outdir),
    builds every registry entry (unknown keys, backends, options and sampling keys its dialect cannot
    take are errors), checks that every role the config names is an entry whose backend serves it,
    reads the training settings, fills the measurement protocol's switches (`covip.config.protocol`)
    before checking every stage's settings, and settles the image limit of every in-process vLLM
    entry (covip.config.models).
    """
    outdir = config["outdir"].rstrip("/")
    config.setdefault("weights", {})
    for entry in config["models"].values():
        for key in ("model", "weights"):
            if isinstance(entry.get(key), str) and "{outdir}" in entry[key]:
                entry[key] = entry[key].replace("{outdir}", outdir)
    models = {name: ModelSpec.from_config(name, entry) for name, entry in config["models"].items()}
    training = settings_from(TrainingSettings, config.get("training"), "config 'training'")
    try:
        check_roles(config, models)  # every role an entry, serving what the role asks
    except RegistryCheckError as error:
        raise ConfigError(str(error)) from None
    for run in training.runs:
        training.for_run(run)  # unknown or missing settings of a run fail now, not in its job
    for role in [*(config["human_eval"].get("policies") or []), *(config["human_eval"].get("judges") or [])]:
        if role not in models:
            raise ConfigError(f"human_eval: '{role}' is not an entry of the models registry (have: {sorted(models)})")
    protocol = apply_protocol(config)  # fills the null protocol switches before the settings are checked
    check_stage_settings(config)
    check_test_source(config)
    check_diagnostic_sources(config)
    check_adapters(models)
    try:
        models = settle_image_limits(config, models)  # vLLM's image limit fits the largest request
    except RegistryCheckError as error:
        raise ConfigError(str(error)) from None
    trained = {os.path.normpath(f"{outdir}/training/{run}/model"): run for run in training.runs}
    prepared = Prepared(config=config, root=Path(root), models=models, training=training,
                        prompts=PromptBook(config.get("prompts") or {}), trained_models=trained, protocol=protocol)
    try:
        prepared.weights_sources  # a malformed `weights:` source fails the dry run
    except ValueError as error:
        raise ConfigError(f"models: {error}") from error
    check_general(config, models, prepared)
    if (config.get("capeval") or {}).get("one_pass") and prepared.sharded("capeval"):
        raise ConfigError("capeval.one_pass: true judges whole caption tables, but sharding.rules shards capeval; "
                          "drop one of them (capeval.one_pass: null picks one job per shard when sharded)")
    return prepared
