"""The benchmark catalog and the model routing: parse-time answers, checked against lmms-eval's files."""

from __future__ import annotations

import pytest

from covip.clients.spec import ModelSpec
from covip.harness.catalog import UnknownBenchmarkError, benchmark, benchmark_names, catalog
from covip.harness.models import UndrivableModelError, check_drivable, harness_model, model_type_of

PAPER = {"MM-NIAH", "MMNeedle", "MuirBench", "MMIU"}


def test_the_catalog_has_the_papers_four_and_the_tiny_checks():
    assert {entry.paper for entry in catalog().values() if entry.paper} == PAPER
    assert {"tiny_multi_image", "tiny_multi_image_text"} <= set(benchmark_names())
    assert all(catalog()[name].stand_in for name in ("tiny_multi_image", "tiny_multi_image_text"))


def test_an_unknown_benchmark_names_the_known_ones():
    with pytest.raises(UnknownBenchmarkError, match="mmiu"):
        benchmark("mmmu", "evaluation.general_benchmarks")


@pytest.mark.parametrize("name", sorted(catalog()))
def test_every_task_folder_defines_its_task(name):
    # lmms-eval's own tasks are read from the installed lmms-eval (its task folder), ours from the package.
    pytest.importorskip("lmms_eval")
    entry = catalog()[name]
    texts = [p.read_text() for p in entry.task_folder().glob("*.yaml")]
    assert any(f"task: {entry.task}" in t or f'task: "{entry.task}"' in t for t in texts), entry.task_folder()


def test_lmms_eval_lacks_the_tasks_we_define_ourselves():
    pytest.importorskip("lmms_eval")
    ours = [entry for entry in catalog().values() if entry.source == "covip" and entry.paper]
    lmms_tasks = catalog()["muirbench"].task_folder().parent
    assert {e.paper for e in ours} == {"MMIU", "MM-NIAH", "MMNeedle"}
    assert not [p for p in lmms_tasks.iterdir() if p.name.lower().replace("-", "_") in ("mmiu", "mm_niah", "mmneedle")]


def _spec(**entry):
    return ModelSpec.from_config(entry.pop("name", "p"), entry)


def test_routes_api_in_process_and_served():
    api = harness_model(_spec(backend="openai", model="gpt-4o", base_url="http://h:1/v1", api_key_env="K"))
    assert (api.name, api.route, api.args["base_url"], api.args["model_version"]) == ("openai", "api", "http://h:1/v1", "gpt-4o")
    local = harness_model(_spec(backend="transformers", model="/m", device="cpu"), model_type="qwen3_vl", batch_size=4)
    assert (local.name, local.route, local.args["pretrained"], local.args["batch_size"]) == ("qwen3_vl", "in_process", "/m", 4)
    vllm = harness_model(_spec(backend="vllm", model="Qwen/Qwen3-VL-8B-Instruct", gpus=2), model_type="qwen3_vl")
    assert (vllm.name, vllm.args["tensor_parallel_size"], vllm.args["is_qwen3_vl"]) == ("vllm", 2, True)
    served = harness_model(_spec(backend="vllm", model="/ckpt"), base_url="http://127.0.0.1:9/v1")
    assert (served.name, served.route, served.args["api_key"]) == ("openai", "served", "EMPTY")
    assert "api_key" not in served.public_args()


@pytest.mark.parametrize("entry, model_type, message", [
    ({"backend": "reference_oracle", "model": "oracle"}, None, "cannot drive"),
    ({"backend": "gemini", "model": "gemini-2.0-flash"}, None, "cannot drive"),
    ({"backend": "transformers", "model": "/some/llava"}, "llava", "qwen2_5_vl"),
])
def test_what_the_harness_cannot_drive_fails_with_the_alternatives(entry, model_type, message):
    with pytest.raises(UndrivableModelError, match=message) as error:
        check_drivable(_spec(**entry), model_type, "evaluation.general_policies")
    assert "openai" in str(error.value) and "evaluation.general_policies" in str(error.value)


def test_model_type_from_the_checkpoint_or_the_hub_id(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    assert model_type_of(str(tmp_path)) == "qwen2_5_vl"
    assert model_type_of("Qwen/Qwen3-VL-8B-Instruct") == "qwen3_vl"
    assert model_type_of("somebody/other-model") is None
