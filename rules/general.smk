# General multi-image benchmarks (the paper's multi-image table) through lmms-eval: one job per policy
# and benchmark, on data prepared beforehand (a hub snapshot in HF_HOME, or the tiny offline set built
# here), so the jobs run with HF_HUB_OFFLINE=1; then one table for the report.


rule download_benchmark_data:
    output:
        "resources/benchmarks/{hub_data}.json",
    log:
        log_of("download_benchmark_data", "general/download_{hub_data}"),
    benchmark:
        benchmark_of("download_benchmark_data", "general/download_{hub_data}")
    params:
        entry=lambda wc: general_download_params(wc.hub_data),
        code=code_of("download_benchmark_data.py", "download_benchmark_data"),
    threads: threads_of("download_benchmark_data")
    resources:
        **resources_of("download_benchmark_data"),
    conda:
        conda_of("download_benchmark_data")
    script:
        "../workflow_scripts/download_benchmark_data.py"


rule build_tiny_benchmark:
    output:
        data=out("general/data/tiny_multi_image/test.parquet"),
        manifest=out("general/data/tiny_multi_image.json"),
    log:
        log_of("build_tiny_benchmark", "general/build_tiny_benchmark"),
    benchmark:
        benchmark_of("build_tiny_benchmark", "general/build_tiny_benchmark")
    params:
        settings=config["general_benchmarks"],
        seed=config["seed"],
        code=code_of("build_tiny_benchmark.py", "build_tiny_benchmark"),
    threads: threads_of("build_tiny_benchmark")
    resources:
        **resources_of("build_tiny_benchmark"),
    conda:
        conda_of("build_tiny_benchmark")
    script:
        "../workflow_scripts/build_tiny_benchmark.py"


rule general_benchmark:
    input:
        unpack(inputs_of("general_benchmark", data=lambda wc: PREP.general_data_manifest(wc.benchmark))),
    output:
        scores=out("general/{policy}/{benchmark}.parquet"),
        samples=out("general/{policy}/{benchmark}.samples.parquet"),
    log:
        log_of("general_benchmark", "general/{policy}.{benchmark}"),
    benchmark:
        benchmark_of("general_benchmark", "general/{policy}.{benchmark}")
    params:
        settings=config["general_benchmarks"],
        seed=config["seed"],
        models=models_of("general_benchmark"),
        task=lambda wc: PREP.general_task_params(wc.benchmark),
        model_type=lambda wc: PREP.general_model_type(wc.policy),
        code=code_of("general_benchmark.py", "general_benchmark"),
    threads: threads_of("general_benchmark")
    resources:
        **resources_of("general_benchmark"),
    conda:
        conda_of("general_benchmark")
    script:
        "../workflow_scripts/general_benchmark.py"


rule collect_general:
    input:
        scores=PREP.general_outputs("scores"),
        samples=PREP.general_outputs("samples"),
    output:
        out("report/general_summary.parquet"),
    log:
        log_of("collect_general"),
    benchmark:
        benchmark_of("collect_general")
    params:
        settings=config["general_benchmarks"],
        seed=config["seed"],
        base_of=PREP.general_base_of(),
        code=code_of("collect_general.py", "collect_general"),
    threads: threads_of("collect_general")
    resources:
        **resources_of("collect_general"),
    conda:
        conda_of("collect_general")
    script:
        "../workflow_scripts/collect_general.py"
