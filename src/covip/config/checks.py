"""Checks made when the workflow starts, before any job runs (never on a dry run)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

from covip.clients.cache import merge_journals
from covip.config.prepare import Prepared
from covip.config.preflight import PreflightError, job_roles, preflight


def gpu_requests(jobs: Iterable) -> dict[str, int]:
    """rule -> the most GPUs any of `jobs` of that rule asks for (jobs: Snakemake job objects)."""
    requests: dict[str, int] = {}
    for job in jobs:
        wanted = int(job.resources.get("gpu", 0) or 0)
        requests[job.rule.name] = max(requests.get(job.rule.name, 0), wanted)
    return requests


def check_before_run(prepared: Prepared, requests: Mapping[str, int] | None, jobs: Iterable | None = None, *,
                     local: bool = True, own_envs: bool = False) -> None:
    """`covip preflight` for the jobs about to run (`jobs`; None: every entry the config names): API keys
    set (named, never printed), endpoints answering (on one machine; a cluster's nodes may see other
    hosts), weights in the cache when offline, packages importable (unless every job runs in its own
    conda env: `own_envs`), and on one machine (`requests` given) no job wanting more GPUs than it has.
    Raises PreflightError with one line per problem; what passed goes to stderr."""
    jobs = list(jobs) if jobs is not None else None
    roles = job_roles(prepared, jobs) if jobs is not None else set(prepared.models)
    runs = sorted({job.wildcards["run"] for job in jobs if job.rule.name == "train_gspo"}) if jobs is not None else []
    tasks = ({job.wildcards["task"] for job in jobs if job.rule.name == "build_diagnostic_set"} if jobs is not None
             else set(prepared.config["diagnostic_sources"]))
    report = preflight(prepared, roles, requests, training_runs=runs, diagnostic_tasks=tasks, check_endpoints=local,
                       check_packages=not own_envs)
    if report.notes:
        print("\n".join(f"preflight ok: {finding.line()}" for finding in report.notes), file=sys.stderr)
    if not report.ok:
        raise PreflightError("the run cannot start (covip preflight):\n" + "\n".join(f.line() for f in report.problems))


def cache_path(config: Mapping) -> str:
    """The response cache's store: cache.path, else <outdir>/cache/responses.sqlite."""
    return (config.get("cache") or {}).get("path") or f"{config['outdir'].rstrip('/')}/cache/responses.sqlite"


def merge_response_cache(prepared: Prepared) -> dict[str, int]:
    """Merge the jobs' cache journals into the store (Snakemake's main process, while no job runs)."""
    import sys

    outdir = prepared.config["outdir"].rstrip("/")
    stats = merge_journals(cache_path(prepared.config), usage_dir=f"{outdir}/usage", prices=prepared.config.get("prices") or {})
    if stats["journals"]:
        print(f"response cache: merged {stats['answers']} answers from {stats['journals']} job journal(s) into "
              f"{cache_path(prepared.config)} ({stats['removed']} finished journal(s) removed)", file=sys.stderr)
    if stats.get("recovered"):
        print(f"response cache: {stats['recovered']} killed job(s) had paid calls without usage rows; their usage is in "
              f"{outdir}/usage/recovered/", file=sys.stderr)
    return stats
