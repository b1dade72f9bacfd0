"""Stage failure accounting: how many rows of a stage failed, why, and whether that is too many.

Model stages keep failed rows (with the reason and the raw model text) instead of dropping them.
A stage as a whole fails only when the share of failed rows exceeds its `max_failure_rate`; then
the workflow script raises before writing its output (Snakemake marks the job failed), while every
finished model call is already in the response cache, so a rerun repeats none of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field


class FailureRateExceeded(RuntimeError):
    """More rows of a stage failed than its `max_failure_rate` allows."""


@dataclass
class FailureReport:
    stage: str
    total: int
    failed: int
    reasons: Counter = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.failed / self.total if self.total else 0.0

    def text(self, max_rate: float | None = None) -> str:
        limit = "" if max_rate is None else f" (max_failure_rate {max_rate:.1%})"
        lines = [f"{self.stage}: {self.failed} of {self.total} rows failed = {self.rate:.1%}{limit}"]
        for reason, count in self.reasons.most_common(5):
            lines.append(f"  {count:>6} x {reason[:160]}")
        if len(self.reasons) > 5:
            lines.append(f"  ... and {len(self.reasons) - 5} other reason(s)")
        return "\n".join(lines)


def _reason_head(reason: str | None) -> str:
    """The reason without its attempt count, so that alike failures group together."""
    return (reason or "failed").split(" (after ")[0][:120]


def failure_report(
    rows: Iterable[Mapping],
    stage: str,
    *,
    failed: Callable[[Mapping], bool] = lambda row: row.get("status") != "ok",
    reason: Callable[[Mapping], str | None] = lambda row: row.get("failure_reason"),
    counted: Callable[[Mapping], bool] = lambda row: True,
) -> FailureReport:
    """Count the failed rows among those `counted` (e.g. leave out rows that failed upstream)."""
    report = FailureReport(stage, 0, 0)
    for row in rows:
        if not counted(row):
            continue
        report.total += 1
        if failed(row):
            report.failed += 1
            report.reasons[_reason_head(reason(row))] += 1
    return report


def check_failure_rate(report: FailureReport, max_rate: float) -> None:
    """Raise FailureRateExceeded (its message is the summary) when the failure rate is above `max_rate`."""
    if report.rate > max_rate:
        raise FailureRateExceeded(
            report.text(max_rate) + "\nno output was written; finished model calls are in the response cache, "
            "so a rerun repeats none of them"
        )


def validate_max_failure_rate(value: float, section: str) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{section}.max_failure_rate must be in [0, 1], got {value}")
