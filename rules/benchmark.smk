# Stages 1-7: concept pool -> query synthesis -> filtering -> hard negatives -> dialogues -> MCQAs
# -> splits. Each rule wires files to one workflow script; the logic lives in covip.stages.*.


rule build_concept_pool:
    input:
        get_concept_source(),
    output:
        out("concepts/concepts.parquet"),
    log:
        f"{LOGS}/build_concept_pool.log",
    benchmark:
        f"{OUT}/benchmarks/build_concept_pool.tsv",
    params:
        settings=config["concept_pool"],
        seed=config["seed"],
        code=stage_code("covip.stages.concepts"),
    threads: rule_resources("build_concept_pool", "threads")
    resources:
        mem_mb=rule_resources("build_concept_pool", "mem_mb"),
        gpu=rule_resources("build_concept_pool", "gpu"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/build_concept_pool.py"


rule synthesize_queries:
    input:
        concepts=rules.build_concept_pool.output[0],
    output:
        shard_output("synthesize_queries", "queries/queries.parquet"),
    log:
        shard_log("synthesize_queries"),
    benchmark:
        shard_benchmark("synthesize_queries"),
    params:
        shard_size=shard_size("synthesize_queries"),
        settings=config["synthesis"],
        seed=config["seed"],
        models=model_params("image_generator"),
        prompts=prompt_params("query_synthesis"),
        code=stage_code("covip.stages.synthesis", [("image", "image_generator")]),
    threads: rule_resources("synthesize_queries", "threads")
    resources:
        mem_mb=rule_resources("synthesize_queries", "mem_mb"),
        gpu=rule_resources("synthesize_queries", "gpu"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/synthesize_queries.py"


rule filter_queries:
    input:
        queries=out("queries/queries.parquet"),
        concepts=rules.build_concept_pool.output[0],
    output:
        out("filtering/decisions.parquet"),
    log:
        f"{LOGS}/filter_queries.log",
    benchmark:
        f"{OUT}/benchmarks/filter_queries.tsv",
    params:
        settings=config["filtering"],
        seed=config["seed"],
        models=model_params("verifier"),
        prompts=prompt_params("visual_fidelity"),
        code=stage_code("covip.stages.filtering", [("chat", "verifier")]),
    threads: rule_resources("filter_queries", "threads")
    resources:
        mem_mb=rule_resources("filter_queries", "mem_mb"),
        gpu=rule_resources("filter_queries", "gpu"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/filter_queries.py"


rule embed_concepts:
    input:
        concepts=rules.build_concept_pool.output[0],
    output:
        out("negatives/concept_embeddings.parquet"),
    log:
        f"{LOGS}/embed_concepts.log",
    benchmark:
        f"{OUT}/benchmarks/embed_concepts.tsv",
    params:
        models=model_params("embedder"),
        code=stage_code("covip.stages.negatives", [("embed", "embedder")]),
    threads: rule_resources("embed_concepts", "threads")
    resources:
        mem_mb=rule_resources("embed_concepts", "mem_mb"),
        gpu=rule_resources("embed_concepts", "gpu"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/embed_concepts.py"


rule build_contexts:
    input:
        queries=out("queries/queries.parquet"),
        decisions=rules.filter_queries.output[0],
        embeddings=rules.embed_concepts.output[0],
        concepts=rules.build_concept_pool.output[0],
    output:
        out("negatives/contexts.parquet"),
    log:
        f"{LOGS}/build_contexts.log",
    benchmark:
        f"{OUT}/benchmarks/build_contexts.tsv",
    params:
        settings=config["negatives"],
        seed=config["seed"],
        code=stage_code("covip.stages.negatives"),
    threads: rule_resources("build_contexts", "threads")
    resources:
        mem_mb=rule_resources("build_contexts", "mem_mb"),
        gpu=rule_resources("build_contexts", "gpu"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/build_contexts.py"


rule write_dialogues:
    input:
        contexts=rules.build_contexts.output[0],
        concepts=rules.build_concept_pool.output[0],
    output:
        shard_output("write_dialogues", "dialogues/dialogues.parquet"),
    log:
        shard_log("write_dialogues"),
    benchmark:
        shard_benchmark("write_dialogues"),
    params:
        shard_size=shard_size("write_dialogues"),
        settings=config["dialogues"],
        seed=config["seed"],
        models=model_params("dialogue_writer"),
        prompts=prompt_params("dialogue_writer", "dialogue_repair"),
        code=stage_code("covip.stages.dialogues", [("chat", "dialogue_writer")]),
    threads: rule_resources("write_dialogues", "threads")
    resources:
        mem_mb=rule_resources("write_dialogues", "mem_mb"),
        gpu=rule_resources("write_dialogues", "gpu"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/write_dialogues.py"


rule write_mcqas:
    input:
        dialogues=out("dialogues/dialogues.parquet"),
    output:
        shard_output("write_mcqas", "mcqa/mcqas.parquet"),
    log:
        shard_log("write_mcqas"),
    benchmark:
        shard_benchmark("write_mcqas"),
    params:
        shard_size=shard_size("write_mcqas"),
        settings=config["mcqa"],
        seed=config["seed"],
        models=model_params("mcqa_writer"),
        prompts=prompt_params("mcqa_writer", "mcqa_repair"),
        code=stage_code("covip.stages.mcqa", [("chat", "mcqa_writer")]),
    threads: rule_resources("write_mcqas", "threads")
    resources:
        mem_mb=rule_resources("write_mcqas", "mem_mb"),
        gpu=rule_resources("write_mcqas", "gpu"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/write_mcqas.py"


rule make_splits:
    input:
        queries=out("queries/queries.parquet"),
        decisions=rules.filter_queries.output[0],
        contexts=rules.build_contexts.output[0],
        concepts=rules.build_concept_pool.output[0],
        dialogues=out("dialogues/dialogues.parquet"),
        mcqas=out("mcqa/mcqas.parquet"),
    output:
        train=out("splits/train.parquet"),
        test=out("splits/test.parquet"),
        report=out("splits/split_report.parquet"),
    log:
        f"{LOGS}/make_splits.log",
    benchmark:
        f"{OUT}/benchmarks/make_splits.tsv",
    params:
        settings=config["splits"],
        seed=config["seed"],
        code=stage_code("covip.stages.splits"),
    threads: rule_resources("make_splits", "threads")
    resources:
        mem_mb=rule_resources("make_splits", "mem_mb"),
        gpu=rule_resources("make_splits", "gpu"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/make_splits.py"
