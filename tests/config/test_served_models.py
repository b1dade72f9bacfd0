"""What the workflow derives at parse time for served models, weights and the cluster: GPUs per job,
conda envs, params, inputs, the jobs' environment, SLURM partition and wall time."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from covip.config.prepare import prepare

ROOT = Path(__file__).resolve().parents[2]
JUDGE = {"backend": "openai", "model": "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8",
         "serve": {"command": "vllm", "gpus": 1, "args": ["--max-model-len", "16384"]}}


@pytest.fixture(scope="module")
def config():
    from snakemake.utils import validate

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["models"]["qwen3_judge"] = copy.deepcopy(JUDGE)
    config["models"]["policy"] = {"backend": "vllm", "model": "Qwen/Qwen3-VL-8B-Instruct", "gpus": 1}
    config["evaluation"].update(policies=["oracle", "policy"], judges=["lexical_judge", "qwen3_judge"],
                                diagnostic_judge="qwen3_judge")
    config["training"]["judge"] = "qwen3_judge"
    config["training"]["runs"]["tiny_vlm_gspo"]["gpus"] = 2
    validate(config, str(ROOT / "config" / "schemas" / "config.schema.yaml"))
    return config


def test_a_job_counts_the_gpus_of_the_servers_it_starts(config):
    prep = prepare(copy.deepcopy(config), ROOT)
    assert prep.gpus("capeval", {"judge": "qwen3_judge", "policy": "oracle"}) == 1
    assert prep.gpus("capeval", {"judge": "lexical_judge", "policy": "oracle"}) == 0
    # One diagnose job answers every task of a (condition, policy): with LAR, the judge's server comes too.
    assert prep.gpus("diagnose", {"policy": "policy", "condition": "intact"}) == 2  # in-process policy + served judge
    no_lar = copy.deepcopy(config)
    no_lar["evaluation"]["diagnostic_tasks"] = ["lsd", "itr"]
    assert prepare(no_lar, ROOT).gpus("diagnose", {"policy": "policy", "condition": "intact"}) == 1
    assert prep.gpus("train_gspo", {"run": "tiny_vlm_gspo"}) == 3  # 2 to train on, 1 for the reward's judge
    assert prep.served_role_list("train_gspo", {"run": "tiny_vlm_gspo"}) == "qwen3_judge"


def test_serving_flags_are_deployment_not_params(config):
    prep = prepare(copy.deepcopy(config), ROOT)
    # The job gets the entry without `serve`, but with the dialect `vllm serve` implies: the body's shape.
    assert prep.model_params("qwen3_judge") == {"qwen3_judge": {**{k: v for k, v in JUDGE.items() if k != "serve"},
                                                                "api_dialect": "vllm"}}
    flags = copy.deepcopy(config)
    flags["models"]["qwen3_judge"]["serve"]["args"] = ["--max-model-len", "32768"]
    assert prepare(flags, ROOT).model_params("qwen3_judge") == prep.model_params("qwen3_judge")  # no rerun
    # A served entry's sampling keys of its dialect survive into the job's own registry.
    from covip.clients.registry import ModelRegistry

    sampled = copy.deepcopy(config)
    sampled["models"]["qwen3_judge"]["sampling"] = {"temperature": 0.7, "top_k": 20, "min_p": 0.0}
    params = prepare(sampled, ROOT).model_params("qwen3_judge")
    assert ModelRegistry(params, served={"qwen3_judge": "http://127.0.0.1:1/v1"}).spec("qwen3_judge").dialect == "vllm"
    env = prep.job_environment()
    assert json.loads(env["COVIP_SERVE_ENTRIES"])["qwen3_judge"]["serve"]["args"] == ["--max-model-len", "16384"]
    assert env["HF_HUB_OFFLINE"] == "1" and "HF_HOME" not in env
    other = copy.deepcopy(config)
    other["weights"] = {"hf_home": "resources/hf", "offline": False, "jobs_offline": False}
    env = prepare(other, ROOT).job_environment()
    assert env["HF_HOME"] == str((Path.cwd() / "resources" / "hf").resolve()) and "HF_HUB_OFFLINE" not in env


def test_conda_envs_follow_the_servers_and_the_rollouts(config):
    prep = prepare(copy.deepcopy(config), ROOT)
    assert prep.conda_env("capeval", {"judge": "qwen3_judge", "policy": "oracle"}) == "../envs/vllm.yaml"
    assert prep.conda_env("capeval", {"judge": "lexical_judge", "policy": "oracle"}) == "../envs/data.yaml"
    assert prep.conda_env("train_gspo", {"run": "tiny_vlm_gspo"}) == "../envs/rollout.yaml"  # GPUs, vLLM rollouts
    cpu = copy.deepcopy(config)
    cpu["training"]["judge"] = "lexical_judge"
    cpu["training"]["runs"]["tiny_vlm_gspo"]["gpus"] = 0
    assert prepare(cpu, ROOT).conda_env("train_gspo", {"run": "tiny_vlm_gspo"}) == "../envs/train.yaml"


def test_jobs_wait_for_the_weights_they_use_and_each_source_is_fetched_once(config):
    prep = prepare(copy.deepcopy(config), ROOT)
    sources = prep.weights_sources
    assert sorted(source.text for source in sources.values()) == [
        "hf://Qwen/Qwen3-30B-A3B-Instruct-2507-FP8", "hf://Qwen/Qwen3-VL-8B-Instruct"]
    judge = next(slug for slug, source in sources.items() if "30B" in source.location)
    inputs = prep.model_inputs("qwen3_judge", captions="c.parquet")
    assert inputs == {"captions": "c.parquet", f"weights_{judge}": f"resources/weights/{judge}.json"}
    assert prep.model_inputs("oracle") == {}
    assert prep.weights_params(judge) == {"source": "hf://Qwen/Qwen3-30B-A3B-Instruct-2507-FP8", "hf_home": None}
    # The tiny VLM is built by the workflow: nothing to fetch for it, or for the run trained from it.
    assert f"weights_{judge}" in prep.training_inputs("tiny_vlm_gspo")
    assert "base_model" in prep.training_inputs("tiny_vlm_gspo")


def test_partition_and_wall_time_come_from_config_else_sbatch_partition(config, monkeypatch):
    monkeypatch.delenv("SBATCH_PARTITION", raising=False)
    cluster = copy.deepcopy(config)
    cluster["resources"]["rules"]["train_gspo"] = {"threads": 2, "mem_mb": 4000, "runtime": 720, "slurm_partition": "gpu-long"}
    prep = prepare(cluster, ROOT)
    assert "slurm_partition" not in prep.resources("caption")  # nothing set: the profile's or the cluster's default
    train = prep.resources("train_gspo")
    assert (train["runtime"], train["slurm_partition"]) == (720, "gpu-long")
    monkeypatch.setenv("SBATCH_PARTITION", "gpu")
    assert prep.resources("caption")["slurm_partition"] == "gpu"  # the plugin's `-p <default>` would override it
    assert prep.resources("train_gspo")["slurm_partition"] == "gpu-long"


def test_paper_config_serves_its_judge_and_vlm_and_asks_hours_for_training():
    from snakemake.utils import validate

    paper = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    validate(paper, str(ROOT / "config" / "schemas" / "config.schema.yaml"))
    prep = prepare(paper, ROOT)
    assert all(prep.models[role].serve is not None and prep.models[role].base_url is None
               for role in ("verifier", "dialogue_writer", "mcqa_writer", "qwen3_judge"))
    assert "--max-model-len" in prep.models["qwen3_judge"].serve.args
    assert prep.resources("train_gspo")["runtime"] >= 8 * 60
    assert prep.gpus("train_gspo", {"run": "qwen3_vl_8b_covip"}) == 5
    assert {source.kind for source in prep.weights_sources.values()} == {"hub", "open_clip"}
