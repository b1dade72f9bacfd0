"""One policy on one general multi-image benchmark, through lmms-eval, offline."""
import json

from covip.core import schemas
from covip.harness.catalog import benchmark
from covip.stages.general.evaluate import evaluate_general
from covip.stages.general.settings import GeneralSettings
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    wildcards, params = snakemake.wildcards, snakemake.params  # noqa: F821
    settings = run.settings(GeneralSettings, "general_benchmarks")
    with open(snakemake.input.data, encoding="utf-8") as handle:  # noqa: F821
        data_dir = json.load(handle)["data_dir"]
    spec = run.models.spec(wildcards.policy)  # a served policy's entry carries its job's server address
    served_url = spec.base_url if spec.serve is not None else None
    scores, samples = evaluate_general(benchmark(wildcards.benchmark), wildcards.policy, spec, data_dir, settings,
                                       run.seed, model_type=params.model_type, base_url=served_url)
    run.write(samples, schemas.GENERAL_SAMPLES, "samples")
    run.write(scores, schemas.GENERAL_SCORES, "scores")
