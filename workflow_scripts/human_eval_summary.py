"""The human study's votes summarized: wins per pair, a Bradley-Terry ranking, agreement between raters
and with CapEval-QA (covip.stages.human_eval)."""
from covip.core import schemas
from covip.human_eval.settings import HumanEvalSettings
from covip.human_eval.store import read_votes
from covip.core.io import read_rows
from covip.stages.human_eval import summarize_human_eval
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    smk = snakemake  # noqa: F821
    settings = run.settings(HumanEvalSettings, "human_eval")
    votes = read_votes(smk.input.votes)
    run.write(votes, schemas.HUMAN_VOTES, "votes")
    answers = [row for path in smk.input.answers for row in read_rows(path, schemas.CAPEVAL_ANSWERS)]
    pairs, ranking, agreement = summarize_human_eval(
        votes, answers, confidence=settings.confidence, agreement_level=settings.agreement_level,
        bt_regularization=settings.bt_regularization, plan_version=settings.plan_version,
    )
    run.write(pairs, schemas.HUMAN_EVAL_PAIRS, "pairs")
    run.write(ranking, schemas.HUMAN_EVAL_RANKING, "ranking")
    run.write(agreement, schemas.HUMAN_EVAL_AGREEMENT, "agreement")
