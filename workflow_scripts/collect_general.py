"""Gather every general-benchmark job into the report's multi-image table (trained vs base, intervals)."""
from covip.core import schemas
from covip.core.io import read_rows
from covip.harness.catalog import catalog
from covip.stages.general.settings import GeneralSettings
from covip.stages.general.summary import summarize_general
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(GeneralSettings, "general_benchmarks")
    scores = [row for path in snakemake.input.scores for row in read_rows(path, schemas.GENERAL_SCORES)]  # noqa: F821
    samples = [row for path in snakemake.input.samples for row in read_rows(path, schemas.GENERAL_SAMPLES)]  # noqa: F821
    labels = {name: (entry.label, entry.paper) for name, entry in catalog().items()}
    rows = summarize_general(scores, samples, snakemake.params.base_of, labels, settings.n_bootstrap, run.seed,  # noqa: F821
                             settings.confidence)
    run.write(rows, schemas.GENERAL_SUMMARY)
