"""Benchmark 1: CapEval-QA judge throughput against a fixed-latency OpenAI-compatible server.

Four clients score the same synthetic test set (samples x 12 questions) against
`benchmarks/latency_server.py` on loopback:

- ours: the real stage function `covip.stages.capeval.judge_captions` on captions and a test split
  read back from Parquet in their real schemas, through a registry entry `backend: openai` (the
  paper config's judge entry, pointed at the server), without and with the SQLite response cache;
- the authors' pattern: samples one after another, each sample's questions in a fresh
  ThreadPoolExecutor(32) calling the openai SDK (a subset of samples: it takes `latency` per sample);
- a bare asyncio loop: one httpx2.AsyncClient (the openai SDK's HTTP library) and a semaphore at
  our concurrency, posting the same payloads: the usual hand-written async client;
- a raw asyncio loop: our concurrency in keep-alive connections and no HTTP library at all: the
  practical ceiling of any Python client on this machine.

The server's own ceiling is measured first (raw loop, zero latency).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS_PER_CONCEPT = 3
CONCEPTS_PER_SAMPLE = 4  # 4 x 3 = 12 questions a sample, as in the issue
AUTHORS_POOL = 32


@contextlib.contextmanager
def latency_server(latency: float, lifetime: float = 3600.0):
    """Start the loopback latency server in its own process; yield its base URL; always stop it."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.latency_server", "--latency", str(latency), "--lifetime", str(lifetime)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        line = process.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError(f"latency server did not start (said {line!r})")
        yield f"http://127.0.0.1:{int(line.split()[1])}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _png() -> bytes:
    from PIL import Image

    from covip.core.io import encode_png

    return encode_png(Image.new("RGB", (32, 32), (120, 90, 60)))


def synthetic_test_set(n_samples: int, workdir: Path) -> tuple[list[dict], list[dict]]:
    """Captions (one policy) and a test split in the real schemas, written and read back from Parquet."""
    from covip.core import schemas
    from covip.core.io import read_rows, write_artifact

    image = {"bytes": _png(), "path": None}
    split_rows, caption_rows = [], []
    for s in range(n_samples):
        names = [f"concept {s}-{c}" for c in range(CONCEPTS_PER_SAMPLE)]
        mcqa = [
            [
                {
                    "question": f"What does {names[c]} like to do on weekend number {q}?",
                    "options": {"A": f"hiking {q}", "B": f"reading {c}", "C": f"painting {s % 7}", "D": "Cannot be determined"},
                    "answer": "ABC"[(s + c + q) % 3],
                }
                for q in range(QUESTIONS_PER_CONCEPT)
            ]
            for c in range(CONCEPTS_PER_SAMPLE)
        ]
        positives = list(range(1 + s % 2))
        split_rows.append(
            {
                "sample_id": f"s{s:05d}", "split": "test", "query_image": image,
                "context_images": [image] * CONCEPTS_PER_SAMPLE, "context_names": names,
                "context_dialogues": [f"A short dialogue about {n}." for n in names],
                "context_concept_ids": [f"c{s}-{c}" for c in range(CONCEPTS_PER_SAMPLE)],
                "context_categories": ["person"] * CONCEPTS_PER_SAMPLE,
                "positive_indices": positives, "num_positives": len(positives), "mcqa": mcqa, "context_facts": "[]",
            }
        )
        caption_rows.append(
            {
                "policy": "bench_policy", "sample_id": f"s{s:05d}",
                "caption": f"{names[0]} is hiking 1 near a lake while {names[1]} is reading a book in the sun. " * 3,
                "prompt_tokens": 100, "completion_tokens": 60, "latency_s": 0.1,
                "model_identity": "bench_policy:reference_oracle", "stand_in": True, "status": "ok", "error": None,
            }
        )
    write_artifact(split_rows, workdir / "test.parquet", schemas.SPLIT)
    write_artifact(caption_rows, workdir / "captions.parquet", schemas.CAPTIONS)
    return read_rows(workdir / "captions.parquet", schemas.CAPTIONS), read_rows(workdir / "test.parquet", schemas.SPLIT)


def paper_judge_entry(base_url: str, concurrency: int | None) -> dict:
    """The paper config's CapEval judge registry entry, pointed at the loopback server."""
    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    name = next(j for j in paper["evaluation"]["judges"] if paper["models"][j]["backend"] == "openai")
    entry = dict(paper["models"][name])
    entry["base_url"] = base_url
    entry.pop("api_key_env", None)
    entry.pop("serve", None)  # the paper config serves its judge; here the loopback server stands in
    if concurrency:
        entry["concurrency"] = concurrency
    return entry


