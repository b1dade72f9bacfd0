"""Stage 10: CapEval-QA. A judge answers every question from the caption alone; Acc+/Acc- per count.
Sharded, a job judges its shard's samples and writes answers only (rule summarize_capeval pools them)."""
from covip.core import schemas
from covip.core.metrics import policy_identities_from
from covip.stages.capeval import CapEvalSettings, judge_captions, judge_failures, summarize_capeval
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    judge_name = snakemake.wildcards.judge  # noqa: F821
    settings = run.settings(CapEvalSettings, "capeval")
    judge = run.models.chat(judge_name)
    captions = run.in_shard(run.read("captions", schemas.CAPTIONS), "captions")
    # The judge reads captions and questions only: leave the split's images on disk.
    test = run.read("test", schemas.SPLIT, columns=[c for c in schemas.SPLIT.columns if "image" not in c])
    test = run.in_shard(test, "test split")
    answers = judge_captions(captions, test, judge, run.prompts, settings, run.seed, judge_name, progress_file=run.log_file)
    run.check_failures(judge_failures(answers), settings.max_failure_rate)
    run.write(answers, schemas.CAPEVAL_ANSWERS, "answers")
    if "summary" in run.smk.output.keys():
        summary = summarize_capeval(answers, settings.n_bootstrap, run.seed, confidence=settings.confidence,
                                    policy_identities=policy_identities_from(captions),
                                    failed_calls=settings.failed_calls)
        run.write(summary, schemas.CAPEVAL_SUMMARY, "summary")
