"""Concatenate the shards of a sharded stage, in order, into the artifact the rest of the DAG reads."""
import logging

from covip import schemas
from covip.sharding import gather
from covip.workflow import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    schema = schemas.ALL[run.smk.params.schema]
    shards = list(run.smk.input)
    rows = gather(shards, schema, run.smk.output[0])
    logging.getLogger("covip").info("gathered %d shards into %d rows of %s", len(shards), rows, schema.name)
