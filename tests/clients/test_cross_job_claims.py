"""Jobs at the same time send each distinct request once (claims), and a killed job's paid calls are
accounted. The server is tests/support/fault_server.py on loopback, counting what it answered."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from benchmarks.cross_job_dedup import run_jobs
from covip.clients.base import ChatRequest, Message
from covip.clients.cache import ResponseCache, merge_journals
from covip.clients.claims import STALE_S, claims_dir
from covip.clients.registry import ModelRegistry
from covip.clients.usage import load_usage
from support.fault_server import FaultServer, SlowServer, delivered_usage

ROOT = Path(__file__).resolve().parents[2]


def test_jobs_started_together_send_each_distinct_request_once(tmp_path):
    distinct = 3 * 24 - 2 * 12  # 3 jobs of 24 requests, 12 of them shared by all
    with SlowServer(0.3) as server:
        before = run_jobs(tmp_path / "off" / "responses.sqlite", server.base_url, 3, 24, 0.5, claims=False)
        sent_before = server.total_completions
    with SlowServer(0.3) as server:
        after = run_jobs(tmp_path / "on" / "responses.sqlite", server.base_url, 3, 24, 0.5, claims=True)
        assert server.total_completions == len(server.completions) == distinct
    assert sent_before > distinct, "without claims the jobs pay for shared requests twice (what the test guards)"
    assert all(job["ok"] == 24 for job in before + after)
    assert sum(job["cache_hits"] for job in after) == 3 * 24 - distinct  # the waiters' answers came from the owner
    assert not any(claims_dir(tmp_path / "on" / "responses.sqlite").iterdir()), "every claim was released"


def _model(server, cache):
    registry = ModelRegistry({"m": {"backend": "openai", "model": "fault-model", "base_url": server.base_url,
                                    "max_retries": 0, "timeout_s": 5}}, cache_path=str(cache))
    return registry.chat("m")


def _in_thread(model, request):
    out = {}
    thread = threading.Thread(target=lambda: out.update(answer=model.complete_many([request])[0]))
    thread.start()
    return thread, out


def test_a_waiter_takes_the_owners_answer_or_sends_after_the_owner_failed(tmp_path):
    cache = tmp_path / "responses.sqlite"
    with FaultServer() as server:
        model, owner = _model(server, cache), ResponseCache(cache)
        answered, failed = ChatRequest([Message.user("one")], {}), ChatRequest([Message.user("two")], {})
        # The owner answers: the waiter gets that answer and sends nothing.
        assert owner.claims.claim(model._key(answered))
        thread, out = _in_thread(model, answered)
        time.sleep(0.5)
        assert thread.is_alive() and server.total_completions == 0  # waiting, not sending
        owner.put(model._key(answered), "openai", "fault-model",
                  {"text": "from the owner", "model": "fault-model", "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        owner.claims.release(model._key(answered))
        thread.join(10)
        assert out["answer"].text == "from the owner" and out["answer"].cached and server.total_completions == 0
        # The owner's call failed (claim released, no answer): the waiter sends it itself, once.
        assert owner.claims.claim(model._key(failed))
        thread, out = _in_thread(model, failed)
        time.sleep(0.5)
        owner.claims.release(model._key(failed))
        thread.join(10)
        assert out["answer"].ok and not out["answer"].cached and server.total_completions == 1


def test_a_dead_owners_claim_is_taken_over_and_its_finished_answer_not_repeated(tmp_path):
    cache = tmp_path / "responses.sqlite"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with FaultServer() as server:
        model = _model(server, cache)
        folder = claims_dir(cache)
        folder.mkdir(parents=True)

        def claim_of(text, host, pid, age=0.0, started=None):
            key = model._key(ChatRequest([Message.user(text)], {}))
            path = folder / key
            path.write_text(json.dumps({"host": host, "pid": pid, "started": started, "id": "x"}))
            os.utime(path, (time.time() - age, time.time() - age))
            return key

        import socket

        here = socket.gethostname()
        claim_of("killed before answering", here, dead.pid)
        finished = claim_of("killed after answering", here, dead.pid)
        claim_of("other host, silent", "elsewhere", 1, age=STALE_S + 60)
        live = claim_of("other host, alive", "elsewhere", 1)
        claim_of("pid reused", here, os.getpid(), started="1")  # a live pid, but not the process that claimed
        # The killed owner had journaled this answer before it died: it must not be sent again.
        ResponseCache(cache).put(finished, "openai", "fault-model",
                                 {"text": "journaled", "model": "fault-model", "usage": {"prompt_tokens": 1, "completion_tokens": 1}})
        answers = model.complete_many([ChatRequest([Message.user(t)], {}) for t in
                                       ("killed before answering", "killed after answering", "other host, silent",
                                        "pid reused")])
        assert [a.ok for a in answers] == [True] * 4 and answers[1].text == "journaled"
        assert server.total_completions == 3
        assert model.cache.claims.state(live) == "held"  # a claim another host keeps alive is waited for


KILLED = textwrap.dedent(
    """
    import json, sys
    from covip.clients.base import ChatRequest, Message
    from covip.clients.registry import ModelRegistry
    from covip.clients.usage import usage_rows
    from covip.core import schemas
    from covip.core.io import write_artifact
    cache, url, usage = sys.argv[1:4]
    registry = ModelRegistry({"judge": {"backend": "openai", "model": "fault-model", "base_url": url, "max_retries": 0,
                                        "timeout_s": 120, "concurrency": 4}}, cache_path=cache, job="judge/x", rule="judge")
    model = registry.chat("judge")
    model.complete_many([ChatRequest([Message.user(f"question number {i} " * (i % 5 + 1))], {}) for i in range(40)])
    write_artifact(usage_rows(registry._built, {"fault-model": {"input": 1.0, "output": 2.0}}, job="judge/x", rule="judge"),
                   usage, schemas.USAGE)  # as StageRun does, before closing the journal
    registry.close()
    """
)


def test_usage_of_a_job_killed_mid_batch_is_recovered_so_totals_equal_the_servers(tmp_path):
    cache, usage = tmp_path / "cache" / "responses.sqlite", tmp_path / "usage"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))

    def job():
        return subprocess.Popen([sys.executable, "-c", KILLED, str(cache), server.base_url, str(usage / "judge" / "x.parquet")],
                                env=env, stderr=subprocess.PIPE)

    with FaultServer() as server:
        server.hold_after = 13
        process = job()
        deadline = time.time() + 60
        while not (server.total_completions >= 13 and len(ResponseCache(cache)) == server.total_completions):
            assert process.poll() is None and time.time() < deadline, process.stderr.read()
            time.sleep(0.1)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        assert not usage.exists()  # the killed job wrote no usage table
        stats = merge_journals(cache, usage_dir=usage, prices={"fault-model": {"input": 1.0, "output": 2.0}})
        assert stats["recovered"] == 1
        server.release()
        rerun = job()
        assert rerun.wait(timeout=120) == 0, rerun.stderr.read()
        served = delivered_usage(server)
    rows = load_usage(usage)
    assert {row["job"] for row in rows} == {"judge/x", "judge/x (killed)"}
    assert sum(row["requests"] - row["cache_hits"] for row in rows) == served["calls"] == 40
    assert sum(row["input_tokens"] for row in rows) == served["input_tokens"]
    assert sum(row["output_tokens"] for row in rows) == served["output_tokens"]
    cost = sum(row["estimated_cost_usd"] for row in rows)
    assert abs(cost - (served["input_tokens"] + 2 * served["output_tokens"]) / 1e6) < 1e-12
    merge_journals(cache, usage_dir=usage)  # the rerun closed its journal: nothing recovered twice
    assert len(load_usage(usage)) == len(rows)


def test_two_jobs_generating_the_same_image_at_once_generate_it_once(tmp_path):
    from covip.clients.base import ImageRequest, ImageResponse
    from covip.clients.cached import CachedImageGenerator
    from covip.clients.spec import ModelSpec

    calls = []

    class SlowPainter:
        def generate(self, request):
            calls.append(request.instruction)
            time.sleep(0.5)
            return ImageResponse(b"png" + request.instruction.encode(), "painter")

    spec = ModelSpec(name="painter", backend="external", model="painter", concurrency=1, stand_in=False)
    cache = tmp_path / "responses.sqlite"
    jobs = [CachedImageGenerator(spec, SlowPainter(), ResponseCache(cache)) for _ in range(2)]  # two jobs' caches
    request = ImageRequest("a red kite", ())
    out = [None, None]
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, jobs[i].generate(request))) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert calls == ["a red kite"]
    assert [o.image for o in out] == [b"pnga red kite"] * 2 and sorted(o.cached for o in out) == [False, True]
