# Config validation and the helpers every rule calls. The logic lives in covip.config (tested in
# Python); these are one-line adapters so that each rule names only its own rule name.
import os
import sys
from pathlib import Path

from snakemake.utils import validate

from covip.config.load import switched_entries
from covip.config.prepare import check_rule_names as _check_rule_names, prepare
from covip.config.general import download_entry, hub_data_names
from covip.core.names import CONDITIONS, CONTROL_CONDITIONS, DATASETS, DIAGNOSTIC_MODES, DIAGNOSTIC_TASKS, NAME_PATTERN
from covip.serving.lifeline import OWNER_ENV, owner_token


# A config file that gives a registry entry another backend replaces the entry (no options of the old
# backend carried along); Snakemake itself merges every file key by key.
config.setdefault("models", {}).update(switched_entries(workflow.overwrite_configfiles or [], Path(workflow.basedir)))
validate(config, schema="../config/schemas/config.schema.yaml")
# Checks every role, backend and setting now, so `snakemake -n` fails on a wrong config, not a job.
PREP = prepare(config, Path(workflow.basedir))
OUT = PREP.outdir
LOGS = PREP.logs
# Every job inherits these from the Snakemake process that starts it (here, or inside a SLURM
# allocation): HF_HOME and HF_HUB_OFFLINE=1 (rule download_models fetched the weights), and this
# process as the run's owner, so a job, its model servers and their GPUs end when it is killed.
os.environ.update(PREP.job_environment())
os.environ[OWNER_ENV] = owner_token()
if workflow.is_main_process:  # a lock left by a killed run: say so before Snakemake stops on it
    from covip.workflow.stale_lock import stale_lock_message

    if (_stale := stale_lock_message(os.getcwd(), sys.argv)) is not None:
        print(_stale, file=sys.stderr)
if config["human_eval"]["votes"] and not PREP.human_eval_enabled:
    print(f"human_eval.votes: {config['human_eval']['votes']} does not exist yet; no human-evaluation summary "
          "this run", file=sys.stderr)


wildcard_constraints:
    policy=NAME_PATTERN,
    judge=NAME_PATTERN,
    name=NAME_PATTERN,
    run=NAME_PATTERN,
    task="|".join(DIAGNOSTIC_TASKS),
    mode="|".join(DIAGNOSTIC_MODES),
    condition="|".join(CONDITIONS),
    dataset="|".join(DATASETS),
    shard=r"\d+",
    benchmark="|".join(PREP.general_benchmarks) or "none",
    hub_data="|".join(hub_data_names()),
    weights=r"(hub|local|open_clip)--[^/]+",


onstart:
    # `covip preflight` for the jobs about to run: keys present, endpoints answering, weights cached
    # when offline, packages importable, and (on one machine) no job asking for more GPUs than the
    # machine has. Snakemake offers no public view of the jobs about to run, so they come from its DAG.
    from covip.config.checks import check_before_run, gpu_requests, merge_response_cache

    local = workflow.local_exec and not workflow.remote_exec
    jobs = list(workflow.dag.needrun_jobs())
    own_envs = "conda" in {str(m).lower() for m in (workflow.deployment_settings.deployment_method or ())}
    check_before_run(PREP, gpu_requests(jobs) if local else None, jobs, local=local, own_envs=own_envs)
    if workflow.is_main_process:  # no job runs yet: the one moment the shared cache file may be written
        merge_response_cache(PREP)


onsuccess:
    from covip.config.checks import merge_response_cache

    if workflow.is_main_process:
        merge_response_cache(PREP)


onerror:
    from covip.config.checks import merge_response_cache

    if workflow.is_main_process:
        merge_response_cache(PREP)


def check_rule_names(rules):
    _check_rule_names(config, rules)


def out(path):
    """A path under the run's output folder."""
    return PREP.out(path)


def get_final_output():
    return PREP.final_outputs()


def log_of(rule, path=None):
    return PREP.log(rule, path)


def benchmark_of(rule, path=None):
    return PREP.benchmark(rule, path)


def threads_of(rule):
    return PREP.threads(rule)


def resources_of(rule):
    """mem_mb, runtime and gpu of a rule, from config (gpu: from its model for model rules)."""
    return PREP.resources(rule)


def _per_job(rule, answer):
    """`answer(wildcards)` per job for a rule whose models come from its wildcards, else computed once
    now (a plain value spares Snakemake evaluating a function for every job of the DAG)."""
    return answer if PREP.roles_follow_wildcards(rule) else answer({})


def conda_of(rule):
    """The conda env a job of `rule` needs: the heaviest backend among the models it runs."""
    return _per_job(rule, lambda wildcards: PREP.conda_env(rule, wildcards))


def code_of(script, rule):
    """Fingerprint of the package code a job of `rule` runs (params: an edit reruns the job)."""
    return _per_job(rule, lambda wildcards: PREP.code(script, rule, wildcards))


def models_of(rule):
    """The registry entries a job of `rule` calls (params: switching a backend reruns the job)."""
    return _per_job(rule, lambda wildcards: PREP.model_params(*PREP.role_names(rule, wildcards)))


def inputs_of(rule, **named):
    """Named inputs plus the folders of the workflow-built models a job of `rule` runs, and the
    markers of the weights it needs (ancient: a refetch does not rerun the jobs that use them)."""
    return lambda wildcards: with_ancient_weights(PREP.model_inputs(*PREP.role_names(rule, wildcards), **{
        key: value(wildcards) if callable(value) else value for key, value in named.items()
    }))


def training_inputs(run):
    return with_ancient_weights(PREP.training_inputs(run))


def with_ancient_weights(inputs):
    return {key: ancient(path) if key.startswith("weights_") else path for key, path in inputs.items()}


def weights_marker(slug):
    return PREP.weights_marker(slug)


def prompts_of(*names):
    return PREP.prompt_params(*names)


def content_of(*names):
    return PREP.content_params(*names)


def human_eval_report_inputs():
    """The human study's summary tables as extra inputs of the report (none when there are no votes)."""
    return {f"human_{name}": path for name, path in PREP.human_eval_outputs().items() if name != "votes"}


def human_eval_report_outputs():
    """The human study's plot as an extra output of the report (none when there are no votes)."""
    if not PREP.human_eval_enabled:
        return {}
    return {"human_eval_plot": report(out("report/human_eval.png"), category="Human evaluation",
                                      caption="../report/human_eval_plot.rst")}


def general_download_params(data):
    """The catalog entry a download job fetches (params: a changed repository or revision refetches)."""
    return dict(download_entry(data).__dict__)


def general_report_inputs():
    """The multi-image table as an extra input of the report (none when no general benchmark is configured)."""
    return {"general": out("report/general_summary.parquet")} if PREP.general_enabled else {}


def shard_size(rule):
    return PREP.shard_size(rule)


def stage_output(rule, artifact):
    """The artifact itself, or this job's shard of it (scratch: gathered, then removed)."""
    path = PREP.stage_output(rule, artifact)
    return temp(path) if PREP.sharded(rule) else path


def capeval_outputs():
    """The answers (a scratch shard of them when capeval is sharded) and, unsharded, the summary."""
    outputs = PREP.capeval_outputs()
    if PREP.sharded("capeval"):
        outputs["answers"] = temp(outputs["answers"])
    return outputs


def shard_log(rule, path=None):
    return PREP.shard_log(rule, PREP.log(rule, path))


def shard_benchmark(rule, path=None):
    return PREP.shard_benchmark(rule, PREP.benchmark(rule, path))
