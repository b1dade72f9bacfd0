# Stages 9-11: caption the test split with every policy, score the captions with CapEval-QA, run the
# LSD/LAR/ITR diagnostics direct and with caption-augmented generation, and build the report.


wildcard_constraints:
    policy="[A-Za-z0-9_.-]+",
    judge="[A-Za-z0-9_.-]+",
    task="lsd|lar|itr",
    mode="direct|cag",
    name="[A-Za-z0-9_.-]+",
    condition="intact|text_only|corrupted_context|swapped_context|blank_query",
    dataset="test|lsd|lar|itr",


rule build_tiny_vlm:
    output:
        directory(config["tiny_vlm"]["path"]),
    log:
        f"{LOGS}/build_tiny_vlm.log",
    benchmark:
        f"{OUT}/benchmarks/build_tiny_vlm.tsv"
    params:
        architecture=config["tiny_vlm"]["architecture"],
        seed=config["seed"],
        code=stage_code("covip.local.tiny_vlm"),
    threads: rule_resources("build_tiny_vlm", "threads")
    resources:
        mem_mb=rule_resources("build_tiny_vlm", "mem_mb"),
        gpu=rule_resources("build_tiny_vlm", "gpu"),
    conda:
        "../envs/train.yaml"
    script:
        "../workflow_scripts/build_tiny_vlm.py"


rule caption:
    input:
        unpack(lambda wc: model_inputs(wc.policy, test=condition_input(wc.condition, "test"))),
    output:
        shard_output("caption", "captions/{condition}/{policy}.parquet"),
    log:
        shard_log("caption", f"{LOGS}/caption/{{condition}}/{{policy}}.log"),
    benchmark:
        shard_benchmark("caption", f"{OUT}/benchmarks/caption/{{condition}}/{{policy}}.tsv")
    params:
        shard_size=shard_size("caption"),
        settings=config["captioning"],
        seed=config["seed"],
        models=lambda wc: model_params(wc.policy),
        prompts=prompt_params("caption"),
        code=lambda wc: stage_code("covip.stages.captioning", [("chat", wc.policy)]),
    threads: rule_resources("caption", "threads")
    resources:
        mem_mb=rule_resources("caption", "mem_mb"),
        gpu=lambda wc: model_gpus(wc.policy),
    conda:
        "../envs/vllm.yaml"
    script:
        "../workflow_scripts/caption.py"


rule capeval:
    input:
        unpack(lambda wc: model_inputs(wc.judge, captions=out("captions/{condition}/{policy}.parquet"),
                                       test=condition_input(wc.condition, "test"))),
    output:
        **capeval_outputs(),
    log:
        shard_log("capeval", f"{LOGS}/capeval/{{condition}}/{{policy}}.{{judge}}.log"),
    benchmark:
        shard_benchmark("capeval", f"{OUT}/benchmarks/capeval/{{condition}}/{{policy}}.{{judge}}.tsv")
    params:
        shard_size=shard_size("capeval"),
        settings=config["capeval"],
        seed=config["seed"],
        models=lambda wc: model_params(wc.judge),
        prompts=prompt_params("capeval_judge", "capeval_repair"),
        code=lambda wc: stage_code("covip.stages.capeval", [("chat", wc.judge)]),
    threads: rule_resources("capeval", "threads")
    resources:
        mem_mb=rule_resources("capeval", "mem_mb"),
        gpu=lambda wc: model_gpus(wc.judge),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/capeval.py"


# A sharded capeval writes answers only; once they are gathered, this job pools them into Acc+/Acc-
# with intervals (the bootstrap needs every sample of the policy at once).
if sharded("capeval"):

    rule summarize_capeval:
        input:
            answers=out("capeval/{condition}/{policy}/{judge}/answers.parquet"),
            captions=out("captions/{condition}/{policy}.parquet"),
        output:
            out("capeval/{condition}/{policy}/{judge}/summary.parquet"),
        log:
            f"{LOGS}/capeval/{{condition}}/{{policy}}.{{judge}}.summary.log",
        benchmark:
            f"{OUT}/benchmarks/capeval/{{condition}}/{{policy}}.{{judge}}.summary.tsv"
        params:
            settings=config["capeval"],
            seed=config["seed"],
            code=stage_code("covip.stages.capeval"),
        threads: 1
        resources:
            mem_mb=rule_resources("summarize_capeval", "mem_mb"),
            gpu=0,
        conda:
            "../envs/data.yaml"
        script:
            "../workflow_scripts/summarize_capeval.py"


