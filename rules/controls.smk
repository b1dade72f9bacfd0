# Visual-context controls (covip.stages.controls): each condition rewrites the test split and the
# diagnostic sets into tables of the same schema, so caption / capeval / diagnose run unchanged on
# them. 'intact' is never rewritten: its jobs read the original files (PREP.condition_input).
from covip.core.names import CONTROL_CONDITIONS


rule apply_control:
    input:
        source=lambda wc: PREP.condition_input("intact", wc.dataset),
    output:
        data=out("controls/{condition}/{dataset}.parquet"),
        changes=out("controls/{condition}/{dataset}.changes.parquet"),
    wildcard_constraints:
        condition="|".join(CONTROL_CONDITIONS),
    log:
        log_of("apply_control", "controls/{condition}.{dataset}"),
    benchmark:
        benchmark_of("apply_control", "controls/{condition}.{dataset}")
    params:
        settings=config["controls"],
        seed=config["seed"],
        code=code_of("apply_control.py", "apply_control"),
    threads: threads_of("apply_control")
    resources:
        **resources_of("apply_control"),
    conda:
        conda_of("apply_control")
    script:
        "../workflow_scripts/apply_control.py"


rule summarize_controls:
    input:
        capeval=PREP.control_capeval_answers(),
        diagnostics=PREP.control_diagnostic_responses(),
        changes=PREP.control_changes(),
        captions=expand(out("captions/intact/{policy}.parquet"), policy=config["evaluation"]["policies"]),
    output:
        effects=out("report/control_effects.parquet"),
        changes=out("report/control_changes.parquet"),
    log:
        log_of("summarize_controls"),
    benchmark:
        benchmark_of("summarize_controls")
    params:
        capeval_conditions=[condition for condition, _ in PREP.capeval_keys()],
        diagnostic_conditions=[condition for condition, _ in PREP.diagnostic_keys()],
        n_bootstrap=config["capeval"]["n_bootstrap"],
        confidence=config["capeval"]["confidence"],
        failed_calls=config["capeval"]["failed_calls"],
        seed=config["seed"],
        code=code_of("summarize_controls.py", "summarize_controls"),
    threads: threads_of("summarize_controls")
    resources:
        **resources_of("summarize_controls"),
    conda:
        conda_of("summarize_controls")
    script:
        "../workflow_scripts/summarize_controls.py"
