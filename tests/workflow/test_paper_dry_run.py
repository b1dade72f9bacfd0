"""`snakemake -n --configfile config/paper.yaml` checks the paper's registry while the workflow is
parsed: a backend option its backend does not read (the `limit_images` paper.yaml once carried, which
killed every vLLM caption and diagnose job at its start) fails the dry run, naming the entry, the key
and the known keys; the shipped paper.yaml passes.

Like benchmarks/dag_overhead.py, an overlay points the concept manifest at an empty CSV and the
output folder at a temporary directory; the API keys are dummies and the proxies a closed port, and a
dry run calls no model anyway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.workflow import copy_workflow

pytestmark = pytest.mark.integration


def dry_run(workdir: Path, paper: str) -> subprocess.CompletedProcess:
    manifest = workdir / "manifest.csv"
    manifest.write_text("path,category\n", encoding="utf-8")
    (workdir / "paper_variant.yaml").write_text(paper, encoding="utf-8")
    overlay = workdir / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"outdir": str(workdir / "out"), "concept_pool": {"path": str(manifest)}}))
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"), PYTHONDONTWRITEBYTECODE="1",
               OPENAI_API_KEY="dummy-for-dry-run", GEMINI_API_KEY="dummy-for-dry-run",
               HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "1",
         "--configfile", "paper_variant.yaml", str(overlay), "--"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("paper"))


def test_the_old_limit_images_key_fails_the_dry_run(workdir):
    paper = (workdir / "config" / "paper.yaml").read_text()
    old = paper.replace("options: {max_model_len: 32768}", "options: {max_model_len: 32768, limit_images: 8}")
    assert old != paper
    result = dry_run(workdir, old)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "models.qwen3_vl_8b.options: unknown key(s) ['limit_images'] for backend 'vllm'" in output
    assert "max_images" in output  # the known keys are listed
    assert not (workdir / "out").exists()


def test_a_max_images_below_the_largest_context_fails_the_dry_run(workdir):
    paper = (workdir / "config" / "paper.yaml").read_text()
    small = paper.replace("options: {max_model_len: 32768}", "options: {max_model_len: 32768, max_images: 8}")
    result = dry_run(workdir, small)
    assert result.returncode != 0
    assert "max_images is 8, but a request of this config sends it 13 images" in result.stdout + result.stderr


def test_the_shipped_paper_config_passes_the_dry_run(workdir):
    result = dry_run(workdir, (workdir / "config" / "paper.yaml").read_text())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "caption" in result.stdout + result.stderr
