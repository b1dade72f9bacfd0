"""`covip plan --configfile ...`: the plan as a table (and Parquet), with its assumptions; after a run,
the same plan against the run's usage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from covip.clients.usage import load_usage
from covip.config.load import load_prepared
from covip.core import schemas
from covip.core.io import write_artifact
from covip.planning.compare import compare, comparison_markdown
from covip.planning.estimate import estimate, format_plan


def plan_configfiles(configfiles: Sequence[str], *, out: str | None = None, usage: str | None = None) -> str:
    """The plan of the config `configfiles` make (the embedded default when none), as text; written as
    Parquet to `out`, and compared with the usage Parquet files under `usage` when given."""
    prepared = load_prepared(list(configfiles))
    rows, assumptions = estimate(prepared)
    text = format_plan(rows, assumptions)
    if out:
        write_artifact(rows, Path(out), schemas.PLAN)
        text += f"\n\nwrote {out}"
    if usage:
        used = load_usage(usage)
        if not used:
            raise ValueError(f"{usage}: no usage files (a run writes <outdir>/usage/<job>.parquet)")
        text += "\n\nPlan against usage (used / planned):\n" + comparison_markdown(compare(rows, used))
    return text
