"""The caption reward when its judge fails: a failed call is no reward (None), never a 'D'; each batch's
calls and failures are logged; more than `max_judge_failure_rate` failed calls in a batch stop
training; and one uncached pre-flight call stops a run whose judge is down before training starts."""

from __future__ import annotations

import json

import pytest

from covip.training.rewards import JudgeFailureError, RewardSuite
from covip.training.settings import TrainingSettings
from support.fakes import scripted

OPTIONS = {"A": "green tea", "B": "coffee", "C": "milk", "D": "The answer cannot be determined"}


def _truth(sample_id: str) -> str:
    q = {"question": f"What does {sample_id} drink?", "options": OPTIONS, "answer": "A"}
    neg = {"question": f"What does the other of {sample_id} drink?", "options": OPTIONS, "answer": "B"}
    return json.dumps({"sample_id": sample_id, "positive_indices": [0], "indices": [1], "questions": [[q], [neg]]})


def _judge(failing: set[str]):
    """Answers A to a positive question and D to a negative one, and fails every call about a caption
    in `failing` (a judge that went away for some requests)."""
    def reply(request):
        if request.task["caption"] in failing:
            return None
        return r"Answer: \boxed{A}" if "the other" not in request.task["question"] else r"Answer: \boxed{D}"

    return scripted(reply, "scripted:judge", error="APIConnectionError: judge unreachable")


class _Metrics:
    def __init__(self):
        self.values: dict[str, list[float]] = {}

    def __call__(self, name, value):
        self.values.setdefault(name, []).append(value)


@pytest.mark.parametrize("captions, failing, max_rate, rewards, calls, failed, stops", [
    # every call answered: (1/3)*1 correct positive - 0 leaked negatives = 1/3 per row
    (["c0", "c1", "c2", "c3"], set(), 0.2, [1 / 3] * 4, 8, 0, False),
    # one caption's two calls fail: that row gets None (no reward), not the D that would score it 0 - 0
    (["c0", "c1", "c2", "c3"], {"c1"}, 0.3, [1 / 3, None, 1 / 3, 1 / 3], 8, 2, False),
    # 2 of 8 calls = 25% > 20%: training stops
    (["c0", "c1", "c2", "c3"], {"c1"}, 0.2, None, 8, 2, True),
    # the judge is down: every call fails
    (["c0", "c1"], {"c0", "c1"}, 0.5, None, 4, 4, True),
    # at the limit exactly (2 of 4 = 50%) is still allowed
    (["c0", "c1"], {"c0"}, 0.5, [None, 1 / 3], 4, 2, False),
])
def test_failed_judge_calls(captions, failing, max_rate, rewards, calls, failed, stops):
    judge, _ = _judge(failing)
    suite = RewardSuite(judge, max_judge_failure_rate=max_rate)
    metrics = _Metrics()
    args = (None, captions, ["caption"] * len(captions), [_truth(f"s{i}") for i in range(len(captions))])
    kwargs = dict(completion_ids=[[0] * 5] * len(captions), log_metric=metrics)
    if stops:
        with pytest.raises(JudgeFailureError, match=r"judge calls failed in one generation batch.*max_judge_failure_rate"):
            suite.caption(*args, **kwargs)
    else:
        got = suite.caption(*args, **kwargs)
        assert got == [pytest.approx(r) if r is not None else None for r in rewards]
    assert (suite.judge_calls, suite.judge_failures) == (calls, failed)
    assert metrics.values["judge/calls"] == [calls] and metrics.values["judge/failed"] == [failed]
    assert metrics.values["judge/failure_rate"] == [pytest.approx(failed / calls)]


def test_a_joint_row_with_a_failed_call_gets_no_reward_at_all():
    judge, _ = _judge({"c1"})
    suite = RewardSuite(judge, max_judge_failure_rate=1.0)
    got = suite.joint(None, [r"\boxed{[1]} c0", r"\boxed{[1]} c1"], ["joint", "joint"], [_truth("s0"), _truth("s1")],
                      completion_ids=[[0] * 5] * 2)
    assert got[0] == pytest.approx(1.0 + 1.0) and got[1] is None  # not F1 1 + a caption score from D letters


def test_rows_of_other_tasks_make_no_calls_and_never_stop_training():
    judge, fake = _judge(set())
    suite = RewardSuite(judge, max_judge_failure_rate=0.0)
    assert suite.caption(None, ["x"], ["vision"], [json.dumps({"present": True})], log_metric=_Metrics()) == [None]
    assert fake.requests == [] and suite.judge_calls == 0


@pytest.mark.parametrize("failing, passes", [(set(), True), ({""}, False)])
def test_preflight_call_bypasses_the_cache_and_fails_fast(failing, passes, tmp_path):
    judge, fake = _judge(failing)
    suite = RewardSuite(judge)
    question = {"question": "What does s0 drink?", "options": OPTIONS, "answer": "A"}
    if passes:
        suite.preflight(question)
    else:
        with pytest.raises(JudgeFailureError, match="did not answer a pre-flight call.*training has not started"):
            suite.preflight(question)
    assert len(fake.requests) == 1 and fake.requests[0].task["caption"] == ""


def test_preflight_is_never_answered_from_the_cache(tmp_path):
    from covip.clients.registry import ModelRegistry
    from support.fault_server import FaultServer

    question = {"question": "What does s0 drink?", "options": OPTIONS, "answer": "A"}
    with FaultServer({}) as server:  # a real OpenAI-compatible endpoint on loopback, no faults
        entry = {"backend": "openai", "model": "fault-model", "base_url": server.base_url, "cache": True}
        registry = ModelRegistry({"j": entry}, cache_path=str(tmp_path / "c.sqlite"))
        judge = registry.chat("j")
        RewardSuite(judge).preflight(question)
        RewardSuite(judge).preflight(question)
    assert judge.usage.requests == 2 and judge.usage.cache_hits == 0 and server.total_completions == 2


def test_a_stand_in_judge_gets_no_preflight_call(tmp_path):
    """Code in this process cannot be down: a rerun of a stand-in run from the cache calls nothing."""
    from covip.clients.registry import ModelRegistry

    registry = ModelRegistry({"j": {"backend": "local_lexical_judge", "cache": True}}, cache_path=str(tmp_path / "c.sqlite"))
    judge = registry.chat("j")
    RewardSuite(judge).preflight({"question": "What does s0 drink?", "options": OPTIONS, "answer": "A"})
    assert judge.usage.requests == 0


@pytest.mark.parametrize("value, ok", [(0.0, True), (0.2, True), (1.0, True), (-0.1, False), (1.5, False)])
def test_max_judge_failure_rate_setting(value, ok):
    if ok:
        assert TrainingSettings(max_judge_failure_rate=value).max_judge_failure_rate == value
    else:
        with pytest.raises(ValueError, match="training.max_judge_failure_rate must be in"):
            TrainingSettings(max_judge_failure_rate=value)
