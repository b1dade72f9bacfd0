# The report: every policy's CapEval-QA summary and diagnostic scores gathered, then the Markdown
# summary with the paper's tables beside ours, and the plots (also in `snakemake --report`).


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
        log_of("collect_evaluation"),
    benchmark:
        benchmark_of("collect_evaluation")
    params:
        settings=config["diagnostics"],
        seed=config["seed"],
        code=code_of("collect_evaluation.py", "collect_evaluation"),
    threads: threads_of("collect_evaluation")
    resources:
        **resources_of("collect_evaluation"),
    conda:
        conda_of("collect_evaluation")
    script:
        "../workflow_scripts/collect_evaluation.py"


rule report:
    input:
        capeval=rules.collect_evaluation.output.capeval,
        diagnostics=rules.collect_evaluation.output.diagnostics,
        effects=rules.summarize_controls.output.effects,
        changes=rules.summarize_controls.output.changes,
        agreement=rules.judge_agreement.output.agreement,
        disagreements=rules.judge_agreement.output.disagreements,
        paper=config["paper_results"],
        **human_eval_report_inputs(),  # empty unless a votes database exists (rules/human_eval.smk)
        **general_report_inputs(),  # the multi-image table, when general benchmarks are configured (rules/general.smk)
    output:
        summary=report(out("report/summary.md"), category="Summary", caption="../report/summary.rst"),
        capeval_plot=report(out("report/capeval_by_count.png"), category="CapEval-QA", caption="../report/capeval_plot.rst"),
        diagnostics_plot=report(out("report/direct_vs_cag.png"), category="Diagnostics", caption="../report/diagnostics_plot.rst"),
        controls_plot=report(out("report/controls.png"), category="Does it look?", caption="../report/controls_plot.rst"),
        **human_eval_report_outputs(),
    log:
        log_of("report"),
    benchmark:
        benchmark_of("report")
    params:
        run_name=config["run_name"],
        protocol=PREP.protocol.label,  # the measurement protocol of every number (docs/protocol.md)
        comparable=PREP.protocol.comparable,  # the paper's rows beside ours only under the authors' protocol
        code=code_of("report.py", "report"),
    threads: threads_of("report")
    resources:
        **resources_of("report"),
    conda:
        conda_of("report")
    script:
        "../workflow_scripts/report.py"