rule build_diagnostic_set:
    input:
        unpack(diagnostic_source),
    output:
        out("diagnostics/sets/{task}.parquet"),
    log:
        f"{LOGS}/diagnostics/build_{{task}}.log",
    benchmark:
        f"{OUT}/benchmarks/diagnostics/build_{{task}}.tsv"
    params:
        settings=config["diagnostics"],
        source=lambda wc: config["diagnostic_sources"].get(wc.task),
        seed=config["seed"],
        code=stage_code("covip.stages.diagnostics"),
    threads: rule_resources("build_diagnostic_set", "threads")
    resources:
        mem_mb=rule_resources("build_diagnostic_set", "mem_mb"),
        gpu=rule_resources("build_diagnostic_set", "gpu"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/build_diagnostic_set.py"


rule diagnose:
    input:
        unpack(lambda wc: model_inputs(*diagnostic_roles(wc), diagnostic_set=condition_input(wc.condition, wc.task))),
    output:
        out("diagnostics/responses/{condition}/{policy}/{task}.{mode}.parquet"),
    log:
        f"{LOGS}/diagnostics/{{condition}}/{{policy}}.{{task}}.{{mode}}.log",
    benchmark:
        f"{OUT}/benchmarks/diagnostics/{{condition}}/{{policy}}.{{task}}.{{mode}}.tsv"
    params:
        settings=config["diagnostics"],
        seed=config["seed"],
        models=lambda wc: model_params(*diagnostic_roles(wc)),
        prompts=lambda wc: prompt_params("caption", "diagnostic_questions", *(["lar_judge"] if wc.task == "lar" else [])),
        code=lambda wc: stage_code("covip.stages.diagnostics", [("chat", role) for role in diagnostic_roles(wc)]),
    threads: rule_resources("diagnose", "threads")
    resources:
        mem_mb=rule_resources("diagnose", "mem_mb"),
        gpu=lambda wc: model_gpus(wc.policy),
    conda:
        "../envs/vllm.yaml"
    script:
        "../workflow_scripts/diagnose.py"


rule collect_evaluation:
    input:
        capeval=expand(
            out("capeval/intact/{policy}/{judge}/summary.parquet"),
            policy=config["evaluation"]["policies"],
            judge=config["evaluation"]["judges"],
        ),
        diagnostics=expand(
            out("diagnostics/responses/intact/{policy}/{task}.{mode}.parquet"),
            policy=config["evaluation"]["policies"],
            task=config["evaluation"]["diagnostic_tasks"],
            mode=config["evaluation"]["diagnostic_modes"],
        ),
    output:
        capeval=out("report/capeval_summary.parquet"),
        diagnostics=out("report/diagnostic_summary.parquet"),
    log:
        f"{LOGS}/collect_evaluation.log",
    benchmark:
        f"{OUT}/benchmarks/collect_evaluation.tsv"
    params:
        n_bootstrap=config["capeval"]["n_bootstrap"],
        seed=config["seed"],
        code=stage_code("covip.stages.diagnostics"),
    threads: 1
    resources:
        mem_mb=rule_resources("collect_evaluation", "mem_mb"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/collect_evaluation.py"


# Visual-context controls (covip.stages.controls): each condition rewrites the test split and the
# diagnostic sets into tables of the same schema, so caption / capeval / diagnose run unchanged on
# them. 'intact' is never rewritten: its jobs read the original files (condition_input).
rule apply_control:
    input:
        source=lambda wc: condition_input("intact", wc.dataset),
    output:
        data=out("controls/{condition}/{dataset}.parquet"),
        changes=out("controls/{condition}/{dataset}.changes.parquet"),
    wildcard_constraints:
        condition="text_only|corrupted_context|swapped_context|blank_query",
    log:
        f"{LOGS}/controls/{{condition}}.{{dataset}}.log",
    benchmark:
        f"{OUT}/benchmarks/controls/{{condition}}.{{dataset}}.tsv"
    params:
        settings=config["controls"],
        seed=config["seed"],
        code=stage_code("covip.stages.controls"),
    threads: 1
    resources:
        mem_mb=rule_resources("apply_control", "mem_mb"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/apply_control.py"


rule summarize_controls:
    input:
        capeval=control_capeval_answers(),
        diagnostics=control_diagnostic_responses(),
        changes=control_changes(),
        captions=expand(out("captions/intact/{policy}.parquet"), policy=config["evaluation"]["policies"]),
    output:
        effects=out("report/control_effects.parquet"),
        changes=out("report/control_changes.parquet"),
    log:
        f"{LOGS}/summarize_controls.log",
    benchmark:
        f"{OUT}/benchmarks/summarize_controls.tsv"
    params:
        capeval_conditions=[c for c, _ in control_keys(config["evaluation"]["policies"], config["evaluation"]["judges"])],
        diagnostic_conditions=[c for c, _ in control_keys(DIAGNOSTIC_JOBS, diagnostics=True)],
        n_bootstrap=config["capeval"]["n_bootstrap"],
        confidence=config["capeval"]["confidence"],
        seed=config["seed"],
        code=stage_code("covip.stages.controls"),
    threads: 1
    resources:
        mem_mb=rule_resources("summarize_controls", "mem_mb"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/summarize_controls.py"


rule judge_agreement:
    input:
        capeval=control_capeval_answers(),
    output:
        agreement=out("report/judge_agreement.parquet"),
        disagreements=out("report/judge_disagreements.parquet"),
    log:
        f"{LOGS}/judge_agreement.log",
    benchmark:
        f"{OUT}/benchmarks/judge_agreement.tsv"
    params:
        conditions=[c for c, _ in control_keys(config["evaluation"]["policies"], config["evaluation"]["judges"])],
        code=stage_code("covip.stages.agreement"),
    threads: 1
    resources:
        mem_mb=rule_resources("judge_agreement", "mem_mb"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/judge_agreement.py"


rule report:
    input:
        capeval=rules.collect_evaluation.output.capeval,
        diagnostics=rules.collect_evaluation.output.diagnostics,
        effects=rules.summarize_controls.output.effects,
        changes=rules.summarize_controls.output.changes,
        agreement=rules.judge_agreement.output.agreement,
        disagreements=rules.judge_agreement.output.disagreements,
        paper=config["paper_results"],
    output:
        summary=report(out("report/summary.md"), category="Summary", caption="../report/summary.rst"),
        capeval_plot=report(out("report/capeval_by_count.png"), category="CapEval-QA", caption="../report/capeval_plot.rst"),
        diagnostics_plot=report(out("report/direct_vs_cag.png"), category="Diagnostics", caption="../report/diagnostics_plot.rst"),
        controls_plot=report(out("report/controls.png"), category="Does it look?", caption="../report/controls_plot.rst"),
    log:
        f"{LOGS}/report.log",
    benchmark:
        f"{OUT}/benchmarks/report.tsv"
    params:
        run_name=config["run_name"],
        code=stage_code("covip.stages.report"),
    threads: 1
    resources:
        mem_mb=rule_resources("report", "mem_mb"),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/report.py"


rule score_released:
    # Score captions made elsewhere against the authors' released ground truth (QAS_GT_test.json).
    input:
        unpack(
            lambda wc: model_inputs(
                wc.judge,
                qas_gt=config["released_scoring"][wc.name]["qas_gt"],
                captions=config["released_scoring"][wc.name]["captions"],
            )
        ),
    output:
        answers=out("released/{name}/{judge}/answers.parquet"),
        summary=out("released/{name}/{judge}/summary.parquet"),
    log:
        f"{LOGS}/released/{{name}}.{{judge}}.log",
    benchmark:
        f"{OUT}/benchmarks/released/{{name}}.{{judge}}.tsv"
    params:
        settings=config["capeval"],
        seed=config["seed"],
        models=lambda wc: model_params(wc.judge),
        prompts=prompt_params("capeval_judge", "capeval_repair"),
        code=lambda wc: stage_code("covip.stages.capeval", [("chat", wc.judge)]),
    threads: 1
    resources:
        mem_mb=rule_resources("capeval", "mem_mb"),
        gpu=lambda wc: model_gpus(wc.judge),
    conda:
        "../envs/data.yaml"
    script:
        "../workflow_scripts/score_released.py"
