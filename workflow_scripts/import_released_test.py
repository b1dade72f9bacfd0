"""The authors' released test set (JSONL + images + QAS_GT_test.json) as our test split."""
from covip.core import schemas
from covip.core.released import iter_released_test
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    rows = iter_released_test(snakemake.input.meta, snakemake.input.qas_gt, snakemake.params.image_root)  # noqa: F821
    run.write_stream(rows, schemas.SPLIT)  # streamed and atomic: the first bad record leaves no file
