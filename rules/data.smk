# Stages 1-7: concept pool -> query synthesis -> filtering -> hard negatives -> dialogues -> MCQAs
# -> splits. Each rule wires files to one workflow script; the logic lives in covip.stages.*.


rule build_concept_pool:
    input:
        PREP.concept_source(),
    output:
        out("concepts/concepts.parquet"),
    log:
        log_of("build_concept_pool"),
    benchmark:
        benchmark_of("build_concept_pool")
    params:
        settings=config["concept_pool"],
        seed=config["seed"],
        code=code_of("build_concept_pool.py", "build_concept_pool"),
    threads: threads_of("build_concept_pool")
    resources:
        **resources_of("build_concept_pool"),
    conda:
        conda_of("build_concept_pool")
    script:
        "../workflow_scripts/build_concept_pool.py"


rule synthesize_queries:
    input:
        unpack(inputs_of("synthesize_queries", concepts=rules.build_concept_pool.output[0])),
    output:
        stage_output("synthesize_queries", "queries/queries.parquet"),
    log:
        shard_log("synthesize_queries"),
    benchmark:
        shard_benchmark("synthesize_queries")
    params:
        shard_size=shard_size("synthesize_queries"),
        settings=config["synthesis"],
        seed=config["seed"],
        models=models_of("synthesize_queries"),
        prompts=prompts_of("query_synthesis"),
        code=code_of("synthesize_queries.py", "synthesize_queries"),
    threads: threads_of("synthesize_queries")
    resources:
        **resources_of("synthesize_queries"),
    conda:
        conda_of("synthesize_queries")
    script:
        "../workflow_scripts/synthesize_queries.py"


rule filter_queries:
    input:
        unpack(inputs_of("filter_queries", queries=out("queries/queries.parquet"),
                         concepts=rules.build_concept_pool.output[0])),
    output:
        out("filtering/decisions.parquet"),
    log:
        log_of("filter_queries"),
    benchmark:
        benchmark_of("filter_queries")
    params:
        settings=config["filtering"],
        seed=config["seed"],
        models=models_of("filter_queries"),
        prompts=prompts_of("visual_fidelity"),
        code=code_of("filter_queries.py", "filter_queries"),
    threads: threads_of("filter_queries")
    resources:
        **resources_of("filter_queries"),
    conda:
        conda_of("filter_queries")
    script:
        "../workflow_scripts/filter_queries.py"


rule embed_concepts:
    input:
        unpack(inputs_of("embed_concepts", concepts=rules.build_concept_pool.output[0])),
    output:
        out("negatives/concept_embeddings.parquet"),
    log:
        log_of("embed_concepts"),
    benchmark:
        benchmark_of("embed_concepts")
    params:
        models=models_of("embed_concepts"),
        code=code_of("embed_concepts.py", "embed_concepts"),
    threads: threads_of("embed_concepts")
    resources:
        **resources_of("embed_concepts"),
    conda:
        conda_of("embed_concepts")
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
        log_of("build_contexts"),
    benchmark:
        benchmark_of("build_contexts")
    params:
        settings=config["negatives"],
        seed=config["seed"],
        code=code_of("build_contexts.py", "build_contexts"),
    threads: threads_of("build_contexts")
    resources:
        **resources_of("build_contexts"),
    conda:
        conda_of("build_contexts")
    script:
        "../workflow_scripts/build_contexts.py"


rule write_dialogues:
    input:
        unpack(inputs_of("write_dialogues", contexts=rules.build_contexts.output[0],
                         concepts=rules.build_concept_pool.output[0])),
    output:
        stage_output("write_dialogues", "dialogues/dialogues.parquet"),
    log:
        shard_log("write_dialogues"),
    benchmark:
        shard_benchmark("write_dialogues")
    params:
        shard_size=shard_size("write_dialogues"),
        settings=config["dialogues"],
        seed=config["seed"],
        models=models_of("write_dialogues"),
        prompts=prompts_of("dialogue_writer", "dialogue_repair"),
        content=content_of("facts"),
        code=code_of("write_dialogues.py", "write_dialogues"),
    threads: threads_of("write_dialogues")
    resources:
        **resources_of("write_dialogues"),
    conda:
        conda_of("write_dialogues")
    script:
        "../workflow_scripts/write_dialogues.py"


rule write_mcqas:
    input:
        unpack(inputs_of("write_mcqas", dialogues=out("dialogues/dialogues.parquet"))),
    output:
        stage_output("write_mcqas", "mcqa/mcqas.parquet"),
    log:
        shard_log("write_mcqas"),
    benchmark:
        shard_benchmark("write_mcqas")
    params:
        shard_size=shard_size("write_mcqas"),
        settings=config["mcqa"],
        seed=config["seed"],
        models=models_of("write_mcqas"),
        prompts=prompts_of("mcqa_writer", "mcqa_repair"),
        code=code_of("write_mcqas.py", "write_mcqas"),
    threads: threads_of("write_mcqas")
    resources:
        **resources_of("write_mcqas"),
    conda:
        conda_of("write_mcqas")
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
        log_of("make_splits"),
    benchmark:
        benchmark_of("make_splits")
    params:
        settings=config["splits"],
        seed=config["seed"],
        code=code_of("make_splits.py", "make_splits"),
    threads: threads_of("make_splits")
    resources:
        **resources_of("make_splits"),
    conda:
        conda_of("make_splits")
    script:
        "../workflow_scripts/make_splits.py"
