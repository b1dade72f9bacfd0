"""Reliability: stages under injected faults, a crash mid-stage, the cache for every backend, rate
limits, failure rates and usage accounting. The endpoint is tests/support/fault_server.py on loopback."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from covip.core import schemas
from covip.clients.base import ChatRequest, Message
from covip.clients.cache import ResponseCache
from covip.clients.ratelimit import RateLimiter
from covip.clients.cache import model_fingerprint, path_fingerprint
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.core.io import read_rows, write_artifact
from covip.core.reliability import FailureRateExceeded, check_failure_rate
from covip.stages.capeval import CapEvalSettings, judge_captions, judge_failures
from covip.stages.dialogues import DialogueSettings, dialogue_failures, write_dialogues
from covip.stages.mcqa import MCQASettings, mcqa_failures, write_mcqas
from support.offline import OFFLINE_STAGES_2_TO_4, offline_contexts
from support.fault_server import FaultServer

TESTS = Path(__file__).parent
SEED = 5  # the seed tests/stage_worker.py uses
# About a third of all calls meet a fault, every kind represented.
FAULTS = {"429": 0.06, "500": 0.06, "stall": 0.02, "body_truncated": 0.04, "body_garbage": 0.04,
          "body_not_completion": 0.04, "truncated": 0.05, "garbage": 0.05}
QUIET = io.StringIO()


def endpoint(server: FaultServer, **extra) -> dict:
    return {"backend": "openai", "model": "fault-model", "base_url": server.base_url, "max_retries": 6,
            "timeout_s": 1.0, "concurrency": 8, **extra}


@pytest.fixture(scope="module")
def contexts(small_pool, prompts):
    """A few samples' contexts built by stages 2-4 with the offline stand-ins: (concepts, contexts)."""
    registry = ModelRegistry(OFFLINE_STAGES_2_TO_4)
    _, _, rows = offline_contexts(small_pool, prompts, registry, num_samples=4, image_size=192, seed=SEED)
    return small_pool, rows


@pytest.fixture(scope="module")
def judged_inputs(benchmark_splits):
    """The test split and one caption per sample that names its first context concept."""
    _, test = benchmark_splits
    captions = [
        {"policy": "p", "sample_id": row["sample_id"], "caption": f"A photo of {row['context_names'][0]} at home.",
         "status": "ok", "model_identity": "p", "stand_in": True}
        for row in test
    ]
    return captions, test


def run_model_stages(server, cache, contexts, judged_inputs, prompts):
    """Dialogues, MCQAs and CapEval judging against `server`; (dialogues, mcqas, answers, registry)."""
    concepts, context_rows = contexts
    registry = ModelRegistry({"model": endpoint(server)}, cache_path=str(cache))
    model = registry.chat("model")
    dialogues = write_dialogues(context_rows, concepts, model, prompts, DialogueSettings(max_attempts=5), SEED,
                                progress_file=QUIET)
    mcqas = write_mcqas(dialogues, model, prompts, MCQASettings(max_attempts=5), SEED, progress_file=QUIET)
    captions, test = judged_inputs
    answers = judge_captions(captions, test, model, prompts, CapEvalSettings(max_attempts=5, n_bootstrap=0), SEED,
                             "judge", progress_file=QUIET)
    return dialogues, mcqas, answers, registry


def without(rows, *names):
    return [{k: v for k, v in row.items() if k not in names} for row in rows]


