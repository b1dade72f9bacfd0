"""Build the tiny random-weight Qwen-VL model the offline default captions with (no hub needed)."""
from covip.local.tiny_vlm import build_tiny_vlm
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    path = build_tiny_vlm(snakemake.output[0], architecture=snakemake.params.architecture, seed=run.seed)  # noqa: F821
    print(f"tiny VLM saved to {path}")
