# Model weights, fetched once before any job needs them (covip.clients.weights): one job per weights
# source (a hub repository, a local:// folder or file, open_clip's pretrained weights), so no two jobs
# race on the same download; every other job runs with HF_HUB_OFFLINE=1. The jobs that use a source
# wait for its marker (rules/common.smk, inputs_of), as ancient: fetching again reruns nothing.


rule download_models:
    output:
        weights_marker("{weights}"),
    log:
        log_of("download_models", "download_models/{weights}"),
    benchmark:
        benchmark_of("download_models", "download_models/{weights}")
    params:
        weights=lambda wc: PREP.weights_params(wc.weights),
        offline=config["weights"]["offline"],
        code=code_of("download_models.py", "download_models"),
    threads: threads_of("download_models")
    resources:
        **resources_of("download_models"),
    conda:
        conda_of("download_models")
    script:
        "../workflow_scripts/download_models.py"
