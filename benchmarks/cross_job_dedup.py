"""Jobs running at the same time with overlapping requests: how many requests does the server get twice?

    python -m benchmarks --only dedup        (or: python -m benchmarks.cross_job_dedup)

`jobs` worker processes share one response cache, start at the same instant and each send `per_job`
requests, an `overlap` share of which every job sends (the same judge prompt under two controls).
The server (tests/support/fault_server.py's SlowServer, answering after `latency_s`) counts the bodies
it answered. Run once with the claims switched off (COVIP_CACHE_CLAIMS=0: the cache before issue 17)
and once with them. Also measures what the claims cost one job alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requests_of(index: int, per_job: int, overlap: float) -> list[str]:
    shared = int(round(per_job * overlap))
    return [f"shared question {i}" for i in range(shared)] + [f"job {index} question {i}" for i in range(per_job - shared)]


def worker(cache: str, base_url: str, index: int, per_job: int, overlap: float, start_at: float) -> None:
    from covip.clients.base import ChatRequest, Message
    from covip.clients.registry import ModelRegistry

    entry = {"backend": "openai", "model": "fault-model", "base_url": base_url, "max_retries": 2, "timeout_s": 30,
             "concurrency": 16}
    registry = ModelRegistry({"judge": entry}, cache_path=cache, job=f"bench/{index}", rule="bench")
    model = registry.chat("judge")
    requests = [ChatRequest([Message.user(text)], {"temperature": 0}) for text in requests_of(index, per_job, overlap)]
    model.inner.complete  # built before the start line, so the jobs really start together
    time.sleep(max(0.0, start_at - time.time()))
    began = time.perf_counter()
    answers = model.complete_many(requests, progress_file=open(os.devnull, "w"))
    seconds = time.perf_counter() - began
    registry.close()
    usage = model.usage.summary()
    print(json.dumps({"ok": sum(a.ok for a in answers), "seconds": seconds, "requests": usage["requests"],
                      "cache_hits": usage["cache_hits"]}))


def run_jobs(cache: Path, base_url: str, jobs: int, per_job: int, overlap: float, claims: bool) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), COVIP_CACHE_CLAIMS="1" if claims else "0")
    start_at = time.time() + 5.0  # every worker imported and built by then, even on a loaded machine
    processes = [subprocess.Popen([sys.executable, "-m", "benchmarks.cross_job_dedup", "worker", str(cache), base_url,
                                   str(i), str(per_job), str(overlap), str(start_at)],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for i in range(jobs)]
    out = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        if process.returncode != 0:
            raise RuntimeError(f"worker failed: {stderr[-2000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def run(jobs: int = 3, per_job: int = 60, overlap: float = 0.4, latency_s: float = 0.2) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.fault_server import SlowServer

    distinct = len(set().union(*(requests_of(i, per_job, overlap) for i in range(jobs))))
    result: dict = {"jobs": jobs, "per_job": per_job, "overlap": overlap, "latency_s": latency_s, "distinct": distinct}
    for label, claims in (("before", False), ("after", True)):
        with tempfile.TemporaryDirectory(prefix="covip-dedup-") as tmp, SlowServer(latency_s) as server:
            workers = run_jobs(Path(tmp) / "cache" / "responses.sqlite", server.base_url, jobs, per_job, overlap, claims)
            answered = server.total_completions
            result[label] = {"server_answered": answered, "duplicates": answered - len(server.completions),
                             "all_ok": all(w["ok"] == per_job for w in workers),
                             "job_seconds": [round(w["seconds"], 3) for w in workers]}
    result["single_job"] = single_job_cost()
    return result


def single_job_cost(n: int = 300, repeats: int = 3) -> dict:
    """One job alone, server without latency: wall time of n fresh requests with and without claims,
    and the bare cost of one claim plus its release on this file system."""
    sys.path.insert(0, str(ROOT / "tests"))
    from covip.clients.claims import Claims
    from support.fault_server import SlowServer

    times: dict[str, list[float]] = {"without_claims": [], "with_claims": []}
    for _ in range(repeats):
        for label, claims in (("without_claims", False), ("with_claims", True)):
            with tempfile.TemporaryDirectory(prefix="covip-dedup-") as tmp, SlowServer(0.0) as server:
                [w] = run_jobs(Path(tmp) / "responses.sqlite", server.base_url, 1, n, 0.0, claims)
                times[label].append(w["seconds"])
    with tempfile.TemporaryDirectory(prefix="covip-claims-") as tmp:
        book = Claims(Path(tmp) / "claims")
        began = time.perf_counter()
        for i in range(2000):
            book.claim(f"{i:064x}")
            book.release(f"{i:064x}")
        per_claim_us = (time.perf_counter() - began) / 2000 * 1e6
    return {"requests": n, "median_s": {k: sorted(v)[len(v) // 2] for k, v in times.items()},
            "claim_and_release_us": round(per_claim_us, 1)}


def markdown(result: dict) -> str:
    lines = [f"{result['jobs']} jobs x {result['per_job']} requests, {result['overlap']:.0%} shared, server latency "
             f"{result['latency_s']} s, {result['distinct']} distinct requests", "",
             "| cache | server answered | duplicates | every job got every answer | job seconds |", "|---|---:|---:|---|---|"]
    for label in ("before", "after"):
        r = result[label]
        lines.append(f"| {label} | {r['server_answered']} | {r['duplicates']} | {r['all_ok']} | {r['job_seconds']} |")
    single = result["single_job"]
    lines.append("")
    lines.append(f"One job alone, {single['requests']} fresh requests, no server latency: median "
                 f"{single['median_s']['without_claims']:.3f} s without claims, {single['median_s']['with_claims']:.3f} s "
                 f"with; one claim plus release {single['claim_and_release_us']} µs.")
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        cache, url, index, per_job, overlap, start_at = sys.argv[2:8]
        worker(cache, url, int(index), int(per_job), float(overlap), float(start_at))
    else:
        print(markdown(run()))
