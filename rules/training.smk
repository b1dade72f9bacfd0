# Stage 8: GSPO post-training (SPEC section 4). One job per run of config training.runs; its merged
# policy (<outdir>/training/<run>/model) is an ordinary model folder that a registry entry can name,
# so the DAG runs train_gspo -> caption -> capeval -> report for that policy.


wildcard_constraints:
    run="[A-Za-z0-9_.-]+",


rule train_gspo:
    input:
        unpack(lambda wc: training_inputs(wc.run)),
    output:
        model=directory(out("training/{run}/model")),
        log=out("training/{run}/log.parquet"),
    log:
        f"{LOGS}/training/{{run}}.log",
    benchmark:
        f"{OUT}/benchmarks/training/{{run}}.tsv"
    params:
        settings=lambda wc: dataclasses.asdict(training_settings(wc.run)),
        seed=config["seed"],
        models=lambda wc: model_params(*training_roles(wc.run)),
        prompts=prompt_params("caption", "train_tasks", "capeval_judge"),
        code=lambda wc: stage_code("covip.training.job", [("chat", role) for role in training_roles(wc.run)]),
        # Checkpoints live outside the outputs: Snakemake deletes the outputs of a killed job, and
        # the rerun resumes from the last checkpoint left here.
        checkpoints=lambda wc: out(f"training/{wc.run}/checkpoints"),
        job_config=lambda wc: training_job_config(wc.run),
        launcher=lambda wc: training_launcher(wc.run),
    threads: rule_resources("train_gspo", "threads")
    resources:
        mem_mb=rule_resources("train_gspo", "mem_mb"),
        gpu=lambda wc: training_settings(wc.run).gpus,
    conda:
        "../envs/train.yaml"
    # The job takes its devices (CUDA_VISIBLE_DEVICES) through covip.workflow.gpu_slots, which execs ONE
    # launch over all of them and holds the locks until it and its workers exit.
    shell:
        "python -m covip gpu-run --gpus {resources.gpu} --rule {rule} -- "
        "{params.launcher} -m covip train --config-json {params.job_config:q} --run {wildcards.run}"
        " --train {input.train} --model-dir {output.model} --log {output.log}"
        " --checkpoints {params.checkpoints} > {log} 2>&1"