def test_stages_under_faults_end_exactly_as_a_fault_free_run(tmp_path, contexts, judged_inputs, prompts):
    with FaultServer() as clean:
        reference = run_model_stages(clean, tmp_path / "clean.sqlite", contexts, judged_inputs, prompts)
    assert not clean.faults
    with FaultServer(FAULTS, stall_s=1.5, seed=1) as faulty:
        dialogues, mcqas, answers, registry = run_model_stages(faulty, tmp_path / "faulty.sqlite", contexts,
                                                               judged_inputs, prompts)
        # Every fault kind really happened, and every request still got its answer.
        assert set(faulty.faults) == set(FAULTS), faulty.faults
        assert all(row["status"] == "ok" for row in dialogues + mcqas)
        assert not any(row["unparseable"] for row in answers)
        # Repairs took extra attempts; apart from that count, every row is the fault-free row.
        assert without(dialogues, "attempts") == without(reference[0], "attempts")
        assert without(mcqas, "attempts") == without(reference[1], "attempts")
        assert answers == reference[2]
        assert sum(row["attempts"] for row in dialogues + mcqas) > len(dialogues + mcqas)
        # No finished call was paid for twice, and the failed attempts were never cached.
        assert max(faulty.completions.values()) == 1
        assert len(ResponseCache(tmp_path / "faulty.sqlite")) == sum(faulty.completions.values())
        usage = registry.chat("model").usage
        assert usage.failures == 0 and usage.requests >= len(answers)

        # A rerun of the finished stages makes no call at all: every request is a cache hit.
        before = sum(faulty.attempts.values())
        again = run_model_stages(faulty, tmp_path / "faulty.sqlite", contexts, judged_inputs, prompts)
        assert sum(faulty.attempts.values()) == before
        assert again[2] == answers and without(again[1], "attempts") == without(mcqas, "attempts")
        rerun_usage = again[3].chat("model").usage
        assert rerun_usage.requests == rerun_usage.cache_hits > 0


@pytest.mark.parametrize("stage", ["capeval", "dialogues"])
def test_killed_stage_reruns_without_repeating_a_finished_call(tmp_path, contexts, judged_inputs, prompts, stage):
    concepts, context_rows = contexts
    captions, test = judged_inputs
    inputs = tmp_path / "inputs"
    write_artifact(concepts, inputs / "concepts.parquet", schemas.CONCEPTS)
    write_artifact(context_rows, inputs / "contexts.parquet", schemas.CONTEXTS)
    write_artifact(captions, inputs / "captions.parquet", schemas.CAPTIONS)
    write_artifact(test, inputs / "test.parquet", schemas.SPLIT)
    out, cache = tmp_path / "out.parquet", tmp_path / "cache.sqlite"
    schema = schemas.CAPEVAL_ANSWERS if stage == "capeval" else schemas.DIALOGUES

    def worker(server):
        # This checkout's package (an installed covip may be another checkout's).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parents[1] / "src"), str(TESTS.parent)]))
        args = [sys.executable, str(TESTS.parent / "support" / "stage_worker.py"), stage, str(inputs), str(out), str(cache), server.base_url]
        return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    with FaultServer({"429": 0.1, "500": 0.1, "garbage": 0.1}, seed=2) as server:
        # Let some calls finish, then hold every new request, and kill the stage once all finished
        # calls are committed: a kill in the middle of the stage, at a moment we can reason about.
        server.hold_after = 8
        process = worker(server)
        deadline = time.time() + 120
        while True:
            done = server.total_completions
            if done >= 8 and len(ResponseCache(cache)) == done:
                break
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.time() < deadline, "the stage never reached the hold point"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert not out.exists(), "a killed stage left an output behind"
        assert not list(tmp_path.glob(".out.parquet.*")), "a half-written file was left behind"
        finished_before_kill = set(server.completions)

        server.release()
        rerun = worker(server)
        assert rerun.wait(timeout=300) == 0, rerun.stderr.read().decode()[-3000:]
        # The rerun sent none of the calls that had finished before the kill, nor any call twice.
        assert max(server.completions.values()) == 1
        assert len(server.completions) > len(finished_before_kill)

    rows = read_rows(out, schema)
    with FaultServer() as clean:
        registry = ModelRegistry({"model": endpoint(clean)}, cache_path=str(tmp_path / "clean.sqlite"))
        if stage == "capeval":
            expected = judge_captions(captions, test, registry.chat("model"), prompts,
                                      CapEvalSettings(max_attempts=5, n_bootstrap=0), SEED, "judge", progress_file=QUIET)
            ident = [(r["policy"], r["sample_id"], r["context_index"], r["question_id"]) for r in rows]
        else:
            expected = write_dialogues(context_rows, concepts, registry.chat("model"), prompts,
                                       DialogueSettings(max_attempts=5), SEED, progress_file=QUIET)
            ident = [(r["sample_id"], r["context_index"]) for r in rows]
    assert len(ident) == len(set(ident)) == len(expected), "a row was lost or duplicated"
    assert without(rows, "attempts") == without(expected, "attempts")


