# Models the workflow builds itself: the tiny random-weight VLM of the offline default, and stage 8,
# GSPO post-training (SPEC section 4). A run's merged policy (<outdir>/training/<run>/model) is an
# ordinary model folder that a registry entry can name, so the DAG runs train_gspo -> caption ->
# capeval -> report for that policy.


rule build_tiny_vlm:
    output:
        directory(config["tiny_vlm"]["path"]),
    log:
        log_of("build_tiny_vlm"),
    benchmark:
        benchmark_of("build_tiny_vlm")
    params:
        architecture=config["tiny_vlm"]["architecture"],
        seed=config["seed"],
        code=code_of("build_tiny_vlm.py", "build_tiny_vlm"),
    threads: threads_of("build_tiny_vlm")
    resources:
        **resources_of("build_tiny_vlm"),
    conda:
        conda_of("build_tiny_vlm")
    script:
        "../workflow_scripts/build_tiny_vlm.py"


rule train_gspo:
    input:
        unpack(lambda wc: training_inputs(wc.run)),
    output:
        model=directory(out("training/{run}/model")),
        log=out("training/{run}/log.parquet"),
    log:
        log_of("train_gspo", "training/{run}"),
    benchmark:
        benchmark_of("train_gspo", "training/{run}")
    params:
        settings=lambda wc: PREP.training_params(wc.run),
        seed=config["seed"],
        models=models_of("train_gspo"),
        prompts=prompts_of("caption", "train_tasks", "capeval_judge"),
        code=code_of("covip.training.job", "train_gspo"),
        # Checkpoints live outside the outputs: Snakemake deletes the outputs of a killed job, and
        # the rerun resumes from the last checkpoint left here.
        checkpoints=lambda wc: out(f"training/{wc.run}/checkpoints"),
        job_config=lambda wc: PREP.training_job_config(wc.run),
        launcher=lambda wc: PREP.training_launcher(wc.run),
        # The served entries it calls (the reward's judge): gpu-run starts them on GPUs of the job.
        serve=lambda wc: PREP.served_role_list("train_gspo", wc),
        logs=LOGS,
    threads: threads_of("train_gspo")
    resources:
        **resources_of("train_gspo"),
    conda:
        conda_of("train_gspo")
    # The job takes its devices through `covip gpu-run`, which starts the served judge on its share of
    # them, runs ONE launch over the rest and holds the locks until the launch and its workers exit.
    shell:
        "python -m covip gpu-run --gpus {resources.gpu} --rule train_gspo --serve '{params.serve}'"
        " --log-dir {params.logs:q} --job train_gspo.{wildcards.run} -- "
        "{params.launcher} -m covip train --config-json {params.job_config:q} --run {wildcards.run}"
        " --train {input.train} --model-dir {output.model} --log {output.log}"
        " --checkpoints {params.checkpoints} > {log} 2>&1"
