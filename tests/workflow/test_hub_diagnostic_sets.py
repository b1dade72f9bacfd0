"""The authors' diagnostic sets as hub datasets (`diagnostic_sources: {lsd: hf://datasets/org/name}`), the
way config/paper.yaml names them: rule download_models fetches the dataset with the weights (here it
only checks a seeded, offline hub cache, as on an air-gapped cluster), and build_diagnostic_set reads
the snapshot from the job's HF_HOME through huggingface_hub, every row of it."""

from __future__ import annotations

import shutil

import pytest
import yaml

from support.hub import seed_hub_cache
from support.workflow import copy_workflow, snakemake

from covip.stages.diagnostics.hub import load_diagnostic_set

pytestmark = pytest.mark.integration


def test_a_hub_dataset_set_is_fetched_by_download_models_and_read_whole(tmp_path):
    workdir = copy_workflow(tmp_path)
    snakemake(workdir, "--", "results/diagnostics/sets/lsd.parquet")  # a generated set, to publish
    generated = workdir / "results" / "diagnostics" / "sets" / "lsd.parquet"
    hf_home = tmp_path / "hf"
    snapshot = seed_hub_cache(hf_home, "covip-test/lsd", {"README.md": b"# lsd"}, repo_type="dataset")
    (snapshot / "data").mkdir()
    shutil.copy(generated, snapshot / "data" / "test-00000-of-00001.parquet")
    (workdir / "hub.yaml").write_text(yaml.safe_dump({
        "outdir": "from_hub", "diagnostic_sources": {"lsd": "hf://datasets/covip-test/lsd"},
        "weights": {"hf_home": str(hf_home), "offline": True}}))

    dry = snakemake(workdir, "hub.yaml", "-n", "--", "from_hub/diagnostics/sets/lsd.parquet")
    assert "download_models" in dry.stdout and "build_concepts" not in dry.stdout  # nothing generated
    snakemake(workdir, "hub.yaml", "--", "from_hub/diagnostics/sets/lsd.parquet")
    assert load_diagnostic_set(workdir / "from_hub" / "diagnostics" / "sets" / "lsd.parquet", "lsd") == \
        load_diagnostic_set(generated, "lsd")
    markers = list((workdir / "resources" / "weights").glob("hub--covip-test--lsd--*.json"))
    assert len(markers) == 1 and yaml.safe_load(markers[0].read_text())["checked_only"] is True

    # Not in the cache, and offline: the run stops before any job, naming the dataset.
    (workdir / "missing.yaml").write_text(yaml.safe_dump({
        "outdir": "missing", "diagnostic_sources": {"lsd": "hf://datasets/covip-test/absent"},
        "weights": {"hf_home": str(hf_home), "offline": True}}))
    failed = snakemake(workdir, "missing.yaml", "--", "missing/diagnostics/sets/lsd.parquet", check=False)
    assert failed.returncode != 0
    assert "diagnostic_sources.lsd: 'hf://datasets/covip-test/absent' is not in the hub cache" in failed.stdout + failed.stderr
