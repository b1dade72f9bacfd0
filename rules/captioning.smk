# Stage 9: every policy captions the test split, under every control condition (`intact` reads the
# split itself; the others read the control's copy, rules/controls.smk).


rule caption:
    input:
        unpack(inputs_of("caption", test=lambda wc: PREP.condition_input(wc.condition, "test"))),
    output:
        stage_output("caption", "captions/{condition}/{policy}.parquet"),
    log:
        shard_log("caption", "caption/{condition}/{policy}"),
    benchmark:
        shard_benchmark("caption", "caption/{condition}/{policy}")
    params:
        shard_size=shard_size("caption"),
        settings=config["captioning"],
        seed=config["seed"],
        models=models_of("caption"),
        prompts=prompts_of("caption"),
        code=code_of("caption.py", "caption"),
    threads: threads_of("caption")
    resources:
        **resources_of("caption"),
    conda:
        conda_of("caption")
    script:
        "../workflow_scripts/caption.py"
