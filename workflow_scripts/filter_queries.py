"""Stage 3: keep or drop each synthesized query, with reasons."""
from covip.core import schemas
from covip.stages.filtering import FilterSettings, filter_queries
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(FilterSettings, "filtering")
    verifier = run.models.chat("verifier")
    concepts = run.read("concepts", schemas.CONCEPTS)
    # Queries (with their images) stream through in batches; each decision depends on its row only.
    rows = []
    for batch in run.iter("queries", schemas.QUERIES):
        rows += filter_queries(batch, concepts, verifier, run.prompts, settings, progress_file=run.log_file, first_row=len(rows))
    run.write(rows, schemas.FILTER_DECISIONS)
