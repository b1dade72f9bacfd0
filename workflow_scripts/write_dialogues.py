"""Stage 5: one 6-turn dialogue per context concept, written from sampled facts."""
from covip.core import schemas
from covip.stages.dialogues import DialogueSettings, dialogue_failures, write_dialogues
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    settings = run.settings(DialogueSettings, "dialogues")
    writer = run.models.chat("dialogue_writer")
    contexts = run.in_shard(run.read("contexts", schemas.CONTEXTS), "contexts")
    concepts = run.read("concepts", schemas.CONCEPTS)
    rows = write_dialogues(contexts, concepts, writer, run.prompts, settings, run.seed, progress_file=run.log_file,
                           facts_path=run.content_path("facts"))
    run.check_failures(dialogue_failures(rows), settings.max_failure_rate)
    run.write(rows, schemas.DIALOGUES)
