"""Stage 11b: one policy answers one diagnostic set, directly or with its own caption first (CAG)."""
from covip.core import schemas
from covip.stages.diagnostics.answering import answer_diagnostics, response_failures
from covip.stages.diagnostics.scoring import score_diagnostics
from covip.stages.diagnostics.settings import DiagnosticSettings
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    wildcards = snakemake.wildcards  # noqa: F821
    settings = run.settings(DiagnosticSettings, "diagnostics")
    model = run.models.chat(wildcards.policy)
    items = run.read("diagnostic_set", schemas.DIAGNOSTIC_SET)
    rows = answer_diagnostics(items, wildcards.policy, model, run.prompts, settings, run.seed, wildcards.mode,
                              progress_file=run.log_file)
    judge = run.models.chat(run.config["evaluation"]["diagnostic_judge"]) if wildcards.task == "lar" else None
    rows = score_diagnostics(rows, items, judge=judge, prompts=run.prompts, progress_file=run.log_file, settings=settings)
    run.check_failures(response_failures(rows), settings.max_failure_rate)
    run.write(rows, schemas.DIAGNOSTIC_RESPONSES)
