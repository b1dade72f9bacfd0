"""Stage 9: caption every test sample (of this job's shard) with one policy."""
import logging
from itertools import chain

from covip.core import schemas
from covip.stages.captioning import CaptioningSettings, caption_failures, caption_samples
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    policy = snakemake.wildcards.policy  # noqa: F821
    settings = run.settings(CaptioningSettings, "captioning")
    model = run.models.chat(policy)
    # Streamed: only one chunk of the split's images is in memory at a time.
    test = chain.from_iterable(run.iter("test", schemas.SPLIT))
    rows = caption_samples(test, policy, model, run.prompts, settings, run.seed, progress_file=run.log_file,
                           where=run.smk.input["test"], shard=run.shard)
    run.check_failures(caption_failures(rows), settings.max_failure_rate)
    cut = sum(row["status"] == "truncated" for row in rows)
    if cut:  # answered, so not a failure; CapEval leaves them out and counts them (n_caption_failed)
        logging.getLogger("covip").warning("captions: %d of %d cut off at the token cap (status 'truncated')", cut, len(rows))
    run.write(rows, schemas.CAPTIONS)
