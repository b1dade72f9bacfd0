# CoViP: build a contextualized visual-personalization benchmark (and, in later modules, train on it,
# caption with it and score the captions). `snakemake --cores all` runs the embedded offline default.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/benchmark.smk"
include: "rules/training.smk"
include: "rules/evaluation.smk"


rule all:
    input:
        get_final_output(),
    default_target: True
