"""Score a captions file made elsewhere against the authors' released CapEval ground truth."""
from covip.core import schemas
from covip.core.formats import load_captions_file
from covip.stages.capeval import CapEvalSettings, score_released_captions
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    wildcards = snakemake.wildcards  # noqa: F821
    settings = run.settings(CapEvalSettings, "capeval")
    judge = run.models.chat(wildcards.judge)
    captions = load_captions_file(snakemake.input.captions)  # noqa: F821
    answers, summary = score_released_captions(
        captions, snakemake.input.qas_gt, judge, run.prompts, settings, run.seed, wildcards.name,  # noqa: F821
        judge_name=wildcards.judge, progress_file=run.log_file,
    )
    run.write(answers, schemas.CAPEVAL_ANSWERS, "answers")
    run.write(summary, schemas.CAPEVAL_SUMMARY, "summary")
