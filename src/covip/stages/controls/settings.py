"""Settings of the visual-context controls (config section `controls`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from covip.core.names import CONDITIONS, INTACT

CORRUPTIONS = ("noise", "blur", "patch_shuffle")
BLANK_MODES = ("blank", "unrelated")


class ControlError(ValueError):
    """A table that cannot be put under a control; the message names the dataset, row and field."""


@dataclass
class ControlSettings:
    """Settings of the visual-context controls (config section `controls`)."""

    conditions: list[str] = field(
        default_factory=lambda: list(CONDITIONS),
        metadata={"help": f"Conditions every policy is scored under; 'intact' must be one of them. Known: {list(CONDITIONS)}."},
    )
    corruptions: list[str] = field(
        default_factory=lambda: list(CORRUPTIONS),
        metadata={"help": f"Degradations applied, in this order, to every context image under corrupted_context: {list(CORRUPTIONS)}."},
    )
    severity: float = field(
        default=0.6,
        metadata={"help": "Corruption strength in (0, 1]: noise std = 96*severity grey levels, blur radius = 6% of the image side*severity, patch grid = 2 + round(6*severity) per side."},
    )
    blank_mode: str = field(
        default="blank",
        metadata={"help": "What replaces the query image under blank_query: 'blank' (flat grey) or 'unrelated' (another sample's query showing none of this sample's concepts)."},
    )
    seed_offset: int = field(default=0, metadata={"help": "Extra key in the controls' random draws (swap, corruption, unrelated query); change it for a fresh draw."})
    diagnostics: bool = field(
        default=True,
        metadata={"help": "Also run the LSD/LAR/ITR diagnostics under every condition (false: diagnostics only under intact, the CapEval-QA scores still under all)."},
    )

    def __post_init__(self):
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown:
            raise ValueError(f"controls.conditions: unknown condition(s) {unknown}; choose from {list(CONDITIONS)}")
        if INTACT not in self.conditions:
            raise ValueError("controls.conditions must include 'intact' (every drop is measured against it)")
        if len(set(self.conditions)) != len(self.conditions):
            raise ValueError(f"controls.conditions lists a condition twice: {self.conditions}")
        bad = [c for c in self.corruptions if c not in CORRUPTIONS]
        if bad or not self.corruptions:
            raise ValueError(f"controls.corruptions must be a non-empty subset of {list(CORRUPTIONS)}, got {self.corruptions}")
        if not 0.0 < float(self.severity) <= 1.0:
            raise ValueError(f"controls.severity must be in (0, 1], got {self.severity}")
        if self.blank_mode not in BLANK_MODES:
            raise ValueError(f"controls.blank_mode must be one of {list(BLANK_MODES)}, got {self.blank_mode!r}")
