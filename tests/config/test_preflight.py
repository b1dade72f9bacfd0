"""`covip preflight` (covip.config.preflight): each kind of problem it reports, one line each, with a
loopback server for the endpoint checks; and the command's exit status."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from covip.config.prepare import prepare
from covip.config.preflight import config_gpu_requests, config_roles, preflight
from covip.workflow.gpu_slots import DevicePool
from support.strict_openai import StrictOpenAIServer
from support.workflow import validated_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def default_config():
    return validated_config()


def _prepared(config, **models):
    config = copy.deepcopy(config)
    config["models"].update(models)
    return prepare(config, ROOT)


def _lines(report):
    return [finding.line() for finding in report.problems]


def test_the_embedded_default_passes(default_config):
    prep = _prepared(default_config)
    report = preflight(prep, config_roles(prep), config_gpu_requests(prep), training_runs=["tiny_vlm_gspo"], env={},
                       pool=DevicePool((), "test"))
    assert report.ok, report.text()
    assert "built by the workflow" in report.text()


def test_a_missing_key_is_named_and_never_printed(default_config):
    prep = _prepared(default_config, gpt={"backend": "openai", "model": "gpt-4o", "api_key_env": "COVIP_TEST_KEY"})
    assert _lines(preflight(prep, ["gpt"], env={})) == [
        "key: models.gpt: the environment variable COVIP_TEST_KEY is not set"]
    report = preflight(prep, ["gpt"], env={"COVIP_TEST_KEY": "sk-secret-value"})
    assert report.ok and "sk-secret-value" not in report.text() and "COVIP_TEST_KEY is set" in report.text()


def test_endpoints_reachable_listing_the_model_or_served_by_the_workflow(default_config):
    with StrictOpenAIServer() as server:
        prep = _prepared(default_config,
                         up={"backend": "openai", "model": "gpt-4o", "base_url": server.base_url, "api_dialect": "openai"},
                         wrong={"backend": "openai", "model": "gpt-9", "base_url": server.base_url, "api_dialect": "openai"},
                         down={"backend": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"})
        report = preflight(prep, ["up", "wrong", "down"], env={}, timeout_s=2)
        assert server.model_list_calls == 1  # one probe per server, however many entries share it
    lines = _lines(report)
    assert len(lines) == 2
    assert lines[0].startswith("endpoint: models.down: GET http://127.0.0.1:9/v1/models failed within 2 s")
    assert lines[1] == f"endpoint: models.wrong: {server.base_url}/models serves ['gpt-4o'], not 'gpt-9'; fix `model` " \
                       "or the server's served model name"
    assert f"endpoint: models.up: {server.base_url}/models answers" in report.text()


def test_an_entry_the_workflow_serves_is_not_probed(default_config, tmp_path):
    hub_home = tmp_path / "hf"  # an empty hub cache: the weights are fetched by rule download_models
    config = copy.deepcopy(default_config)
    config["weights"] = {"hf_home": str(hub_home)}
    prep = _prepared(config, served={"backend": "openai", "model": "org/served", "serve": {"command": "vllm"}})
    report = preflight(prep, ["served"], env={}, check_packages=False)
    assert report.ok and "endpoint: models.served: served by the workflow" in report.text()
    assert "hf://org/served is not in the hub cache of weights.hf_home" in report.text()


def _seed_hub_cache(hub: Path, repo: str) -> None:
    """A hub cache entry as huggingface_hub lays it out: refs/main naming a snapshot with config.json."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    (folder / "snapshots" / "abc").mkdir(parents=True)
    (folder / "snapshots" / "abc" / "config.json").write_text("{}")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text("abc")


