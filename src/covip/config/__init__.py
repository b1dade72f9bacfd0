"""The workflow's configuration: `prepare(config, root)` checks it and answers every rule's questions
(rules/common.smk calls it while Snakemake parses), `layout` places the artifacts, `schema` keeps
config/schemas/config.schema.yaml in step with the stage settings, and `checks` runs before any job."""
