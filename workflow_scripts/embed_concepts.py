"""Stage 4a: embed every concept's reference image (CLIP in production)."""
from covip.core import schemas
from covip.stages.negatives import embed_concepts
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    embedder = run.models.embedder("embedder")
    concepts = run.read("concepts", schemas.CONCEPTS)
    run.write(embed_concepts(concepts, embedder, progress_file=run.log_file), schemas.CONCEPT_EMBEDDINGS)
