"""Concatenate the shards of a sharded stage, in order, into the artifact the rest of the DAG reads."""
import logging

from covip.core import schemas
from covip.core.sharding import gather
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    schema = schemas.ALL[run.smk.params.schema]
    shards = list(run.smk.input)
    rows = gather(shards, schema, run.smk.output[0])
    logging.getLogger("covip").info("gathered %d shards into %d rows of %s", len(shards), rows, schema.name)
