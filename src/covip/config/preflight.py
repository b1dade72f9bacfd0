"""`covip preflight`: what would stop a run, found before it starts, one line per problem.

For the registry entries a run needs (all the config names, or, at workflow start, those of the jobs
about to run) it checks:

- keys: the API key's environment variable is set (its name is reported, never its value);
- endpoints: an entry with a `base_url` answers `GET <base_url>/models` within a short timeout and
  lists the entry's model; an entry with a `serve:` section is started by the workflow itself, so it is
  reported as "served by the workflow" and not probed;
- weights: the weights of an in-process or served model (and of a training run's base model) are in
  the run's hub cache (`weights.hf_home`; a cache lookup, never a download), or else fetched by rule
  `download_models` before the jobs that need them; with `weights.offline: true` the rule cannot
  fetch, so a source missing from the cache is a problem;
- packages: the modules each backend (and GSPO training) imports are importable in this environment;
- GPUs: no job asks for more GPUs than are visible here.

Each finding is a `Finding`; `problems` fail the check, `notes` are said and pass.
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from covip.clients.backends import BACKENDS
from covip.config.models import role_uses
from covip.config.prepare import MODEL_GPU_WILDCARD, STAGE_ROLES, Prepared
from covip.workflow.gpu_slots import DevicePool, device_pool

KINDS = ("key", "endpoint", "weights", "package", "gpus")
TRAINING_MODULES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


@dataclass(frozen=True)
class Finding:
    kind: str  # one of KINDS
    subject: str  # what it is about: 'models.<role>', 'rule <rule>', 'backend <name>'
    message: str

    def line(self) -> str:
        return f"{self.kind}: {self.subject}: {self.message}"


@dataclass
class PreflightReport:
    problems: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self) -> str:
        lines = [f"problem: {f.line()}" for f in self.problems] + [f"ok: {f.line()}" for f in self.notes]
        return "\n".join(lines) if lines else "preflight: nothing to check"


class PreflightError(RuntimeError):
    """The run cannot start; the message has one line per problem."""


def config_roles(prepared: Prepared) -> set[str]:
    """Every registry entry the config names (what a whole run needs)."""
    return set(role_uses(prepared.config))


def job_roles(prepared: Prepared, jobs: Iterable) -> set[str]:
    """The registry entries the given Snakemake jobs call (at workflow start: the jobs about to run)."""
    return {role for job in jobs for role in prepared.role_names(job.rule.name, job.wildcards)}


def config_gpu_requests(prepared: Prepared) -> dict[str, int]:
    """rule -> the most GPUs one of its jobs can ask for under this config."""
    evaluation = prepared.config["evaluation"]
    requests = {rule: prepared.gpus(rule) for rule in [*STAGE_ROLES, *prepared.config["resources"]["rules"]]
                if rule not in MODEL_GPU_WILDCARD and rule != "train_gspo"}
    per_role = {"caption": evaluation["policies"], "diagnose": evaluation["policies"], "capeval": evaluation["judges"]}
    for rule, roles in per_role.items():
        requests[rule] = max([prepared.models[role].gpus for role in roles] or [0])
    requests["train_gspo"] = max([prepared.training_settings(run).gpus for run in prepared.training.runs] or [0])
    return {rule: n for rule, n in requests.items() if n}


def _get_models(url: str, key: str | None, timeout_s: float) -> list[str]:
    """The model ids `GET <url>` lists (an OpenAI-style /models answer)."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as answer:  # noqa: S310 - a configured endpoint
        data = json.loads(answer.read().decode("utf-8") or "{}")
    return [str(item.get("id")) for item in data.get("data") or [] if isinstance(item, Mapping)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package ('google' of 'google.genai')
        return False


def _in_hf_cache(source, hf_home: str | None = None) -> bool:
    """Whether the hub cache (HF_HOME/hub of `hf_home`, else the environment's) holds a snapshot of the
    hub source (a model repository: one with a config file; a dataset: any snapshot of its revision)."""
    from huggingface_hub import try_to_load_from_cache

    cache_dir = os.path.join(os.path.abspath(hf_home), "hub") if hf_home else None
    if source.repo_type == "dataset":
        from covip.clients.weights import WeightsError, local_path

        try:
            local_path(source, hf_home and os.path.abspath(hf_home))
        except WeightsError:
            return False
        return True
    for name in ("config.json", "open_clip_config.json", "model_index.json"):  # a model repo has one of these
        try:
            if isinstance(try_to_load_from_cache(source.location, name, cache_dir=cache_dir, revision=source.revision), str):
                return True
        except ValueError:  # not a valid repo id either
            return False
    return False


def preflight(prepared: Prepared, roles: Iterable[str], gpu_requests: Mapping[str, int] | None = None, *,
              training_runs: Iterable[str] = (), diagnostic_tasks: Iterable[str] = (), env: Mapping[str, str] | None = None, timeout_s: float = 5.0,
              check_endpoints: bool = True, check_packages: bool = True, pool: DevicePool | None = None,
              get_models: Callable[[str, str | None, float], list[str]] = _get_models) -> PreflightReport:
    """Check what `roles` (registry entries), `training_runs`, the hub sets of `diagnostic_tasks` and the
    GPU `gpu_requests` (rule -> GPUs; None: not checked) need. `check_endpoints` / `check_packages` off: cluster submission, where the
    nodes, not this host, reach the servers and run the jobs' environments."""
    env = os.environ if env is None else env
    report = PreflightReport()
    problem = lambda kind, subject, message: report.problems.append(Finding(kind, subject, message))  # noqa: E731
    note = lambda kind, subject, message: report.notes.append(Finding(kind, subject, message))  # noqa: E731
    probed: dict[str, list[str] | str] = {}
    needed_backends: dict[str, set[str]] = {}
    for role in sorted(set(roles)):
        spec = prepared.models[role]
        subject = f"models.{role}"
        needed_backends.setdefault(spec.backend, set()).add(role)
        if spec.key_env:
            if env.get(spec.key_env):
                note("key", subject, f"{spec.key_env} is set")
            else:
                problem("key", subject, f"the environment variable {spec.key_env} is not set")
        if spec.serve is not None:
            note("endpoint", subject, "served by the workflow (started, health-checked and stopped by it)")
            if spec.serve.command == "vllm":  # `vllm serve` runs in the job's environment
                needed_backends.setdefault("vllm", set()).add(role)
        elif spec.backend == "openai" and spec.base_url:
            if check_endpoints:
                url = spec.base_url.rstrip("/") + "/models"
                if url not in probed:
                    try:
                        probed[url] = get_models(url, env.get(spec.key_env) if spec.key_env else None, timeout_s)
                    except (OSError, urllib.error.URLError, ValueError) as error:
                        probed[url] = f"{type(error).__name__}: {error}"
                found = probed[url]
                if isinstance(found, str):
                    problem("endpoint", subject, f"GET {url} failed within {timeout_s:g} s ({found}); start the "
                                                 "server, or fix base_url")
                elif found and spec.model not in found:
                    problem("endpoint", subject, f"{url} serves {found}, not '{spec.model}'; fix `model` or the "
                                                 "server's served model name")
                else:
                    note("endpoint", subject, f"{url} answers")
        if BACKENDS[spec.backend].kind == "in_process" or spec.serve is not None:
            _check_weights(prepared, prepared.weights_source_of(role), spec.model, subject, problem, note)
    for run in training_runs:
        settings = prepared.training_settings(run)
        _check_weights(prepared, prepared.training_base_weights(run), settings.base_model,
                       f"training.runs.{run}.base_model", problem, note)
    for task in sorted(set(diagnostic_tasks)):
        if (source := prepared.diagnostic_hub_source(task)) is not None:
            _check_weights(prepared, source, None, f"diagnostic_sources.{task}", problem, note)
    if check_packages:
        for backend, users in sorted(needed_backends.items()):
            for module in BACKENDS[backend].modules:
                if not _importable(module):
                    problem("package", f"backend {backend}", f"module '{module}' is not importable in this environment "
                                                             f"(needed by {', '.join(f'models.{r}' for r in sorted(users))})")
        for run in training_runs:
            settings = prepared.training_settings(run)
            modules = list(TRAINING_MODULES) + (["deepspeed"] if settings.deepspeed and settings.gpus > 1 else [])
            modules += ["vllm"] if settings.use_vllm else []
            for module in modules:
                if not _importable(module):
                    problem("package", f"training.runs.{run}", f"module '{module}' is not importable in this environment")
    if gpu_requests is not None:
        pool = pool or device_pool(env)
        for rule, wanted in sorted(gpu_requests.items()):
            if wanted > len(pool.devices):
                problem("gpus", f"rule {rule}", f"asks for {wanted} GPU(s) but only {len(pool.devices)} are available here "
                                                f"({pool.source}: {','.join(pool.devices) or 'none'})")
    return report


def _check_weights(prepared: Prepared, source, model: str | None, subject: str, problem, note) -> None:
    """`source`: the entry's WeightsSource (None: built by the workflow, a local folder, or no weights)."""
    if source is None:
        if model and prepared.is_built_here(model):
            note("weights", subject, f"{model} is built by the workflow")
        elif model and Path(model).exists():
            note("weights", subject, f"{model} is on local disk")
        return
    if source.kind != "hub":
        note("weights", subject, f"{source.text}: checked by rule download_models")
        return
    settings = prepared.config.get("weights") or {}
    hf_home = settings.get("hf_home")
    where = f"the hub cache of weights.hf_home ({hf_home})" if hf_home else "the Hugging Face cache"
    if _in_hf_cache(source, hf_home):
        note("weights", subject, f"{source.text} is in {where}")
    elif settings.get("offline"):
        repo_flag = "--repo-type dataset " if source.repo_type == "dataset" else ""
        problem("weights", subject, f"'{source.text}' is not in {where}, and weights.offline: true forbids rule "
                                    f"download_models to fetch it; seed the cache (`hf download {repo_flag}{source.location}`) "
                                    "or set weights.offline: false")
    else:
        note("weights", subject, f"{source.text} is not in {where} yet: rule download_models fetches it first")


def preflight_configfiles(configfiles: Iterable[str], *, timeout_s: float = 5.0) -> PreflightReport:
    """`covip preflight --configfile ...`: everything the config names (a whole run), on this machine."""
    from covip.config.load import load_prepared

    prepared = load_prepared(list(configfiles))
    return preflight(prepared, config_roles(prepared), config_gpu_requests(prepared),
                     training_runs=sorted(prepared.training.runs), diagnostic_tasks=prepared.config["diagnostic_sources"],
                     timeout_s=timeout_s)
