"""Parse-time checks and per-rule answers of the general multi-image benchmarks (covip.config.general)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from covip.config.prepare import ConfigError, prepare
from support.workflow import validated_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def default_config():
    return validated_config()


def with_evaluation(config, **changes):
    config = copy.deepcopy(config)
    config["evaluation"].update(changes)
    return config


def test_default_runs_the_tiny_benchmark_on_the_tiny_vlm_before_and_after_gspo(default_config):
    prep = prepare(copy.deepcopy(default_config), ROOT)
    assert prep.general_enabled and prep.general_benchmarks == ["tiny_multi_image"]
    assert prep.general_base_of() == {"tiny_vlm_gspo": "tiny_vlm"}  # the run's base_model is tiny_vlm's model
    assert prep.general_model_type("tiny_vlm_gspo") == "qwen2_5_vl"  # from the tiny VLM's architecture
    assert prep.roles("general_benchmark", {"policy": "tiny_vlm"}) == [("chat", "tiny_vlm")]
    assert prep.general_data_manifest("tiny_multi_image") == "results/general/data/tiny_multi_image.json"
    assert prep.general_data_manifest("mmiu") == "resources/benchmarks/mmiu.json"
    assert "model_tiny_vlm" in prep.model_inputs("tiny_vlm")  # the job waits for build_tiny_vlm
    task = prep.general_task_params("tiny_multi_image")
    assert task["entry"]["task"] == "covip_tiny_multi_image" and len(task["task_files"]) == 16


def test_an_unknown_benchmark_fails_naming_the_known_ones(default_config):
    with pytest.raises(ConfigError, match=r"unknown benchmark 'mmmu'.*muirbench"):
        prepare(with_evaluation(default_config, general_benchmarks=["mmmu"]), ROOT)


@pytest.mark.parametrize("policy, message", [("oracle", "reference_oracle"), ("lexical_judge", "cannot drive"),
                                             ("nobody", "not an entry")])
def test_a_policy_the_harness_cannot_drive_fails_with_the_alternatives(default_config, policy, message):
    with pytest.raises(ConfigError, match=message) as error:
        prepare(with_evaluation(default_config, general_policies=[policy]), ROOT)
    assert "general_policies" in str(error.value)


def test_the_papers_config_lists_the_four_for_base_and_covip():
    config = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    assert config["evaluation"]["general_benchmarks"] == ["mm_niah", "mmneedle", "muirbench", "mmiu"]
    assert config["evaluation"]["general_policies"] == ["qwen3_vl_8b", "qwen3_vl_8b_covip", "covip_authors"]
    from snakemake.utils import validate

    validate(config, str(ROOT / "config" / "schemas" / "config.schema.yaml"))
    prep = prepare(config, ROOT)
    assert prep.general_base_of() == {"qwen3_vl_8b_covip": "qwen3_vl_8b"}
    assert prep.general_model_type("qwen3_vl_8b_covip") == "qwen3_vl"
