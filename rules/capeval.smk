# Stage 10: CapEval-QA. Every judge answers every test question from each policy's caption alone;
# Acc+/Acc- per concept count. Also: scoring captions made elsewhere against the authors' released
# ground truth, and how far the judges agree.


rule capeval:
    # One job per (condition, policy, judge) caption table (and shard); for a judge under one pass,
    # only the tables its pass does not cover (e.g. a human study's policy outside evaluation.policies).
    input:
        unpack(inputs_of("capeval", captions=out("captions/{condition}/{policy}.parquet"),
                         test=lambda wc: PREP.condition_input(wc.condition, "test"))),
    output:
        **capeval_outputs(),
    log:
        shard_log("capeval", "capeval/{condition}/{policy}.{judge}"),
    benchmark:
        shard_benchmark("capeval", "capeval/{condition}/{policy}.{judge}")
    params:
        shard_size=shard_size("capeval"),
        settings=config["capeval"],
        seed=config["seed"],
        models=models_of("capeval"),
        prompts=prompts_of("capeval_judge", "capeval_repair"),
        code=code_of("capeval.py", "capeval"),
    threads: threads_of("capeval")
    resources:
        **resources_of("capeval"),
    conda:
        conda_of("capeval")
    script:
        "../workflow_scripts/capeval.py"


# capeval.one_pass (default for a judge loaded in the job): one job per judge judges every caption
# table of the run, so the engine loads once and schedules every request; it writes the same files.
if PREP.one_pass_judges():

    rule capeval_one_pass:
        input:
            unpack(inputs_of("capeval_one_pass", **PREP.one_pass_inputs())),
        output:
            **PREP.one_pass_outputs(),
        log:
            log_of("capeval_one_pass", "capeval/{judge}.one_pass"),
        benchmark:
            benchmark_of("capeval_one_pass", "capeval/{judge}.one_pass")
        wildcard_constraints:
            judge="|".join(PREP.one_pass_judges()),
        params:
            tables=PREP.one_pass_tables(),
            settings=config["capeval"],
            seed=config["seed"],
            models=models_of("capeval_one_pass"),
            prompts=prompts_of("capeval_judge", "capeval_repair"),
            code=code_of("capeval.py", "capeval_one_pass"),
        threads: threads_of("capeval_one_pass")
        resources:
            **resources_of("capeval_one_pass"),
        conda:
            conda_of("capeval_one_pass")
        script:
            "../workflow_scripts/capeval.py"

    ruleorder: capeval_one_pass > capeval


# A sharded capeval writes answers only; once they are gathered, this job pools them into Acc+/Acc-
# with intervals (the bootstrap needs every sample of the policy at once).
if PREP.sharded("capeval"):

    rule summarize_capeval:
        input:
            answers=out("capeval/{condition}/{policy}/{judge}/answers.parquet"),
            captions=out("captions/{condition}/{policy}.parquet"),
        output:
            out("capeval/{condition}/{policy}/{judge}/summary.parquet"),
        log:
            log_of("summarize_capeval", "capeval/{condition}/{policy}.{judge}.summary"),
        benchmark:
            benchmark_of("summarize_capeval", "capeval/{condition}/{policy}.{judge}.summary")
        params:
            settings=config["capeval"],
            seed=config["seed"],
            code=code_of("summarize_capeval.py", "summarize_capeval"),
        threads: threads_of("summarize_capeval")
        resources:
            **resources_of("summarize_capeval"),
        conda:
            conda_of("summarize_capeval")
        script:
            "../workflow_scripts/summarize_capeval.py"


rule score_released:
    # Captions made elsewhere, scored against the authors' released ground truth (QAS_GT_test.json).
    input:
        unpack(inputs_of("score_released", qas_gt=lambda wc: config["released_scoring"][wc.name]["qas_gt"],
                         captions=lambda wc: config["released_scoring"][wc.name]["captions"])),
    output:
        answers=out("released/{name}/{judge}/answers.parquet"),
        summary=out("released/{name}/{judge}/summary.parquet"),
    log:
        log_of("score_released", "released/{name}.{judge}"),
    benchmark:
        benchmark_of("score_released", "released/{name}.{judge}")
    params:
        settings=config["capeval"],
        seed=config["seed"],
        models=models_of("score_released"),
        prompts=prompts_of("capeval_judge", "capeval_repair"),
        code=code_of("score_released.py", "score_released"),
    threads: threads_of("score_released")
    resources:
        **resources_of("score_released"),
    conda:
        conda_of("score_released")
    script:
        "../workflow_scripts/score_released.py"


rule judge_agreement:
    input:
        capeval=PREP.control_capeval_answers(),
    output:
        agreement=out("report/judge_agreement.parquet"),
        disagreements=out("report/judge_disagreements.parquet"),
    log:
        log_of("judge_agreement"),
    benchmark:
        benchmark_of("judge_agreement")
    params:
        conditions=[condition for condition, _ in PREP.capeval_keys()],
        code=code_of("judge_agreement.py", "judge_agreement"),
    threads: threads_of("judge_agreement")
    resources:
        **resources_of("judge_agreement"),
    conda:
        conda_of("judge_agreement")
    script:
        "../workflow_scripts/judge_agreement.py"
