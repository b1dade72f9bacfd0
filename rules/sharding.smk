# Gather rules of the sharded stages (covip.config.layout.SHARDABLE): one job per artifact (per
# wildcard combination) concatenates its shards, in order, into the artifact the DAG reads.
from covip.config.layout import SHARDABLE


for _stage, (_artifact, _schema) in SHARDABLE.items():
    if PREP.sharded(_stage):

        rule:
            name:
                f"gather_{_stage}"
            input:
                expand(PREP.shard_pattern(_artifact), shard=range(PREP.shard_count(_stage)), allow_missing=True),
            output:
                out(_artifact),
            log:
                log_of("gather_shards", PREP.gather_log_path(_stage, _artifact)),
            params:
                schema=_schema,
                code=code_of("gather_shards.py", "gather_shards"),
            threads: threads_of("gather_shards")
            resources:
                **resources_of("gather_shards"),
            conda:
                conda_of("gather_shards")
            script:
                "../workflow_scripts/gather_shards.py"
