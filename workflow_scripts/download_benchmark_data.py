"""Fetch one hub benchmark's files into the Hugging Face cache (HF_HOME) and write where they are."""
import json

from covip.config.general import download_entry
from covip.core.io import write_text_atomic
from covip.harness.download import download_benchmark
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    manifest = download_benchmark(download_entry(snakemake.wildcards.hub_data))  # noqa: F821
    print(f"{manifest['repo_id']}@{manifest['revision']}: {len(manifest['files'])} files, {manifest['bytes']} bytes")
    write_text_atomic(snakemake.output[0], json.dumps(manifest, indent=2))  # noqa: F821