def run_ours(captions, split, base_url: str, concurrency: int | None, cache_path: str | None) -> dict:
    """The real stage function through the registry; rps and the usage the registry counted."""
    from covip.clients.registry import ModelRegistry
    from covip.prompts import PromptBook
    from covip.stages.capeval import CapEvalSettings, judge_captions

    entry = paper_judge_entry(base_url, concurrency)
    registry = ModelRegistry({"judge": entry}, cache_path=cache_path)
    judge = registry.chat("judge")
    settings = CapEvalSettings(n_bootstrap=0)
    with open(os.devnull, "w") as sink:
        start, cpu = time.perf_counter(), time.process_time()
        rows = judge_captions(captions, split, judge, PromptBook({}), settings, 0, "judge", progress_file=sink)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    failed = sum(1 for r in rows if r["raw_answer"] is None)
    return {"requests": len(rows), "seconds": seconds, "rps": len(rows) / seconds, "failed": failed,
            "cpu_ms_per_request": 1000 * cpu / len(rows),
            "concurrency": entry["concurrency"], "usage": judge.usage.summary()}


def judge_payloads(captions, split, base_url: str) -> list[dict]:
    """The exact Chat Completions payloads our stage sends (for the authors' and the bare clients):
    the stage's requests and seeds, the entry's sampling defaults, the body in the entry's dialect."""
    from covip.clients.openai_backend import OpenAIChatModel
    from covip.clients.spec import ModelSpec
    from covip.prompts import PromptBook
    from covip.protocol.judging import build_judge_request, judge_seed
    from covip.stages.capeval import CapEvalSettings, items_from_split, pair_captions

    spec = ModelSpec.from_config("judge", paper_judge_entry(base_url, None))
    backend = OpenAIChatModel(spec)
    prompts = PromptBook({})
    settings = CapEvalSettings(n_bootstrap=0)
    items = items_from_split(split, "test split")
    payloads = []
    for row, item in pair_captions(captions, items, settings, "captions"):
        per_sample = []
        for ci, concept_questions in enumerate(item.questions):
            for q in concept_questions:
                seed = judge_seed(0, settings.seed_offset, row["policy"], item.sample_id, ci, q["question_id"])
                request = build_judge_request(row["caption"], q, prompts, seed=seed)
                request = type(request)(request.messages, {**spec.sampling, **request.sampling}, None, None, request.seed)
                per_sample.append(backend._body(request))
        payloads.append(per_sample)
    return payloads


def run_authors(per_sample_payloads: list[list[dict]], base_url: str) -> dict:
    """Samples one after another; each sample's questions in a ThreadPoolExecutor(32) via the openai SDK."""
    import openai

    client = openai.OpenAI(api_key="unused", base_url=base_url, timeout=120, max_retries=4)

    def ask(payload):
        completion = client.chat.completions.create(**payload)
        return completion.choices[0].message.content

    count = 0
    start, cpu = time.perf_counter(), time.process_time()
    for payloads in per_sample_payloads:
        with ThreadPoolExecutor(AUTHORS_POOL) as pool:
            count += len(list(pool.map(ask, payloads)))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"requests": count, "samples": len(per_sample_payloads), "seconds": seconds, "rps": count / seconds,
            "cpu_ms_per_request": 1000 * cpu / count}


def run_bare(payloads: list[dict], base_url: str, concurrency: int) -> dict:
    """asyncio + one httpx2.AsyncClient + a semaphore: the practical ceiling of a Python client."""
    import httpx2

    async def main():
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        gate = asyncio.Semaphore(concurrency)
        async with httpx2.AsyncClient(base_url=base_url, limits=limits, timeout=120) as client:

            async def one(payload):
                async with gate:
                    response = await client.post("/chat/completions", json=payload,
                                                 headers={"authorization": "Bearer unused"})
                    response.raise_for_status()
                    return response.json()["choices"][0]["message"]["content"]

            start = time.perf_counter()
            answers = await asyncio.gather(*(one(p) for p in payloads))
            return answers, time.perf_counter() - start

    cpu = time.process_time()
    answers, seconds = asyncio.run(main())
    cpu = time.process_time() - cpu
    return {"requests": len(answers), "seconds": seconds, "rps": len(answers) / seconds, "concurrency": concurrency,
            "cpu_ms_per_request": 1000 * cpu / len(answers)}


def run_raw(payloads: list[dict], base_url: str, concurrency: int, reply_timeout: float = 120.0) -> dict:
    """No HTTP library: `concurrency` keep-alive asyncio connections, each sending the next payload as
    soon as its previous answer is read. At zero latency, the server's own ceiling; at a latency,
    the most any Python client could get from this machine."""
    import json
    from urllib.parse import urlsplit

    parts = urlsplit(base_url)
    messages = []
    for payload in payloads:
        body = json.dumps(payload).encode()
        messages.append((f"POST {parts.path}/chat/completions HTTP/1.1\r\nhost: {parts.netloc}\r\n"
                         f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body)
    queue = iter(messages)

    async def connection():
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        done = 0
        for message in queue:  # a shared iterator: each message is sent once
            writer.write(message)
            await writer.drain()
            # A reply that never comes is an error with a count, not a silent hang of the whole run.
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), reply_timeout)
            length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])
            json.loads(await asyncio.wait_for(reader.readexactly(length), reply_timeout))["choices"][0]["message"]["content"]
            done += 1
        writer.close()
        return done

    async def main():
        start = time.perf_counter()
        counts = await asyncio.gather(*(connection() for _ in range(concurrency)))
        return sum(counts), time.perf_counter() - start

    cpu = time.process_time()
    count, seconds = asyncio.run(main())
    cpu = time.process_time() - cpu
    return {"requests": count, "seconds": seconds, "rps": count / seconds, "concurrency": concurrency,
            "cpu_ms_per_request": 1000 * cpu / count}


