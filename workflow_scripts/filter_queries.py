"""Stage 3: keep or drop each synthesized query, with reasons."""
from covip import schemas
from covip.stages.filtering import FilterSettings, filter_queries
from covip.workflow import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(FilterSettings, "filtering")
    verifier = run.models.chat("verifier")
    queries = run.read("queries", schemas.QUERIES)
    concepts = run.read("concepts", schemas.CONCEPTS)
    rows = filter_queries(queries, concepts, verifier, run.prompts, settings, progress_file=run.log_file)
    run.write(rows, schemas.FILTER_DECISIONS)
