"""The glue between Snakemake and the package: the job context of a workflow script, config
preparation, code fingerprints, GPU slots and the generated config schema."""
