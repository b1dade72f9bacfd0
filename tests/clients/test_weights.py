"""Weights sources, and fetching them without the network: a local folder standing in for the hub, and
huggingface_hub's real snapshot_download against a hub cache seeded by hand (local_files_only)."""

from __future__ import annotations

import json

import pytest

from support.hub import seed_hub_cache

from covip.clients.spec import ModelSpec
from covip.clients.weights import WeightsError, WeightsSource, download, fetch, local_path, parse_source, source_of


@pytest.mark.parametrize("text, expected", [
    ("Qwen/Qwen3-VL-8B-Instruct", WeightsSource("hub", "Qwen/Qwen3-VL-8B-Instruct")),
    ("hf://Qwen/Qwen3-30B-A3B-Instruct-2507-FP8@0123abc", WeightsSource("hub", "Qwen/Qwen3-30B-A3B-Instruct-2507-FP8", "0123abc")),
    ("local://models/judge.gguf", WeightsSource("local", "models/judge.gguf")),
    ("local:///abs/ckpt", WeightsSource("local", "/abs/ckpt")),
    ("open_clip://ViT-L-14-quickgelu/openai", WeightsSource("open_clip", "ViT-L-14-quickgelu/openai")),
    ("results/training/run/model", WeightsSource("local", "results/training/run/model")),
    ("hf://datasets/Yeongtak/lsd", WeightsSource("hub", "Yeongtak/lsd", None, "dataset")),
    ("hf://datasets/Yeongtak/lar@abc", WeightsSource("hub", "Yeongtak/lar", "abc", "dataset")),
])
def test_sources_parse(text, expected):
    assert parse_source(text) == expected


@pytest.mark.parametrize("text", ["hf://not-a-repo", "hf://datasets/lsd", "open_clip://ViT-B-32"])
def test_malformed_sources_fail(text):
    with pytest.raises(ValueError, match="source is"):
        parse_source(text)


def spec(**entry) -> ModelSpec:
    return ModelSpec.from_config("m", entry)


def test_which_entries_need_weights_fetched():
    assert source_of(spec(backend="openai", model="Qwen/Q", serve={})) == WeightsSource("hub", "Qwen/Q")
    assert source_of(spec(backend="vllm", model="Qwen/Q")) == WeightsSource("hub", "Qwen/Q")
    assert source_of(spec(backend="openai", model="gpt-4o")) is None  # an API model
    assert source_of(spec(backend="local_lexical_judge")) is None
    assert source_of(spec(backend="transformers", model="resources/models/tiny-qwen-vl")) is None  # a path
    assert source_of(spec(backend="vllm", model="out/training/r/model"), lambda m: m == "out/training/r/model") is None
    assert source_of(spec(backend="open_clip", model="ViT-L-14", pretrained="openai")) == WeightsSource("open_clip", "ViT-L-14/openai")
    assert source_of(spec(backend="open_clip", model="ViT-L-14", pretrained="/ckpt/clip.pt")) is None
    assert source_of(spec(backend="openai", model="gemma", weights="local://g.gguf", serve={})) == WeightsSource("local", "g.gguf")
    slug = WeightsSource("hub", "Qwen/Q").slug
    assert slug.startswith("hub--Qwen--Q--") and "/" not in slug and slug == WeightsSource("hub", "Qwen/Q").slug
    assert WeightsSource("hub", "Qwen/Q", "rev").slug != slug


def test_a_local_source_is_checked_not_copied(tmp_path):
    gguf = tmp_path / "judge.gguf"
    with pytest.raises(WeightsError, match="nothing at"):
        fetch(parse_source(f"local://{gguf}"))
    gguf.write_bytes(b"GGUF")
    assert fetch(parse_source(f"local://{gguf}")) == str(gguf)
    marker = download(f"local://{gguf}")
    assert marker["path"] == str(gguf) and marker["files"] == 1 and marker["bytes"] == 4


def test_a_hub_source_resolves_from_a_seeded_cache_without_the_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_home = tmp_path / "hf"
    snapshot = seed_hub_cache(hf_home, "covip-test/tiny", {"config.json": b"{}", "model.safetensors": b"w" * 10})
    source = parse_source("covip-test/tiny")
    assert local_path(source, str(hf_home)) == str(snapshot)  # huggingface_hub's own snapshot_download
    marker = download("hf://covip-test/tiny", hf_home=str(hf_home), offline=True)
    assert marker == {**marker, "path": str(snapshot), "files": 2, "bytes": 12, "checked_only": True}
    with pytest.raises(WeightsError, match="covip-test/missing(.|\n)*seed the hub cache"):
        local_path(parse_source("covip-test/missing"), str(hf_home))


def test_online_download_asks_snapshot_download_for_the_repository(tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        folder = tmp_path / "snap"
        folder.mkdir(exist_ok=True)
        (folder / "w.bin").write_bytes(b"12345")
        return str(folder)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    marker = download("hf://org/model@v1", hf_home=str(tmp_path / "hf"))
    assert calls == [("org/model", {"revision": "v1", "repo_type": "model", "cache_dir": str(tmp_path / "hf" / "hub"),
                                    "local_files_only": False})]
    assert marker["bytes"] == 5 and not marker["checked_only"]
    json.dumps(marker)  # the marker file is JSON
    download("hf://datasets/Yeongtak/lsd", hf_home=str(tmp_path / "hf"))
    assert calls[-1] == ("Yeongtak/lsd", {"revision": None, "repo_type": "dataset", "cache_dir": str(tmp_path / "hf" / "hub"),
                                          "local_files_only": False})


def test_a_hub_dataset_resolves_from_a_seeded_cache_and_differs_from_a_model_of_that_name(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf_home = tmp_path / "hf"
    snapshot = seed_hub_cache(hf_home, "Yeongtak/lsd", {"data/test-00000-of-00001.parquet": b"PAR1"}, repo_type="dataset")
    dataset = parse_source("hf://datasets/Yeongtak/lsd")
    assert local_path(dataset, str(hf_home)) == str(snapshot)
    assert dataset.slug != parse_source("hf://Yeongtak/lsd").slug  # their markers are different files
    with pytest.raises(WeightsError, match="hf://Yeongtak/lsd"):
        local_path(parse_source("hf://Yeongtak/lsd"), str(hf_home))  # no model repository of that name is cached


def test_open_clip_weights_come_through_open_clip(tmp_path, monkeypatch):
    import open_clip.pretrained as pretrained

    seen = []
    monkeypatch.setattr(pretrained, "download_pretrained", lambda cfg, cache_dir=None: seen.append((cfg["hf_hub"], cache_dir)) or __file__)
    assert fetch(parse_source("open_clip://ViT-L-14-quickgelu/openai"), hf_home=str(tmp_path)) == __file__
    assert seen == [("timm/vit_large_patch14_clip_224.openai/", str(tmp_path / "hub"))]
    with pytest.raises(WeightsError, match="no pretrained tag 'nope'"):
        fetch(parse_source("open_clip://ViT-L-14-quickgelu/nope"))