def test_a_failing_endpoint_fails_rows_never_caches_and_fails_the_stage_above_its_rate(tmp_path, contexts, prompts):
    concepts, context_rows = contexts
    # Every attempt of every request fails (max_faults high): the rows fail with the error on them.
    with FaultServer({"500": 1.0}, max_faults=100) as server:
        registry = ModelRegistry({"model": endpoint(server, max_retries=1)}, cache_path=str(tmp_path / "c.sqlite"))
        rows = write_dialogues(context_rows[:1], concepts, registry.chat("model"), prompts,
                               DialogueSettings(max_attempts=2), SEED, progress_file=QUIET)
    assert rows and all(row["status"] == "failed" for row in rows)
    assert all("model_error" in row["failure_reason"] and "InternalServerError" in row["failure_reason"] for row in rows)
    assert len(ResponseCache(tmp_path / "c.sqlite")) == 0
    report = dialogue_failures(rows)
    with pytest.raises(FailureRateExceeded, match=r"dialogues: \d+ of \d+ rows failed = 100.0%"):
        check_failure_rate(report, DialogueSettings().max_failure_rate)
    check_failure_rate(report, 1.0)  # a rate of 1 tolerates everything


def test_failure_reports_count_what_each_stage_failed():
    mcqas = [{"status": "failed", "failure_reason": "dialogue_failed"},
             {"status": "failed", "failure_reason": "invalid_output: expected 3 questions, got 2 (after 3 attempt(s))"},
             {"status": "ok", "failure_reason": ""}]
    report = mcqa_failures(mcqas)
    assert (report.total, report.failed) == (2, 1)  # the upstream failure is not counted again
    assert "invalid_output: expected 3 questions, got 2" in report.text()
    answers = [{"unparseable": True, "raw_answer": None}, {"unparseable": True, "raw_answer": "hmm"},
               {"unparseable": False, "raw_answer": "B"}, {"unparseable": False, "raw_answer": "C"}]
    report = judge_failures(answers)
    assert report.failed == 2 and report.reasons == {"judge call failed": 1, "reply names no option": 1}
    with pytest.raises(ValueError, match="max_failure_rate"):
        DialogueSettings(max_failure_rate=1.5)


def test_unreadable_judge_replies_are_reasked_only_when_configured(tmp_path, judged_inputs, prompts):
    captions, test = judged_inputs
    captions = captions[:2]
    # Every first request of a question gets garbage; repair requests (more than one message) do not.
    with FaultServer({"garbage": 1.0}, only_if=lambda body: len(body["messages"]) == 1) as server:
        registry = ModelRegistry({"model": endpoint(server)}, cache_path=str(tmp_path / "c.sqlite"))
        settings = CapEvalSettings(n_bootstrap=0, missing_captions="ignore")
        once = judge_captions(captions, test, registry.chat("model"), prompts, settings, SEED, "judge", progress_file=QUIET)
        assert all(row["unparseable"] and row["parsed"] == "D" and row["raw_answer"].startswith("lorem") for row in once)
        settings = CapEvalSettings(n_bootstrap=0, missing_captions="ignore", max_attempts=2)
        twice = judge_captions(captions, test, registry.chat("model"), prompts, settings, SEED, "judge", progress_file=QUIET)
        assert not any(row["unparseable"] for row in twice)
        # The repair request carries the unreadable reply and the repair instruction.
        repair = prompts.render("capeval_repair")
        assert any(r.endswith(repair) for r in server.last_user_texts)


