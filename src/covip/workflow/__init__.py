"""The glue between a Snakemake job and the package: the job context of a workflow script (`run`:
its log, inputs, outputs, models and usage) and the GPU slots jobs take their devices from."""
