"""Stage 7: publish the train and test splits (Hugging Face-loadable Parquet)."""
from covip import schemas
from covip.stages.splits import SplitSettings, make_splits
from covip.workflow import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(SplitSettings, "splits")
    train, test, report = make_splits(
        run.read("queries", schemas.QUERIES),
        run.read("contexts", schemas.CONTEXTS),
        run.read("concepts", schemas.CONCEPTS),
        run.read("dialogues", schemas.DIALOGUES),
        run.read("mcqas", schemas.MCQAS),
        settings,
        run.seed,
        decisions_rows=run.read("decisions", schemas.FILTER_DECISIONS),
        progress_file=run.log_file,
    )
    run.write(train, schemas.SPLIT, "train")
    run.write(test, schemas.SPLIT, "test")
    run.write(report, schemas.SPLIT_REPORT, "report")