def test_every_backend_goes_through_the_cache_and_a_rerun_calls_nothing(tmp_path, small_pool, prompts):
    cache = str(tmp_path / "c.sqlite")
    models = {"writer": {"backend": "local_facts_writer"}, "embedder": {"backend": "local_color_texture"}}
    first = ModelRegistry(models, cache_path=cache)
    request = ChatRequest((Message.user("hi"),), task={"kind": "dialogue", "name": "Ann", "category": "dog",
                                                       "facts": [{"kind": "habit", "text": "sleeps a lot"}],
                                                       "num_turns": 2})
    text = first.chat("writer").complete(request).text
    vectors = first.embedder("embedder").embed([row["image"] for row in small_pool[:3]])
    second = ModelRegistry(models, cache_path=cache)
    again = second.chat("writer").complete(request)
    assert again.cached and again.text == text
    assert np.array_equal(second.embedder("embedder").embed([row["image"] for row in small_pool[:3]]), vectors)
    assert second.embedder("embedder").usage.cache_hits == 3
    # Other options of the stand-in are another model: no stale hit.
    changed = ModelRegistry({"writer": {"backend": "local_facts_writer", "options": {"format_variety": False}}},
                            cache_path=cache)
    assert not changed.chat("writer").complete(request).cached
    assert not ModelRegistry({"writer": {**models["writer"], "cache": False}}, cache_path=cache).chat("writer").complete(request).cached


def test_local_model_fingerprint_follows_the_files(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"layers": 2}')
    (model / "model.safetensors").write_bytes(b"weights-1")
    (model / ".snakemake_timestamp").write_text("")
    spec = ModelSpec(name="vlm", backend="transformers", model=str(model))
    first = model_fingerprint(spec)
    path_fingerprint.cache_clear()
    (model / ".snakemake_timestamp").write_text("touched")
    assert model_fingerprint(spec) == first  # hidden bookkeeping files do not count
    path_fingerprint.cache_clear()
    (model / "model.safetensors").write_bytes(b"weights-2")  # retrained
    assert model_fingerprint(spec) != first
    assert model_fingerprint(ModelSpec(name="x", backend="vllm", model="org/not-cached")) == "id:org/not-cached"
    assert model_fingerprint(ModelSpec(name="j", backend="local_lexical_judge")).startswith("code:")


def test_rate_limiter_schedules_requests_and_tokens():
    limiter = RateLimiter(requests_per_minute=60)  # one a second, with a one-second burst
    delays = [limiter.reserve() for _ in range(4)]
    assert delays[0] == 0.0 and delays[1] < 0.05  # the burst
    assert 0.9 < delays[2] - delays[1] <= 1.05 and 0.9 < delays[3] - delays[2] <= 1.05
    tokens = RateLimiter(tokens_per_minute=6000)  # 100 tokens a second, a burst of 100 beyond the rate
    assert tokens.reserve(100) == 0.0 and tokens.reserve(100) < 0.05
    assert 0.9 < tokens.reserve(100) <= 1.05  # the third second's worth waits its second
    assert RateLimiter().reserve(10**9) == 0.0


def test_rate_limits_apply_to_the_async_batch_path(tmp_path):
    with FaultServer() as server:
        registry = ModelRegistry({"model": endpoint(server, requests_per_minute=600)}, cache_path=None)
        requests = [ChatRequest((Message.user(f"Reply with one letter only {i}"),)) for i in range(13)]
        start = time.monotonic()
        answers = registry.chat("model").complete_many(requests, progress_file=QUIET)
        elapsed = time.monotonic() - start
    assert all(answer.ok for answer in answers)
    # 10 a second with a one-second burst: the last of 13 cannot start before ~0.2 s.
    assert elapsed >= 0.2


