"""A visual-context control: the test split or a diagnostic set with its images removed, degraded or swapped."""
from covip.core import schemas
from covip.stages.controls.apply import apply_control
from covip.stages.controls.settings import ControlSettings
from covip.workflow.run import StageRun

with StageRun(snakemake) as run:  # noqa: F821
    wildcards = snakemake.wildcards  # noqa: F821
    settings = run.settings(ControlSettings, "controls")
    schema, layout = (schemas.SPLIT, "split") if wildcards.dataset == "test" else (schemas.DIAGNOSTIC_SET, "diagnostic")
    rows = run.read("source", schema)
    controlled, changes = apply_control(rows, wildcards.condition, settings, run.seed, layout=layout, dataset=wildcards.dataset)
    run.write(controlled, schema, "data")
    run.write(changes, schemas.CONTROL_CHANGES, "changes")
