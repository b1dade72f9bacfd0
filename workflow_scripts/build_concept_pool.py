"""Stage 1: build the concept pool (photos + categories + fictional names)."""
from covip.core import schemas
from covip.stages.concepts import ConceptPoolSettings, build_concept_pool
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821 - injected by Snakemake
    settings = run.settings(ConceptPoolSettings, "concept_pool")
    run.write(build_concept_pool(settings, run.seed, progress_file=run.log_file), schemas.CONCEPTS)
