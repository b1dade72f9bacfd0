"""The run's Markdown summary and plots (also embedded in `snakemake --report`)."""
from pathlib import Path

from covip.clients.usage import load_usage
from covip.core import schemas
from covip.core.io import write_text_atomic
from covip.stages.report import plots, sections, tables
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    out, params = snakemake.output, snakemake.params  # noqa: F821
    capeval = run.read("capeval", schemas.CAPEVAL_SUMMARY)
    diagnostics = run.read("diagnostics", schemas.DIAGNOSTIC_SUMMARY)
    paper = tables.load_paper_results(snakemake.input.paper)  # noqa: F821
    # The paper's systems are drawn and printed beside ours only under the authors' protocol.
    reference = paper if params.comparable else None
    plots.plot_capeval_by_count(capeval, out.capeval_plot, reference)
    plots.plot_direct_vs_cag(diagnostics, out.diagnostics_plot, reference)
    effects = run.read("effects", schemas.CONTROL_EFFECTS)
    plots.plot_controls(effects, out.controls_plot)
    controls = sections.controls_section(
        effects, run.read("changes", schemas.CONTROL_CHANGES), run.read("agreement", schemas.JUDGE_AGREEMENT),
        run.read("disagreements", schemas.JUDGE_DISAGREEMENTS), Path(out.controls_plot).name,
    )
    human = []  # the human study's section, only when rule human_eval_summary ran (rules/human_eval.smk)
    if "human_pairs" in snakemake.input.keys():  # noqa: F821
        pairs = run.read("human_pairs", schemas.HUMAN_EVAL_PAIRS)
        plots.plot_human_eval(pairs, out.human_eval_plot)
        human.append(sections.human_eval_section(pairs, run.read("human_ranking", schemas.HUMAN_EVAL_RANKING),
                                                 run.read("human_agreement", schemas.HUMAN_EVAL_AGREEMENT),
                                                 Path(out.human_eval_plot).name))
    general = []  # the multi-image table, only when general benchmarks are configured (rules/general.smk)
    if "general" in snakemake.input.keys():  # noqa: F821
        from covip.stages.general.summary import general_section

        general.append(general_section(run.read("general", schemas.GENERAL_SUMMARY), paper))
    text = tables.render_summary(
        capeval, diagnostics, paper,
        run_name=params.run_name,
        stand_in_note=tables.backends_note(run.config),
        capeval_plot=Path(out.capeval_plot).name,
        diagnostics_plot=Path(out.diagnostics_plot).name,
        usage=load_usage(Path(run.config["outdir"]) / "usage"),
        extra_sections=[controls, *human, *general],
        protocol=params.protocol,
        comparable=params.comparable,
    )
    write_text_atomic(out.summary, text)
