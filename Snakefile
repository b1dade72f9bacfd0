# CoViP: build the contextualized visual-personalization benchmark, post-train a policy with GSPO,
# caption with every policy, score with CapEval-QA and the LSD/LAR/ITR diagnostics, under the
# visual-context controls. `snakemake --cores all` runs the embedded offline default.
from snakemake.utils import min_version

from covip.config.prepare import standalone_config

min_version("9.0")


# The embedded default lies under every run, unless a --configfile says `standalone: true` (the
# paper's config does): then that file is the whole config, here and in every job Snakemake submits
# (jobs get the same --configfiles), and no stand-in setting leaks into a paper-scale run.
if not standalone_config(workflow.overwrite_configfiles):

    configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/data.smk"
include: "rules/sharding.smk"
include: "rules/training.smk"
include: "rules/released.smk"
include: "rules/captioning.smk"
include: "rules/capeval.smk"
include: "rules/diagnostics.smk"
include: "rules/controls.smk"
include: "rules/human_eval.smk"
include: "rules/general.smk"
include: "rules/report.smk"


# Now that every rule exists: a misspelled rule name under resources.rules fails the dry run.
check_rule_names([rule.name for rule in workflow.rules])


rule all:
    input:
        get_final_output(),
    default_target: True
