# Human evaluation: the votes that `covip human-eval serve` collected (a pairwise caption-preference
# study), summarized beside CapEval-QA. Inert unless human_eval.votes names a votes database that
# exists: then rule human_eval_summary joins `rule all`, and the report gets a section.


if PREP.human_eval_enabled:

    rule human_eval_summary:
        input:
            votes=config["human_eval"]["votes"],
            answers=expand(out("capeval/intact/{policy}/{judge}/answers.parquet"),
                           policy=PREP.human_eval_roles()[0], judge=PREP.human_eval_roles()[1]),
        output:
            **PREP.human_eval_outputs(),
        log:
            log_of("human_eval_summary"),
        benchmark:
            benchmark_of("human_eval_summary")
        params:
            settings=config["human_eval"],
            code=code_of("human_eval_summary.py", "human_eval_summary"),
        threads: threads_of("human_eval_summary")
        resources:
            **resources_of("human_eval_summary"),
        conda:
            conda_of("human_eval_summary")
        script:
            "../workflow_scripts/human_eval_summary.py"
