"""covip.config.load: the config the `covip` commands read, merged as the workflow merges it."""

from __future__ import annotations

from pathlib import Path

import yaml

from covip.config.load import load_config, switched_entries

ROOT = Path(__file__).resolve().parents[2]


def test_an_overlay_that_switches_a_backend_replaces_the_entry(tmp_path):
    overlay = tmp_path / "gemini.yaml"
    overlay.write_text(yaml.safe_dump({"models": {
        "image_generator": {"backend": "gemini", "model": "gemini-2.5-flash-image"},  # switched: replaced
        "tiny_vlm": {"sampling": {"max_tokens": 16}},  # same backend: merged key by key
    }}))
    assert switched_entries([overlay], ROOT) == {"image_generator": {"backend": "gemini", "model": "gemini-2.5-flash-image"}}
    config = load_config([overlay], ROOT)
    assert "options" not in config["models"]["image_generator"]  # no compositor defect_rate carried over
    assert config["models"]["tiny_vlm"]["options"] == {"batch_size": 8}
    assert config["models"]["tiny_vlm"]["sampling"] == {"temperature": 0.0, "max_tokens": 16}


def test_a_standalone_file_is_the_whole_config():
    config = load_config([ROOT / "config" / "paper.yaml"], ROOT)
    assert config["outdir"] == "results/paper" and "tiny_vlm_gspo" not in config["models"]
    assert switched_entries([ROOT / "config" / "paper.yaml"], ROOT) == {}
