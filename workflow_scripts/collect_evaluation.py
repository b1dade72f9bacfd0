"""Gather every policy's CapEval-QA summary and diagnostic scores into two tables for the report."""
from covip import schemas
from covip.io import read_rows
from covip.stages.diagnostics import summarize_diagnostics
from covip.workflow import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    capeval = [row for path in snakemake.input.capeval for row in read_rows(path, schemas.CAPEVAL_SUMMARY)]  # noqa: F821
    responses = [row for path in snakemake.input.diagnostics for row in read_rows(path, schemas.DIAGNOSTIC_RESPONSES)]  # noqa: F821
    run.write(capeval, schemas.CAPEVAL_SUMMARY, "capeval")
    summary = summarize_diagnostics(responses, snakemake.params.n_bootstrap, run.seed)  # noqa: F821
    run.write(summary, schemas.DIAGNOSTIC_SUMMARY, "diagnostics")
