"""Stage 11b: one policy answers every diagnostic set of one condition, directly and with its own caption
first (CAG); each (task, mode) is scored and written to its own table."""
from covip.core import schemas
from covip.stages.diagnostics.answering import diagnose_policy
from covip.stages.diagnostics.settings import DiagnosticSettings
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    smk = snakemake  # noqa: F821
    settings = run.settings(DiagnosticSettings, "diagnostics")
    policy = smk.wildcards.policy
    sets = {task: run.read(f"set_{task}", schemas.DIAGNOSTIC_SET) for task in smk.params.tasks}
    judge = run.models.chat(run.config["evaluation"]["diagnostic_judge"]) if "lar" in sets else None
    results = diagnose_policy(sets, smk.params.modes, policy, run.models.chat(policy), judge, run.prompts, settings,
                              run.seed, progress_file=run.log_file)
    for (task, mode), report in results.failures.items():
        run.check_failures(report, settings.max_failure_rate)
    for (task, mode), rows in results.rows.items():
        run.write(rows, schemas.DIAGNOSTIC_RESPONSES, f"{task}_{mode}")
