# Rule download_models: fetch one weights source into the hub cache (or check it is there) and write
# its marker. The one job allowed online: every other job runs with HF_HUB_OFFLINE=1.
import os

if not snakemake.params.offline:
    os.environ["HF_HUB_OFFLINE"] = "0"  # before huggingface_hub reads it at import

from covip.clients.weights import download
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:
    run.write_json(download(snakemake.params.weights["source"], hf_home=snakemake.params.weights["hf_home"],
                            offline=bool(snakemake.params.offline)))
