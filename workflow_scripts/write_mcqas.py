"""Stage 6: three validated multiple-choice questions per dialogue."""
from covip.core import schemas
from covip.stages.mcqa import MCQASettings, mcqa_failures, write_mcqas
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(MCQASettings, "mcqa")
    writer = run.models.chat("mcqa_writer")
    dialogues = run.in_shard(run.read("dialogues", schemas.DIALOGUES), "dialogues")
    rows = write_mcqas(dialogues, writer, run.prompts, settings, run.seed, progress_file=run.log_file)
    run.check_failures(mcqa_failures(rows), settings.max_failure_rate)
    run.write(rows, schemas.MCQAS)
