"""Stage 11a: the LSD / LAR / ITR set: generated from the concept pool, or the hub's (or a user's) set."""
from covip.clients.weights import local_path, parse_source
from covip.core import schemas
from covip.stages.diagnostics.hub import load_diagnostic_set
from covip.stages.diagnostics.sets import build_diagnostic_set
from covip.stages.diagnostics.settings import DiagnosticSettings
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    task = snakemake.wildcards.task  # noqa: F821
    settings = run.settings(DiagnosticSettings, "diagnostics")
    if "weights_set" in snakemake.input.keys():  # noqa: F821 - a hub dataset rule download_models fetched
        folder = local_path(parse_source(snakemake.params.source))  # noqa: F821 - in the job's HF_HOME, offline
        items = load_diagnostic_set(folder, task, prompts=run.prompts, lsd_box=settings.lsd_box)
    elif "source" in snakemake.input.keys():  # noqa: F821
        items = load_diagnostic_set(snakemake.input.source, task, prompts=run.prompts, lsd_box=settings.lsd_box)  # noqa: F821
    else:
        concepts = run.read("concepts", schemas.CONCEPTS)
        items = build_diagnostic_set(task, concepts, settings, run.seed, progress_file=run.log_file, prompts=run.prompts,
                                     content_path=run.content_path("diagnostic_lines"))
    run.write(items, schemas.DIAGNOSTIC_SET)