def run(latencies: list[float], n_samples: int, authors_samples: int, concurrency: int | None,
        server_ceiling_requests: int = 4000, on_partial=None) -> dict:
    """All three clients at each latency, plus the server's ceiling; a JSON-ready dict. `on_partial`
    gets the results so far after each client, so a crash or a kill keeps what was measured."""
    def measured(entry_key=None, entry=None):
        if entry_key is not None:
            results["latencies"][entry_key] = entry
        if on_partial is not None:
            on_partial(results)

    sys.path.insert(0, str(ROOT / "src"))
    results: dict = {"n_samples": n_samples, "questions_per_sample": QUESTIONS_PER_CONCEPT * CONCEPTS_PER_SAMPLE,
                     "authors_samples": authors_samples, "latencies": {}}
    with tempfile.TemporaryDirectory(prefix="covip-judge-bench-") as tmp:
        captions, split = synthetic_test_set(n_samples, Path(tmp))
        with latency_server(0.0) as url:
            nested = judge_payloads(captions, split, url)
            flat = [p for sample in nested for p in sample]
            conc = concurrency or paper_judge_entry(url, None)["concurrency"]
            many = (flat * (1 + server_ceiling_requests // len(flat)))[:server_ceiling_requests]
            results["server_ceiling_rps"] = run_raw(many, url, conc)["rps"]
            bare0 = run_bare(many, url, conc)
            results["bare_loop_zero_latency_rps"] = bare0["rps"]
            results["concurrency"] = conc
        for latency in latencies:
            with latency_server(latency) as url:
                entry: dict = {"bound_rps": conc / latency}
                key = str(latency)
                entry["ours"] = run_ours(captions, split, url, conc, None)
                measured(key, entry)
                entry["ours_cached"] = run_ours(captions, split, url, conc, str(Path(tmp) / f"cache-{latency}.sqlite"))
                measured(key, entry)
                entry["bare"] = run_bare(flat, url, conc)
                measured(key, entry)
                entry["raw"] = run_raw(flat, url, conc, reply_timeout=60 + 30 * latency)
                measured(key, entry)
                entry["authors"] = run_authors(nested[:authors_samples], url)
                ours = entry["ours"]["rps"]
                entry["ours_over_bare"] = ours / entry["bare"]["rps"]
                entry["ours_cached_over_bare"] = entry["ours_cached"]["rps"] / entry["bare"]["rps"]
                entry["ours_over_raw"] = ours / entry["raw"]["rps"]
                entry["ours_over_bound"] = ours / entry["bound_rps"]
                entry["ours_over_authors"] = ours / entry["authors"]["rps"]
                results["latencies"][str(latency)] = entry
    return results


def markdown(results: dict) -> str:
    lines = [
        f"{results['n_samples']} samples x {results['questions_per_sample']} questions, our concurrency "
        f"{results['concurrency']}; authors' pattern on the first {results['authors_samples']} samples; "
        f"at zero latency the server answers {results['server_ceiling_rps']:.0f} rps to the raw asyncio loop "
        f"and the bare httpx2 loop reaches {results['bare_loop_zero_latency_rps']:.0f} rps.",
        "",
        "| latency | bound rps | ours rps | ours + cache rps | bare loop rps | raw loop rps | authors rps | ours/bare "
        "| ours/raw | ours/bound | ours/authors | failed | client CPU ms/request: ours, cached, bare, raw, authors |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for latency, e in results["latencies"].items():
        lines.append(
            f"| {float(latency) * 1000:.0f} ms | {e['bound_rps']:.0f} | {e['ours']['rps']:.1f} | {e['ours_cached']['rps']:.1f} "
            f"| {e['bare']['rps']:.1f} | {e['raw']['rps']:.1f} | {e['authors']['rps']:.1f} | {e['ours_over_bare']:.0%} "
            f"| {e['ours_over_raw']:.0%} | {e['ours_over_bound']:.0%} "
            f"| {e['ours_over_authors']:.1f}x | {e['ours']['failed']} | {e['ours']['cpu_ms_per_request']:.2f}, "
            f"{e['ours_cached']['cpu_ms_per_request']:.2f}, {e['bare']['cpu_ms_per_request']:.2f}, "
            f"{e['raw']['cpu_ms_per_request']:.2f}, "
            f"{e['authors']['cpu_ms_per_request']:.2f} |"
        )
    return "\n".join(lines)

