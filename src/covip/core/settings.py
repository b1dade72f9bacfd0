"""Stage settings: building a settings dataclass from its config section, and the bases shared by the
stages that call a model or summarise with intervals."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from covip.core.reliability import validate_max_failure_rate

T = TypeVar("T")


def settings_from(cls: type[T], section: dict[str, Any] | None, where: str) -> T:
    """Build a settings dataclass from a config section; unknown keys fail with their path."""
    section = dict(section or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ValueError(f"{where}: unknown setting(s) {unknown}; known: {sorted(names)}")
    return cls(**section)


def help_of(cls: type) -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def _next_post_init(obj, cls: type) -> None:
    """Run the next base's __post_init__ in the MRO, so a settings class may combine the bases below."""
    following = getattr(super(cls, obj), "__post_init__", None)
    if following is not None:
        following()


@dataclass
class ModelStageSettings:
    """The settings every stage that calls a model shares; its settings dataclass extends this one.

    `section` names the config section in error messages. A stage with a repair loop declares its
    own `max_attempts` (its default and meaning differ per stage); this class checks it.
    """

    section: ClassVar[str] = "stage"

    concurrency: int | None = field(
        default=None,
        metadata={"help": "Parallel requests to the model (null: the model's registry `concurrency`); a batching "
                          "backend (vLLM, transformers) batches instead."},
    )
    max_failure_rate: float = field(
        default=0.2,
        metadata={"help": "The stage fails (writes nothing, prints a summary) when more than this share of its rows "
                          "failed after all attempts (for CapEval-QA: judge answers unreadable or failed); finished "
                          "calls stay cached, so a rerun repeats none."},
    )

    def __post_init__(self):
        _next_post_init(self, ModelStageSettings)
        validate_max_failure_rate(self.max_failure_rate, self.section)
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"{self.section}.concurrency must be >= 1 or null, got {self.concurrency}")
        attempts = getattr(self, "max_attempts", 1)
        if attempts < 1:
            raise ValueError(f"{self.section}.max_attempts must be >= 1, got {attempts}")


@dataclass
class IntervalSettings:
    """How a summary's confidence intervals are computed (a cluster bootstrap over samples)."""

    section: ClassVar[str] = "stage"

    n_bootstrap: int = field(
        default=1000,
        metadata={"help": "Bootstrap resamples (over samples) for the confidence intervals; 0 leaves them empty."},
    )
    confidence: float = field(default=0.95, metadata={"help": "Coverage of the bootstrap intervals."})

    def __post_init__(self):
        _next_post_init(self, IntervalSettings)
        if not 0 <= self.n_bootstrap <= 100_000:
            raise ValueError(f"{self.section}.n_bootstrap must be in [0, 100000], got {self.n_bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"{self.section}.confidence must be in (0, 1), got {self.confidence}")
