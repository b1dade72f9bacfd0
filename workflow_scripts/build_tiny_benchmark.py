"""Build the tiny offline multi-image benchmark (coloured squares) that lmms-eval reads locally."""
import json
from pathlib import Path

from covip.core import schemas
from covip.core.io import write_text_atomic
from covip.stages.general.settings import GeneralSettings
from covip.stages.general.tiny import build_tiny_benchmark
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(GeneralSettings, "general_benchmarks")
    run.write(build_tiny_benchmark(settings.tiny_items, run.seed), schemas.TINY_BENCHMARK, "data")
    manifest = {"data": "tiny_multi_image", "kind": "built", "data_dir": str(Path(snakemake.output.data).parent)}  # noqa: F821
    write_text_atomic(snakemake.output.manifest, json.dumps(manifest, indent=2))  # noqa: F821
