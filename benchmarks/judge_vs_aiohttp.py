"""Our CapEval judge stage against a bare aiohttp loop, on the same request bodies (issue 17).

    PYTHONPATH=src python -m benchmarks.judge_vs_aiohttp [--latencies 0.2,2] [--samples 300] [--concurrency 128]
                                          [--rounds 2] [--out FILE] [--profile FILE]

Per latency and round, each client runs against a fresh `benchmarks/latency_server.py`: ours is the
real stage function (`judge_captions` through a registry entry `backend: openai`, no cache); the bare
loop is one `aiohttp.ClientSession` with a connector limit and a semaphore at the same concurrency,
posting the payloads our stage builds. After each client the server's digests of the bodies it got
are compared: the numbers count only when both clients sent the very same requests. The machine's
load average is recorded with every number (the benchmark shares 2 cores with other work).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.judge_throughput import judge_payloads, latency_server, run_ours, synthetic_test_set

ROOT = Path(__file__).resolve().parents[1]


def bodies(base_url: str) -> list[str]:
    """The server's sorted body digests since the last call (and it forgets them)."""
    with urllib.request.urlopen(f"{base_url}/bodies", timeout=60) as answer:
        return json.loads(answer.read())


def run_bare_aiohttp(payloads: list[dict], base_url: str, concurrency: int) -> dict:
    """The hand-written client: aiohttp, keep-alive up to `concurrency` connections, a semaphore."""
    import aiohttp

    async def main():
        gate = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30)
        headers = {"authorization": "Bearer unused", "content-type": "application/json"}
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:

            async def one(payload):
                async with gate:
                    async with session.post(f"{base_url}/chat/completions", data=json.dumps(payload),
                                            headers=headers) as response:
                        response.raise_for_status()
                        return (await response.json())["choices"][0]["message"]["content"]

            start = time.perf_counter()
            answers = await asyncio.gather(*(one(p) for p in payloads))
            return answers, time.perf_counter() - start

    cpu = time.process_time()
    answers, seconds = asyncio.run(main())
    cpu = time.process_time() - cpu
    return {"requests": len(answers), "seconds": seconds, "rps": len(answers) / seconds,
            "cpu_ms_per_request": 1000 * cpu / len(answers)}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def compare(latencies, n_samples: int, concurrency: int, rounds: int, profile: str | None = None) -> dict:
    results: dict = {"n_samples": n_samples, "concurrency": concurrency, "cpu_count": os.cpu_count(), "runs": []}
    with tempfile.TemporaryDirectory(prefix="covip-judge-vs-") as tmp:
        captions, split = synthetic_test_set(n_samples, Path(tmp))
        for latency in latencies:
            for round_ in range(rounds):
                run: dict = {"latency": latency, "round": round_}
                with latency_server(latency) as url:
                    flat = [p for sample in judge_payloads(captions, split, url) for p in sample]
                    run["load_before"] = load()
                    if profile and round_ == 0 and latency == latencies[0]:
                        profiler = cProfile.Profile()
                        run["ours"] = profiler.runcall(run_ours, captions, split, url, concurrency, None)
                        profiler.dump_stats(profile)
                    else:
                        run["ours"] = run_ours(captions, split, url, concurrency, None)
                    ours_bodies = bodies(url)
                    run["load_between"] = load()
                    run["bare_aiohttp"] = run_bare_aiohttp(flat, url, concurrency)
                    bare_bodies = bodies(url)
                    run["load_after"] = load()
                run["identical_bodies"] = ours_bodies == bare_bodies and len(ours_bodies) == len(flat)
                run["ours_over_bare"] = run["ours"]["rps"] / run["bare_aiohttp"]["rps"]
                results["runs"].append(run)
                print(f"latency {latency}s round {round_}: ours {run['ours']['rps']:.1f} rps, bare aiohttp "
                      f"{run['bare_aiohttp']['rps']:.1f} rps, ratio {run['ours_over_bare']:.2f}, identical bodies "
                      f"{run['identical_bodies']}, failed {run['ours']['failed']}, load {run['load_before']}",
                      flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latencies", default="0.2,2")
    parser.add_argument("--samples", type=int, default=300, help="x 12 questions each")
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--profile", help="cProfile our first run into this file")
    args = parser.parse_args(argv)
    results = compare([float(x) for x in args.latencies.split(",")], args.samples, args.concurrency, args.rounds,
                      args.profile)
    results["git"] = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
    results["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0 if all(run["identical_bodies"] for run in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
