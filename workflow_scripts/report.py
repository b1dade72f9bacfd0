"""The run's Markdown summary and plots (also embedded in `snakemake --report`)."""
from pathlib import Path

from covip.stages import report
from covip.core import schemas
from covip.core.io import write_text_atomic
from covip.clients.usage import load_usage
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    out = snakemake.output  # noqa: F821
    capeval = run.read("capeval", schemas.CAPEVAL_SUMMARY)
    diagnostics = run.read("diagnostics", schemas.DIAGNOSTIC_SUMMARY)
    paper = report.load_paper_results(snakemake.input.paper)  # noqa: F821
    report.plot_capeval_by_count(capeval, out.capeval_plot)
    report.plot_direct_vs_cag(diagnostics, out.diagnostics_plot)
    effects = run.read("effects", schemas.CONTROL_EFFECTS)
    report.plot_controls(effects, out.controls_plot)
    controls = report.controls_section(
        effects, run.read("changes", schemas.CONTROL_CHANGES), run.read("agreement", schemas.JUDGE_AGREEMENT),
        run.read("disagreements", schemas.JUDGE_DISAGREEMENTS), Path(out.controls_plot).name,
    )
    human = []  # the human study's section, only when rule human_eval_summary ran (rules/human_eval.smk)
    if "human_pairs" in snakemake.input.keys():  # noqa: F821
        pairs = run.read("human_pairs", schemas.HUMAN_EVAL_PAIRS)
        report.plot_human_eval(pairs, out.human_eval_plot)
        human.append(report.human_eval_section(pairs, run.read("human_ranking", schemas.HUMAN_EVAL_RANKING),
                                               run.read("human_agreement", schemas.HUMAN_EVAL_AGREEMENT),
                                               Path(out.human_eval_plot).name))
    general = []  # the multi-image table, only when general benchmarks are configured (rules/general.smk)
    if "general" in snakemake.input.keys():  # noqa: F821
        from covip.stages.general.summary import general_section

        general.append(general_section(run.read("general", schemas.GENERAL_SUMMARY), paper))
    text = report.render_summary(
        capeval, diagnostics, paper,
        run_name=snakemake.params.run_name,  # noqa: F821
        stand_in_note=report.backends_note(run.config),
        capeval_plot=Path(out.capeval_plot).name,
        diagnostics_plot=Path(out.diagnostics_plot).name,
        usage=load_usage(Path(run.config["outdir"]) / "usage"),
        extra_sections=[controls, *human, *general],
    )
    write_text_atomic(out.summary, text)
