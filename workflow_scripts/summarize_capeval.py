"""Stage 10, sharded runs: Acc+/Acc- with bootstrap intervals from the gathered judge answers."""
from covip.core import schemas
from covip.core.metrics import policy_identities_from
from covip.stages.capeval import CapEvalSettings, summarize_capeval
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(CapEvalSettings, "capeval")
    answers = run.read("answers", schemas.CAPEVAL_ANSWERS)
    captions = run.read("captions", schemas.CAPTIONS)
    summary = summarize_capeval(answers, settings.n_bootstrap, run.seed, confidence=settings.confidence,
                                policy_identities=policy_identities_from(captions), failed_calls=settings.failed_calls)
    run.write(summary, schemas.CAPEVAL_SUMMARY)