def test_weights_are_looked_up_in_the_runs_hub_cache(default_config, tmp_path):
    hf_home = tmp_path / "hf"
    _seed_hub_cache(hf_home / "hub", "org/cached")
    config = copy.deepcopy(default_config)
    config["weights"] = {"hf_home": str(hf_home), "offline": True}
    prep = _prepared(config, cached={"backend": "transformers", "model": "org/cached"},
                     missing={"backend": "transformers", "model": "org/missing"})
    offline = preflight(prep, ["cached", "missing"], env={}, check_packages=False)
    assert _lines(offline) == [f"weights: models.missing: 'hf://org/missing' is not in the hub cache of weights.hf_home "
                               f"({hf_home}), and weights.offline: true forbids rule download_models to fetch it; seed "
                               "the cache (`hf download org/missing`) or set weights.offline: false"]
    assert "models.cached: hf://org/cached is in the hub cache of weights.hf_home" in offline.text()
    config["weights"]["offline"] = False  # the workflow fetches what is missing: not a problem
    online = preflight(_prepared(config, missing={"backend": "transformers", "model": "org/missing"}), ["missing"],
                       env={}, check_packages=False)
    assert online.ok and "rule download_models fetches it first" in online.text()


def test_a_backend_package_missing_here(default_config, monkeypatch):
    import covip.config.preflight as module

    monkeypatch.setattr(module, "_importable", lambda name: name != "vllm")
    prep = _prepared(default_config, fast={"backend": "vllm", "model": "m", "options": {"max_images": 12}})
    assert _lines(preflight(prep, ["fast", "oracle"], env={})) == [
        "package: backend vllm: module 'vllm' is not importable in this environment (needed by models.fast)"]
    assert preflight(prep, ["fast"], env={}, check_packages=False).ok  # jobs in their own conda envs


def test_gpus_requested_against_visible(default_config):
    config = copy.deepcopy(default_config)
    config["models"]["tiny_vlm"]["gpus"] = 2
    config["resources"]["rules"]["embed_concepts"] = {"gpu": 1}
    prep = prepare(config, ROOT)
    requests = config_gpu_requests(prep)
    assert requests == {"caption": 2, "diagnose": 2, "embed_concepts": 1}
    report = preflight(prep, [], requests, env={}, pool=DevicePool(("0",), "CUDA_VISIBLE_DEVICES"))
    assert _lines(report) == ["gpus: rule caption: asks for 2 GPU(s) but only 1 are available here (CUDA_VISIBLE_DEVICES: 0)",
                              "gpus: rule diagnose: asks for 2 GPU(s) but only 1 are available here (CUDA_VISIBLE_DEVICES: 0)"]


def test_the_command_exits_non_zero_with_one_line_per_problem(tmp_path, monkeypatch, capsys):
    from covip.cli import main

    monkeypatch.delenv("COVIP_TEST_KEY", raising=False)
    overlay = tmp_path / "mine.yaml"
    overlay.write_text(yaml.safe_dump({"models": {"gpt": {"backend": "openai", "model": "gpt-4o",
                                                          "api_key_env": "COVIP_TEST_KEY"}},
                                       "evaluation": {"policies": ["oracle", "gpt"]}}))
    monkeypatch.chdir(ROOT)
    assert main(["preflight", "--configfile", str(overlay)]) == 1
    out = capsys.readouterr().out
    assert "problem: key: models.gpt: the environment variable COVIP_TEST_KEY is not set" in out.splitlines()
    assert main(["preflight"]) == 0


def test_a_hub_diagnostic_set_missing_from_an_offline_cache_is_a_problem(default_config, tmp_path):
    from support.hub import seed_hub_cache

    config = copy.deepcopy(default_config)
    config["diagnostic_sources"] = {"lsd": "hf://datasets/Yeongtak/lsd", "lar": "hf://datasets/Yeongtak/lar"}
    config["weights"] = {**config.get("weights", {}), "hf_home": str(tmp_path / "hf"), "offline": True}
    seed_hub_cache(tmp_path / "hf", "Yeongtak/lsd", {"data/test-00000-of-00001.parquet": b"PAR1"}, repo_type="dataset")
    prep = prepare(config, ROOT)
    report = preflight(prep, [], diagnostic_tasks=["lsd", "lar"], env={})
    assert _lines(report) == [
        "weights: diagnostic_sources.lar: 'hf://datasets/Yeongtak/lar' is not in the hub cache of weights.hf_home "
        f"({tmp_path / 'hf'}), and weights.offline: true forbids rule download_models to fetch it; seed the cache "
        "(`hf download --repo-type dataset Yeongtak/lar`) or set weights.offline: false"]
    assert "hf://datasets/Yeongtak/lsd is in the hub cache" in report.text()
