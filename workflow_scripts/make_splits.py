"""Stage 7: publish the train and test splits (Hugging Face-loadable Parquet)."""
import logging

from covip.core import schemas
from covip.stages.splits import SplitSettings, iter_splits
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(SplitSettings, "splits")
    # The images stay on disk until their row is written: query images are looked up a row group at
    # a time and the published rows are written as they are assembled, so memory stays flat.
    report, rows = iter_splits(
        run.read("queries", schemas.QUERIES, columns=[c for c in schemas.QUERIES.columns if c != "image"]),
        run.read("contexts", schemas.CONTEXTS),
        run.read("concepts", schemas.CONCEPTS),
        run.read("dialogues", schemas.DIALOGUES),
        run.read("mcqas", schemas.MCQAS),
        settings,
        run.seed,
        decisions_rows=run.read("decisions", schemas.FILTER_DECISIONS),
        progress_file=run.log_file,
        query_image=run.lookup("queries", schemas.QUERIES, "sample_id", "image").get,
    )
    with run.writer(schemas.SPLIT, "train") as train, run.writer(schemas.SPLIT, "test") as test:
        for row in rows:
            (train if row["split"] == "train" else test).write([row])
    logging.getLogger("covip").info("wrote %d train and %d test rows", train.num_rows, test.num_rows)
    run.write(report, schemas.SPLIT_REPORT, "report")
