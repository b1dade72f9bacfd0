# Stage 11: the LSD / LAR / ITR sets (generated from the concept pool, or a user's hub-format file),
# answered by every policy directly and with caption-augmented generation, and scored.


rule build_diagnostic_set:
    input:
        unpack(lambda wc: with_ancient_weights(PREP.diagnostic_source(wc.task))),
    output:
        out("diagnostics/sets/{task}.parquet"),
    log:
        log_of("build_diagnostic_set", "diagnostics/build_{task}"),
    benchmark:
        benchmark_of("build_diagnostic_set", "diagnostics/build_{task}")
    params:
        settings=config["diagnostics"],
        source=lambda wc: config["diagnostic_sources"].get(wc.task),
        seed=config["seed"],
        prompts=prompts_of("diagnostic_questions"),
        content=content_of("diagnostic_lines"),
        code=code_of("build_diagnostic_set.py", "build_diagnostic_set"),
    threads: threads_of("build_diagnostic_set")
    resources:
        **resources_of("build_diagnostic_set"),
    conda:
        conda_of("build_diagnostic_set")
    script:
        "../workflow_scripts/build_diagnostic_set.py"


rule diagnose:
    # One job per (condition, policy) answers every task in every mode, so an in-process model is
    # loaded once for all of them; each (task, mode) keeps its own table.
    input:
        unpack(inputs_of("diagnose", **PREP.diagnose_inputs())),
    output:
        **PREP.diagnose_outputs(),
    log:
        log_of("diagnose", "diagnostics/{condition}/{policy}"),
    benchmark:
        benchmark_of("diagnose", "diagnostics/{condition}/{policy}")
    params:
        tasks=config["evaluation"]["diagnostic_tasks"],
        modes=config["evaluation"]["diagnostic_modes"],
        settings=config["diagnostics"],
        seed=config["seed"],
        models=models_of("diagnose"),
        prompts=prompts_of("caption", "diagnostic_questions", "lar_judge"),
        code=code_of("diagnose.py", "diagnose"),
    threads: threads_of("diagnose")
    resources:
        **resources_of("diagnose"),
    conda:
        conda_of("diagnose")
    script:
        "../workflow_scripts/diagnose.py"
