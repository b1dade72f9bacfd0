"""Stage 11a: the LSD / LAR / ITR set: generated from the concept pool, or a user's hub-format file."""
from covip import schemas
from covip.stages.diagnostics import DiagnosticSettings, build_diagnostic_set, load_diagnostic_set
from covip.workflow import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    task = snakemake.wildcards.task  # noqa: F821
    if "source" in snakemake.input.keys():  # noqa: F821
        items = load_diagnostic_set(snakemake.input.source, task, prompts=run.prompts)  # noqa: F821
    else:
        settings = run.settings(DiagnosticSettings, "diagnostics")
        concepts = run.read("concepts", schemas.CONCEPTS)
        items = build_diagnostic_set(task, concepts, settings, run.seed, progress_file=run.log_file, prompts=run.prompts)
    run.write(items, schemas.DIAGNOSTIC_SET)
