"""Gather every policy's CapEval-QA summary and diagnostic scores into two tables for the report."""
from covip.core import schemas
from covip.core.io import read_rows
from covip.stages.diagnostics.settings import DiagnosticSettings
from covip.stages.diagnostics.summary import summarize_diagnostics
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    capeval = [row for path in snakemake.input.capeval for row in read_rows(path, schemas.CAPEVAL_SUMMARY)]  # noqa: F821
    responses = [row for path in snakemake.input.diagnostics for row in read_rows(path, schemas.DIAGNOSTIC_RESPONSES)]  # noqa: F821
    run.write(capeval, schemas.CAPEVAL_SUMMARY, "capeval")
    settings = run.settings(DiagnosticSettings, "diagnostics")
    summary = summarize_diagnostics(responses, settings.n_bootstrap, run.seed, settings.confidence)
    run.write(summary, schemas.DIAGNOSTIC_SUMMARY, "diagnostics")
