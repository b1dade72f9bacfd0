"""Stage 4b: add retrieved hard negatives to each kept sample and shuffle its context."""
from covip.core import schemas
from covip.stages.negatives import NegativeSettings, build_contexts
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(NegativeSettings, "negatives")
    # Everything but the images: this stage never looks at them, and they grow with the samples.
    queries = run.read("queries", schemas.QUERIES, columns=[c for c in schemas.QUERIES.columns if c != "image"])
    decisions = run.read("decisions", schemas.FILTER_DECISIONS)
    embeddings = run.read("embeddings", schemas.CONCEPT_EMBEDDINGS)
    concepts = run.read("concepts", schemas.CONCEPTS)
    rows = build_contexts(queries, decisions, embeddings, settings, run.seed, concepts_rows=concepts)
    run.write(rows, schemas.CONTEXTS)
