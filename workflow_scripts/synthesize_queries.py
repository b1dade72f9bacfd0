"""Stage 2: synthesize one query image per sample from its positive concepts."""
from covip.core import schemas
from covip.stages.synthesis import SynthesisSettings, iter_queries
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(SynthesisSettings, "synthesis")
    generator = run.models.image_generator("image_generator")
    concepts = run.read("concepts", schemas.CONCEPTS)
    # Streamed: each image is written as it is generated, so memory stays flat as samples grow.
    only = run.shard.holds if run.shard else None  # a sharded run generates its samples only
    rows = iter_queries(concepts, generator, run.prompts, settings, run.seed, progress_file=run.log_file, only=only)
    run.write_stream(rows, schemas.QUERIES)
