# Rule download_models: fetch one weights source into the hub cache (or check it is there) and write
# its marker. The one job allowed online: every other job runs with HF_HUB_OFFLINE=1.
import os

if not snakemake.params.offline:  # noqa: F821
    os.environ["HF_HUB_OFFLINE"] = "0"  # before huggingface_hub reads it at import

from covip.clients.weights import download
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    weights = snakemake.params.weights  # noqa: F821
    run.write_json(download(weights["source"], hf_home=weights["hf_home"], offline=bool(snakemake.params.offline)))  # noqa: F821