def test_usage_rows_price_fresh_tokens_only(tmp_path):
    from covip.clients.usage import usage_markdown, usage_rows

    with FaultServer() as server:
        registry = ModelRegistry({"judge": endpoint(server, model="gpt-4o")}, cache_path=str(tmp_path / "c.sqlite"))
        judge = registry.chat("judge")
        requests = [ChatRequest((Message.user(f"Reply with one letter only {i}"),)) for i in range(3)]
        judge.complete_many(requests + requests[:1], progress_file=QUIET)  # the copy is sent once
        assert sum(server.completions.values()) == 3
    rows = usage_rows(registry._built, {"gpt-4o": {"input": 2.5, "output": 10.0}}, job="capeval/x", rule="capeval")
    (row,) = rows
    assert (row["requests"], row["cache_hits"], row["failures"]) == (4, 1, 0)
    expected = (row["input_tokens"] * 2.5 + row["output_tokens"] * 10.0) / 1e6
    assert row["input_tokens"] > 0 and row["estimated_cost_usd"] == pytest.approx(expected)
    write_artifact(rows, tmp_path / "usage.parquet", schemas.USAGE)
    assert "| capeval | 4 | 1 | 0 |" in usage_markdown(rows)


def test_workflow_under_faults_keeps_the_key_secret_and_a_rerun_from_the_cache_calls_nothing(tmp_path, monkeypatch):
    """The tiny workflow with its dialogue writer, MCQA writer and judge on the fault server and an
    API key from the environment; then every output but the cache is deleted and the run repeated."""
    from support.workflow import copy_workflow, snakemake

    from covip.clients.usage import load_usage

    sentinel = "sk-covip-SENTINEL-9f3b2d71c0"
    monkeypatch.setenv("COVIP_SENTINEL_KEY", sentinel)
    (tmp_path / "wf").mkdir()
    workdir = copy_workflow(tmp_path / "wf")
    with FaultServer(FAULTS, stall_s=1.5, seed=3) as server:
        entry = (f"{{backend: openai, model: fault-model, base_url: '{server.base_url}', api_key_env: COVIP_SENTINEL_KEY, "
                 "max_retries: 6, timeout_s: 1.0, concurrency: 4}")
        (workdir / "faults.yaml").write_text(
            f"models: {{dialogue_writer: {entry}, mcqa_writer: {entry}, fault_judge: {entry}}}\n"
            "evaluation: {policies: [oracle, blind], judges: [fault_judge], diagnostic_judge: lexical_judge,"
            " diagnostic_tasks: [lsd], diagnostic_modes: [direct]}\n"
            # One condition: under the controls the oracle's captions repeat, and two capeval jobs
            # running at once may both send the same (still uncached) request; see README, Reliability.
            "controls: {conditions: [intact]}\n"
            "dialogues: {max_attempts: 5}\nmcqa: {max_attempts: 5}\ncapeval: {max_attempts: 5, n_bootstrap: 50}\n"
            "prices: {fault-model: {input: 1.0, output: 2.0}}\n"
        )
        snakemake(workdir, "--configfile", "tiny.yaml", "faults.yaml")
        assert f"Bearer {sentinel}" in server.authorizations, "the key from the environment was not used"
        assert server.faults and max(server.completions.values()) == 1
        results = workdir / "results"
        usage = load_usage(results / "usage")
        paid = [row for row in usage if row["model"] == "fault-model"]
        assert {row["rule"] for row in paid} == {"write_dialogues", "write_mcqas", "capeval"}
        assert all(row["estimated_cost_usd"] > 0 for row in paid)
        assert "## Model usage" in (results / "report" / "summary.md").read_text()

        # The key is nowhere in what the run wrote: outputs, cache, logs, Snakemake's metadata.
        written = [path for path in workdir.rglob("*") if path.is_file() and "src" not in path.relative_to(workdir).parts]
        assert any(".snakemake" in path.parts for path in written) and any(p.suffix == ".sqlite" for p in written)
        leaks = [str(path) for path in written if sentinel.encode() in path.read_bytes()]
        assert not leaks, f"the API key leaked into {leaks}"

        # Every output but the response cache is deleted; the rerun makes no model call at all.
        for child in results.iterdir():
            if child.name != "cache":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        before = sum(server.attempts.values())
        snakemake(workdir, "--configfile", "tiny.yaml", "faults.yaml")
        assert sum(server.attempts.values()) == before
        rerun = load_usage(results / "usage")
        assert rerun and sum(row["requests"] for row in rerun) > 0
        fresh = [row for row in rerun if row["requests"] != row["cache_hits"]]
        assert not fresh, f"model calls on a rerun from the cache: {fresh}"
