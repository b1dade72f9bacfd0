"""Parse-time checks of the models registry (covip.config.models, run by covip.config.prepare.prepare):
backend options against the backend's declarations, dialects and sampling keys, roles and the
capabilities they need, and vLLM's image limit against the largest request the config builds."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from covip.clients.backends import BACKENDS, UnknownOptionError
from covip.clients.dialects import DialectError
from covip.config.models import images_per_request
from covip.config.prepare import ConfigError, prepare
from covip.content.scenes import DEFAULT_OPTIONS as SCENE_OPTIONS
from support.workflow import validated_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def default_config():
    return validated_config()


@pytest.fixture(scope="module")
def paper_config():
    return validated_config("paper.yaml")


def test_the_compositor_declares_the_scene_composer_options():
    assert dict(BACKENDS["local_compositor"].options) == SCENE_OPTIONS


@pytest.mark.parametrize("entry, key, known", [
    ({"backend": "vllm", "model": "m", "options": {"limit_images": 8}}, "limit_images", "max_images"),
    ({"backend": "local_lexical_judge", "options": {"threshold": 0.5}}, "threshold", "support_threshold"),
    ({"backend": "openai", "model": "gpt-4o", "options": {"image_modes": "inline"}}, "image_modes", "image_mode"),
    ({"backend": "reference_oracle", "options": {"anything": 1}}, "anything", "none (this backend reads no options)"),
])
def test_an_unknown_backend_option_fails_naming_entry_key_and_known_keys(default_config, entry, key, known):
    config = copy.deepcopy(default_config)
    config["models"]["oracle"] = entry
    with pytest.raises(UnknownOptionError) as error:
        prepare(config, ROOT)
    message = str(error.value)
    assert f"models.oracle.options: unknown key(s) ['{key}']" in message and known in message


def test_paper_config_with_the_old_limit_images_key_fails(paper_config):
    config = copy.deepcopy(paper_config)
    config["models"]["qwen3_vl_8b"]["options"]["limit_images"] = 8
    with pytest.raises(UnknownOptionError, match=r"models\.qwen3_vl_8b\.options: unknown key\(s\) \['limit_images'\]"):
        prepare(config, ROOT)


def test_max_images_is_derived_from_the_largest_context_plus_the_query(paper_config):
    prep = prepare(copy.deepcopy(paper_config), ROOT)
    # 4 positives (positives_weights has 4 entries) + 2 negatives each (negatives.per_positive) + the query.
    assert prep.models["qwen3_vl_8b"].resolved_options()["max_images"] == 13
    assert prep.config["models"]["qwen3_vl_8b_covip"]["options"]["max_images"] == 13  # the jobs see it too


@pytest.mark.parametrize("weights, per_positive, max_negatives, dialogues, expected", [
    ([1, 1, 1, 1], None, 4, 4, 9),
    ([1, 1, 0, 0], None, 4, 4, 7),  # two positives at most
    ([1, 0, 0, 0], None, 2, 4, 5),  # diagnostics (4 dialogues + query) outgrow the captions (1 + 2 + 1)
    ([1, 1, 1, 1], None, 8, 4, 13),
    ([1, 1, 1, 1], 2, 4, 4, 13),  # 4 positives x (1 + 2 negatives each) + the query; max_negatives unused
    ([1, 1, 1, 0], 2, 4, 4, 10),
    ([1, 0, 0, 0], 0, 4, 4, 5),  # no negatives: the diagnostics' 4 dialogues + query decide
])
def test_the_image_need_follows_the_settings(default_config, weights, per_positive, max_negatives, dialogues, expected):
    config = copy.deepcopy(default_config)
    config["synthesis"]["positives_weights"] = weights
    config["negatives"].update(per_positive=per_positive, max_negatives=max_negatives,
                               candidate_pool=max(8, max_negatives))
    config["diagnostics"]["dialogues_per_item"] = dialogues
    assert images_per_request(config)["tiny_vlm"][0] == expected


def test_a_vllm_entry_without_images_gets_a_limit_of_one(default_config):
    config = copy.deepcopy(default_config)
    config["models"]["vjudge"] = {"backend": "vllm", "model": "Qwen/Qwen3-30B-A3B-Instruct-2507"}
    config["evaluation"]["judges"] = ["vjudge"]
    assert prepare(config, ROOT).models["vjudge"].resolved_options()["max_images"] == 1


def test_a_max_images_below_the_largest_request_fails_at_parse_time(paper_config):
    config = copy.deepcopy(paper_config)
    config["models"]["qwen3_vl_8b"]["options"]["max_images"] = 8
    with pytest.raises(ConfigError) as error:
        prepare(config, ROOT)
    message = str(error.value)
    assert "models.qwen3_vl_8b.options.max_images is 8" in message and "13 images" in message
    assert "4 positives + 8 negatives + the query" in message
    config["models"]["qwen3_vl_8b"]["options"]["max_images"] = 16  # more is fine
    assert prepare(config, ROOT).models["qwen3_vl_8b"].resolved_options()["max_images"] == 16


def test_a_role_whose_backend_cannot_serve_it_fails(default_config):
    config = copy.deepcopy(default_config)
    config["evaluation"]["judges"] = ["embedder"]  # an image embedder cannot answer questions
    with pytest.raises(ConfigError, match=r"evaluation.judges.*backend 'local_color_texture' cannot serve 'chat'"):
        prepare(config, ROOT)
    config = copy.deepcopy(default_config)
    config["training"]["judge"] = "nobody"
    with pytest.raises(ConfigError, match=r"training.judge: 'nobody' is not an entry"):
        prepare(config, ROOT)


@pytest.mark.parametrize("entry, match", [
    ({"backend": "openai", "model": "gpt-4o", "sampling": {"top_k": 20}}, r"gpt_4o\.sampling: top_k: the 'openai' dialect"),
    ({"backend": "openai", "model": "gpt-4o", "sampling": {"temprature": 0}}, r"unknown key\(s\) \['temprature'\]"),
    ({"backend": "openai", "model": "o3-mini", "sampling": {"temperature": 0.0}}, r"accepts only the default temperature"),
    ({"backend": "openai", "model": "gpt-4o", "options": {"reasoning_effort": "low"}}, r"takes no reasoning_effort"),
    ({"backend": "openai", "model": "m", "base_url": "http://x/v1", "api_dialect": "tgi"}, r"unknown dialect 'tgi'"),
    ({"backend": "vllm", "model": "m", "api_dialect": "vllm"}, r"only entries of backend 'openai' have a dialect"),
])
def test_an_entry_its_dialect_cannot_serve_fails(default_config, entry, match):
    config = copy.deepcopy(default_config)
    config["models"]["gpt_4o"] = entry
    with pytest.raises((DialectError, ValueError), match=match):
        prepare(config, ROOT)


def test_dialect_defaults_and_what_passes(default_config):
    config = copy.deepcopy(default_config)
    config["models"].update({
        "hosted": {"backend": "openai", "model": "gpt-4o", "sampling": {"temperature": 0.0}},
        "served": {"backend": "openai", "model": "Qwen/Qwen3-VL-8B-Instruct", "base_url": "http://h:8000/v1",
                   "sampling": {"top_k": 20, "min_p": 0.0}},
        "llama": {"backend": "openai", "model": "g", "base_url": "http://h:8080/v1", "api_dialect": "llama_cpp",
                  "sampling": {"repetition_penalty": 1.1}},
        "thinker": {"backend": "openai", "model": "gpt-5-mini", "sampling": {"max_tokens": 64},
                    "options": {"reasoning_effort": "low"}},
    })
    prep = prepare(config, ROOT)
    assert [prep.models[n].dialect for n in ("hosted", "served", "llama", "thinker")] == ["openai", "vllm", "llama_cpp", "openai"]
    assert prep.models["oracle"].dialect is None


def test_a_served_vllm_image_limit_below_the_largest_request_fails_at_parse_time(paper_config):
    config = copy.deepcopy(paper_config)
    prepare(copy.deepcopy(config), ROOT)  # the paper's verifier: 8 images allowed, 4 positives + the query sent
    config["models"]["verifier"]["serve"]["args"] = ["--limit-mm-per-prompt", '{"image": 3}']
    with pytest.raises(ConfigError, match=r"models\.verifier\.serve\.args: --limit-mm-per-prompt allows 3 image\(s\), "
                                          r"but a request of this config sends it 5 \(4 positives \+ the query"):
        prepare(config, ROOT)
    config["models"]["verifier"]["serve"]["args"] = ["--limit-mm-per-prompt=image=3"]  # not JSON
    with pytest.raises(ConfigError, match="is not a JSON mapping"):
        prepare(config, ROOT)
