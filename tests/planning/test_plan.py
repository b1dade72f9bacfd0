"""`covip plan`: counts follow the config's sizes, tokens follow the rendered prompts and each backend's
image rule, dollars the prices, and the plan compares with a run's usage per rule."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from covip.clients.spec import ModelSpec
from covip.config.prepare import prepare
from covip.core import schemas
from covip.core.io import read_rows, to_table
from covip.planning.compare import compare, comparison_markdown
from covip.planning.estimate import estimate, format_plan, image_tokens
from covip.planning.settings import PlanSettings
from support.workflow import validated_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def default_config():
    return validated_config()


@pytest.fixture(scope="module")
def paper_config():
    return validated_config("paper.yaml")


def _plan(config, **changes):
    config = copy.deepcopy(config)
    for section, values in changes.items():
        config[section] = {**config.get(section, {}), **values}
    rows, assumptions = estimate(prepare(config, ROOT))
    return {(r["rule"], r["role"]): r for r in rows}, assumptions


@pytest.mark.parametrize("spec, side, tokens", [
    (ModelSpec("g", "openai", "gpt-4o", api_dialect="openai"), 320, 255),  # one 512-px tile
    (ModelSpec("g", "openai", "gpt-4o", api_dialect="openai"), 1024, 765),  # scaled to 768: 2x2 tiles
    (ModelSpec("g", "gemini", "gemini-2.0-flash"), 320, 258),
    (ModelSpec("g", "gemini", "gemini-2.0-flash"), 1024, 1032),  # 2x2 tiles of 768 px
    (ModelSpec("q", "vllm", "Qwen/Qwen3-VL-8B-Instruct"), 512, 361),  # ceil(512/28)^2
    (ModelSpec("q", "openai", "Qwen/Qwen3-VL-8B-Instruct", base_url="http://h/v1"), 1024, 1369),
    (ModelSpec("o", "reference_oracle"), 1024, 0),  # a stand-in reads no pixels
])
def test_image_tokens_follow_the_backend(spec, side, tokens):
    assert image_tokens(spec, side) == tokens


def test_the_paper_plan_counts_what_the_dag_runs(paper_config):
    rows, assumptions = _plan(paper_config)
    to_table(list(rows.values()), schemas.PLAN, "plan")  # fits the declared schema
    # 5200 samples, 80% kept, 1300 test; 2.5 positives + 2 negatives each = 7.5 concepts on average; 3 questions per concept
    assert rows[("synthesize_queries", "image_generator")]["calls"] == 5200
    assert rows[("write_dialogues", "dialogue_writer")]["calls"] == round(5200 * 0.8 * 7.5)
    assert rows[("caption", "gpt_4o")]["calls"] == 5 * 1300  # five control conditions
    assert rows[("capeval", "qwen3_judge")]["calls"] == round(1300 * 7.5 * 3) * 5 * 8  # x conditions x policies
    # items x (direct + CAG's two) x tasks x 5 conditions (controls.diagnostics defaults to on)
    assert rows[("diagnose", "gpt_4o")]["calls"] == 24 * (1 + 2) * 3 * 5
    assert rows[("diagnose", "qwen3_judge")]["calls"] == 24 * 2 * 8 * 5  # one LAR verdict per answer, 8 policies
    # GSPO: 2800 records x 2 epochs x 4 rollouts; a third of them captions, judged on 7.5 x 3 questions
    assert rows[("train_gspo", "training.runs.qwen3_vl_8b_covip")]["calls"] == 22400
    assert rows[("train_gspo", "qwen3_judge")]["calls"] == round(22400 / 3 * 7.5 * 3)
    # dollars only where a price exists; GPU-hours only for in-process models and training
    assert rows[("caption", "gpt_4o")]["estimated_cost_usd"] > 0 and rows[("caption", "gpt_4o")]["gpu_hours"] is None
    assert rows[("caption", "qwen3_vl_8b")]["gpu_hours"] > 0
    assert rows[("capeval", "qwen3_judge")]["estimated_cost_usd"] == 0
    gemini = rows[("synthesize_queries", "image_generator")]
    assert gemini["output_tokens"] == 5200 * 1290
    assert gemini["estimated_cost_usd"] == pytest.approx((gemini["input_tokens"] * 0.30 + gemini["output_tokens"] * 30.0) / 1e6)
    assert any("keeps 80%" in a for a in assumptions) and any("embed_concepts is left out" in a for a in assumptions)


def test_counts_scale_with_the_config_and_caps_bind(default_config):
    small, _ = _plan(default_config)
    large, _ = _plan(default_config, synthesis={"num_samples": 128})
    assert large[("write_dialogues", "dialogue_writer")]["calls"] == pytest.approx(
        2 * small[("write_dialogues", "dialogue_writer")]["calls"], abs=1)
    # the embedded default caps captions at 48 tokens (captioning.max_tokens)
    caption = small[("caption", "oracle")]
    assert caption["output_tokens"] == caption["calls"] * 48
    fewer, _ = _plan(default_config, controls={"conditions": ["intact"]})
    assert fewer[("caption", "oracle")]["calls"] * 5 == pytest.approx(caption["calls"], abs=5)
    # the tiny VLM runs on the CPU (gpus: 0): no GPU-hours
    assert small[("caption", "tiny_vlm")]["gpu_hours"] == 0.0
    # 4 steps, preset default (4 micro-steps per generation, 2 passes): one generation batch of
    # 1 prompt x 2 rollouts x 4 micro-steps = 8 rollouts
    assert small[("train_gspo", "training.runs.tiny_vlm_gspo")]["calls"] == 8


def test_plan_settings_are_checked():
    with pytest.raises(ValueError, match="plan.gpu: no throughput for 'TPU9'"):
        PlanSettings(gpu="TPU9")
    with pytest.raises(ValueError, match="plan.output_tokens: unknown kind"):
        PlanSettings(output_tokens={"essay": 3})
    assert PlanSettings(output_tokens={"caption": 90}).output_tokens["judge"] == 40  # others keep their defaults


def test_compare_with_usage(default_config):
    rows, assumptions = _plan(default_config)
    plan_rows = list(rows.values())
    caption_calls = sum(r["calls"] for r in plan_rows if r["rule"] == "caption")
    usage = [{"rule": "caption", "requests": caption_calls // 2, "input_tokens": 10, "output_tokens": 5},
             {"rule": "report", "requests": 1, "input_tokens": 0, "output_tokens": 0}]
    by_rule = {r["rule"]: r for r in compare(plan_rows, usage)}
    assert by_rule["caption"]["calls_ratio"] == pytest.approx(0.5, abs=0.01)
    assert by_rule["report"]["calls_ratio"] is None  # nothing planned
    assert by_rule["train_gspo"]["planned_calls"] == rows[("train_gspo", "lexical_judge")]["calls"]  # judge calls only
    assert "| caption |" in comparison_markdown(list(by_rule.values()))
    text = format_plan(plan_rows, assumptions)
    assert text.splitlines()[0].split()[:6] == ["rule", "role", "backend", "jobs", "starts", "calls"]
    assert "Assumptions:" in text and "in-process engine loads" in text


def test_the_command_prints_and_writes_the_plan(tmp_path, capsys, monkeypatch):
    from covip.cli import main

    monkeypatch.chdir(ROOT)
    out = tmp_path / "plan.parquet"
    assert main(["plan", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "capeval" in printed and "Assumptions:" in printed
    written = read_rows(out, schemas.PLAN)
    assert {r["rule"] for r in written} >= {"synthesize_queries", "caption", "capeval_one_pass", "train_gspo"}
    assert sum(r["engine_starts"] for r in written) > 0 and "prefix_share" in written[0]
    assert "in-process engine loads" in printed


IN_PROCESS = ("vllm", "transformers", "open_clip")


def test_engine_starts_of_the_default_count_its_in_process_jobs(default_config):
    rows, assumptions = _plan(default_config)
    models, evaluation = default_config["models"], default_config["evaluation"]
    vlms = [p for p in evaluation["policies"] if models[p]["backend"] in IN_PROCESS]
    assert vlms == ["tiny_vlm", "tiny_vlm_gspo"]
    conditions = len(default_config["controls"]["conditions"])  # caption: one job per (condition, policy)
    diagnose = 1  # controls.diagnostics is off: intact only, one job per policy for every task and mode
    general = len(evaluation["general_benchmarks"]) * len([p for p in evaluation["general_policies"] if p in vlms])
    training = len(default_config["training"]["runs"])  # the run loads the tiny VLM it trains
    assert rows[("caption", "tiny_vlm")]["engine_starts"] == rows[("caption", "tiny_vlm")]["jobs"] == conditions
    assert rows[("diagnose", "tiny_vlm_gspo")]["engine_starts"] == diagnose
    assert rows[("general_benchmark", "tiny_vlm")]["basis"].startswith("engine starts only")
    total = sum(r["engine_starts"] for r in rows.values())
    assert total == len(vlms) * (conditions + diagnose) + general + training
    # stand-ins load nothing; the default serves nothing; the tiny VLM loads on the CPU (gpus: 0)
    assert rows[("caption", "oracle")]["engine_starts"] == 0 and rows[("caption", "oracle")]["jobs"] == conditions
    assert sum(r["server_starts"] for r in rows.values()) == 0
    assert sum(r["load_gpu_hours"] for r in rows.values()) == 0.0
    assert any("plan.load_seconds" in a for a in assumptions)


def test_a_sharded_capeval_starts_its_served_judge_once_per_shard(paper_config):
    plain, _ = _plan(paper_config)
    rows, _ = _plan(paper_config, sharding={"rules": [*paper_config["sharding"]["rules"], "capeval"], "shard_size": 500})
    shards = -(-paper_config["synthesis"]["num_samples"] // 500)  # 11 shards of 5200 samples
    conditions = len(paper_config["controls"]["conditions"])
    policies = len(paper_config["evaluation"]["policies"])
    judge = rows[("capeval", "qwen3_judge")]
    assert judge["server_starts"] == judge["jobs"] == shards * conditions * policies == 440
    assert plain[("capeval", "qwen3_judge")]["server_starts"] == conditions * policies
    assert judge["engine_starts"] == 0 and rows[("capeval", "lexical_judge")]["server_starts"] == 0
    # the 30B FP8 judge's own loading time, on its server's GPU, is its row's GPU-hours
    assert judge["load_gpu_hours"] == pytest.approx(440 * 150 / 3600) == judge["gpu_hours"]
    # the served writers start one server per shard of theirs; caption stays one job per (condition, policy)
    assert rows[("write_mcqas", "mcqa_writer")]["server_starts"] == shards
    assert rows[("caption", "qwen3_vl_8b")]["engine_starts"] == conditions
    # diagnose: one job per (condition, policy), each starting the LAR judge's server once
    assert rows[("diagnose", "qwen3_judge")]["server_starts"] == conditions * policies
    assert rows[("diagnose", "qwen3_vl_8b")]["engine_starts"] == conditions
    # GSPO on 4 GPUs loads the policy for training and, for colocated vLLM rollouts, a vLLM engine of it
    gspo = rows[("train_gspo", "training.runs.qwen3_vl_8b_covip")]
    assert (gspo["jobs"], gspo["engine_starts"]) == (1, 2)
    assert gspo["load_gpu_hours"] == pytest.approx((45 + 90) * 4 / 3600)
    assert rows[("train_gspo", "qwen3_judge")]["server_starts"] == 1
    slower, _ = _plan(paper_config, plan={"load_seconds": {"Qwen/Qwen3-30B-A3B-Instruct-2507-FP8": 300}})
    assert slower[("capeval", "qwen3_judge")]["load_gpu_hours"] == pytest.approx(
        2 * plain[("capeval", "qwen3_judge")]["load_gpu_hours"])


def test_one_pass_judging_starts_each_judge_once(paper_config):
    conditions = len(paper_config["controls"]["conditions"])
    policies = len(paper_config["evaluation"]["policies"])
    plain, _ = _plan(paper_config)
    # by default the served judge runs one job (and server) per table, the in-process stand-in one pass
    assert plain[("capeval", "qwen3_judge")]["jobs"] == conditions * policies
    assert plain[("capeval_one_pass", "lexical_judge")]["jobs"] == 1
    assert ("capeval", "lexical_judge") not in plain
    rows, _ = _plan(paper_config, capeval={"one_pass": True})
    judge = rows[("capeval_one_pass", "qwen3_judge")]
    assert (judge["jobs"], judge["server_starts"]) == (1, 1)
    assert judge["calls"] == plain[("capeval", "qwen3_judge")]["calls"]  # the same questions, in one job
    assert judge["load_gpu_hours"] == pytest.approx(150 / 3600)


def test_the_judge_prompt_shares_its_caption_prefix(paper_config):
    rows, _ = _plan(paper_config)
    capeval = rows[("capeval", "qwen3_judge")]["prefix_share"]
    lar = rows[("diagnose", "qwen3_judge")]["prefix_share"]
    assert 0 < lar < capeval < 1  # a LAR verdict repeats only the instructions
    assert rows[("caption", "qwen3_vl_8b")]["prefix_share"] is None  # not estimated
    assert rows[("capeval_one_pass", "lexical_judge")]["prefix_share"] is None  # a stand-in caches nothing
    # fewer questions per caption: fewer requests reuse the caption
    fewer, _ = _plan(paper_config, mcqa={"questions_per_dialogue": 1})
    assert 0 < fewer[("capeval", "qwen3_judge")]["prefix_share"] < capeval


def test_load_seconds_are_checked():
    with pytest.raises(ValueError, match="plan.load_seconds"):
        PlanSettings(load_seconds={"vllm": -1})
    assert PlanSettings(load_seconds={"vllm": 30}).load_seconds["serve"] == 120  # others keep their defaults
