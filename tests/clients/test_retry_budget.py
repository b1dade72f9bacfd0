"""One retry budget per call: HTTP failures and malformed 200 bodies share `max_retries`, so no call
makes more than `max_retries + 1` attempts; and a cut-off answer (finish_reason "length") arrives
marked. The endpoint is tests/support/fault_server.py on loopback."""

from __future__ import annotations

import io


from covip.clients.base import ChatRequest, Message
from covip.clients.registry import ModelRegistry
from support.fault_server import FaultServer

QUIET = io.StringIO()
# Every kind of failed attempt the client retries: HTTP errors, stalls past the timeout, malformed bodies.
MIX = {"429": 0.2, "500": 0.2, "stall": 0.1, "body_truncated": 0.15, "body_garbage": 0.2, "body_not_completion": 0.15}


def model(server: FaultServer, tmp_path, max_retries: int, timeout_s: float = 1.0):
    entry = {"backend": "openai", "model": "fault-model", "base_url": server.base_url, "max_retries": max_retries,
             "timeout_s": timeout_s, "concurrency": 8}
    return ModelRegistry({"m": entry}, cache_path=str(tmp_path / "cache.sqlite")).chat("m")


def requests(n: int, tag: str) -> list[ChatRequest]:
    return [ChatRequest((Message.user(f"{tag} question {i}"),)) for i in range(n)]


def test_a_call_failing_every_attempt_makes_exactly_its_budget_of_attempts(tmp_path):
    # Every attempt fails with some fault, whatever the mix: each call stops after max_retries + 1
    # attempts in all (the SDK's retries nested in a loop of ours once made (n + 1)^2): malformed bodies
    # spend the SDK's own budget, sync and async paths alike.
    with FaultServer(MIX, max_faults=1000, stall_s=1.5, retry_after_ms=1, seed=4) as server:
        chat = model(server, tmp_path, max_retries=3)
        answers = chat.complete_many(requests(12, "async"), progress_file=QUIET)
        answers.append(chat.complete(requests(1, "sync")[0]))
        assert not any(answer.ok for answer in answers)
        seen = list(server.attempts.values())
        # A stalled attempt the loaded server had not read yet when the client timed out goes uncounted,
        # so a few calls may show one attempt less; none may show more.
        assert len(seen) == 13 and max(seen) == 4 and seen.count(4) >= 11, server.attempts
        assert {"429", "500", "stall", "body_garbage", "body_not_completion"} <= set(server.faults), server.faults
        assert chat.usage.failures == 13


def test_faults_within_the_budget_get_through_and_are_paid_once(tmp_path):
    # No stalls here: a stalled attempt the loaded server never read would not count towards its faults.
    quick = {kind: rate for kind, rate in MIX.items() if kind != "stall"}
    with FaultServer(quick, max_faults=2, retry_after_ms=1, seed=7) as server:
        # A generous timeout: on a loaded machine an answer slower than it would be one more fault.
        chat = model(server, tmp_path, max_retries=2, timeout_s=30.0)
        answers = chat.complete_many(requests(16, "ok"), progress_file=QUIET)
        assert all(answer.ok and answer.text == "OK" for answer in answers)
        assert max(server.attempts.values()) == 3  # two faults, then the answer: the whole budget used
        assert set(server.completions.values()) == {1}


def test_a_cut_off_answer_arrives_marked(tmp_path):
    with FaultServer({"length": 1.0}, max_faults=1000) as server:
        chat = model(server, tmp_path, max_retries=2)
        [answer] = chat.complete_many(requests(1, "cut"), progress_file=QUIET)
        assert answer.ok and answer.finish_reason == "length" and answer.truncated
        assert answer.text == "OK"[:1] and sum(server.attempts.values()) == 1  # a cut-off is an answer, not retried
    with FaultServer() as server:
        answer = model(server, tmp_path / "clean", max_retries=2).complete(requests(1, "whole")[0])
        assert answer.finish_reason == "stop" and not answer.truncated
