"""Checks made when the workflow starts, before any job runs (never on a dry run)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from covip.clients.cache import merge_journals
from covip.clients.spec import check_credentials
from covip.config.prepare import Prepared
from covip.workflow.gpu_slots import check_requests


def gpu_requests(jobs: Iterable) -> dict[str, int]:
    """rule -> the most GPUs any of `jobs` of that rule asks for (jobs: Snakemake job objects)."""
    requests: dict[str, int] = {}
    for job in jobs:
        wanted = int(job.resources.get("gpu", 0) or 0)
        requests[job.rule.name] = max(requests.get(job.rule.name, 0), wanted)
    return requests


def check_before_run(prepared: Prepared, requests: Mapping[str, int] | None) -> None:
    """A remote backend without its API key fails here, naming the environment variable (the key is
    never printed); on one machine (`requests` given), a job that wants more GPUs than the machine
    has fails now, not hours into the run. Cluster jobs are checked by the scheduler on their node."""
    for spec in prepared.models.values():
        check_credentials(spec)
    if requests is not None:
        check_requests(requests)


def cache_path(config: Mapping) -> str:
    """The response cache's store: cache.path, else <outdir>/cache/responses.sqlite."""
    return (config.get("cache") or {}).get("path") or f"{config['outdir'].rstrip('/')}/cache/responses.sqlite"


def merge_response_cache(prepared: Prepared) -> dict[str, int]:
    """Merge the jobs' cache journals into the store (Snakemake's main process, while no job runs)."""
    import sys

    stats = merge_journals(cache_path(prepared.config))
    if stats["journals"]:
        print(f"response cache: merged {stats['answers']} answers from {stats['journals']} job journal(s) into "
              f"{cache_path(prepared.config)} ({stats['removed']} finished journal(s) removed)", file=sys.stderr)
    return stats
