"""How far the CapEval-QA judges agree on the same questions (Cohen's kappa), and where they differ."""
from collections import defaultdict

from covip.core import schemas
from covip.core.io import read_rows
from covip.stages.agreement import judge_agreement
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    smk = snakemake  # noqa: F821
    answers = defaultdict(list)
    for condition, path in zip(smk.params.conditions, smk.input.capeval):
        answers[condition] += read_rows(path, schemas.CAPEVAL_ANSWERS)
    agreement, disagreements = judge_agreement(answers)
    run.write(agreement, schemas.JUDGE_AGREEMENT, "agreement")
    run.write(disagreements, schemas.JUDGE_DISAGREEMENTS, "disagreements")
