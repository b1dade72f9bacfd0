# The authors' released test set (evaluation.test_source: released): their JSONL of samples and image
# folder, joined with QAS_GT_test.json by position, become a split that every policy is captioned and
# scored on, controls included (PREP.condition_input reads it instead of results/splits/test.parquet).


if PREP.test_source == "released":

    rule import_released_test:
        input:
            **PREP.released_test_inputs(),
        output:
            out("released_test/test.parquet"),
        log:
            log_of("import_released_test"),
        benchmark:
            benchmark_of("import_released_test")
        params:
            image_root=PREP.released_test_image_root(),
            code=code_of("import_released_test.py", "import_released_test"),
        threads: threads_of("import_released_test")
        resources:
            **resources_of("import_released_test"),
        conda:
            conda_of("import_released_test")
        script:
            "../workflow_scripts/import_released_test.py"
