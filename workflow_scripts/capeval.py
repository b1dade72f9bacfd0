"""Stage 10: CapEval-QA. A judge answers every question from the caption alone; Acc+/Acc- per count.

Rule capeval judges one (condition, policy) caption table; sharded, a job judges its shard's samples
and writes answers only (rule summarize_capeval pools them). Rule capeval_one_pass judges every
caption table of the run in one job (param `tables`), so the judge is loaded once and sees every
request at once; each table's answers and summary are the ones its own capeval job would write."""
import logging

from covip.core import schemas
from covip.core.metrics import policy_identities_from
from covip.stages.capeval import CapEvalSettings, judge_caption_tables, judge_failures, summarize_capeval
from covip.workflow.run import StageRun

# The judge reads captions and questions only: leave the split's images on disk.
SPLIT_COLUMNS = [c for c in schemas.SPLIT.columns if "image" not in c]

with StageRun(snakemake) as run:  # noqa: F821
    judge_name = snakemake.wildcards.judge  # noqa: F821
    settings = run.settings(CapEvalSettings, "capeval")
    judge = run.models.chat(judge_name)
    # (captions input, test input, answers output, summary output) per table: one table for rule capeval.
    names = [tuple(t) for t in getattr(run.smk.params, "tables", None) or [("captions", "test", "answers", "summary")]]
    splits, tables = {}, []
    for captions_name, test_name, _, _ in names:
        if test_name not in splits:  # one read per condition's split, however many policies use it
            splits[test_name] = run.in_shard(run.read(test_name, schemas.SPLIT, columns=SPLIT_COLUMNS), "test split")
        captions = run.in_shard(run.read(captions_name, schemas.CAPTIONS), "captions")
        tables.append((captions, splits[test_name], str(run.smk.input[captions_name])))
    answers = judge_caption_tables(tables, judge, run.prompts, settings, run.seed, judge_name,
                                   progress_file=run.log_file)
    # Each table is held to the limit its own job would be, before anything is written.
    for (_, _, what), rows in zip(tables, answers):
        logging.getLogger("covip").info("judge answers of %s:", what)
        run.check_failures(judge_failures(rows), settings.max_failure_rate)
    for (_, _, answers_name, summary_name), (captions, _, _), rows in zip(names, tables, answers):
        run.write(rows, schemas.CAPEVAL_ANSWERS, answers_name)
        if summary_name in run.smk.output.keys():
            summary = summarize_capeval(rows, settings.n_bootstrap, run.seed, confidence=settings.confidence,
                                        policy_identities=policy_identities_from(captions),
                                        failed_calls=settings.failed_calls)
            run.write(summary, schemas.CAPEVAL_SUMMARY, summary_name)
