"""Settings of the human study (config section `human_eval`), shared by the server and the summary rule.

Kept free of Flask and of the stage modules, so that the config schema generator, the page and the
workflow can all import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

AGREEMENT_LEVELS = ("nominal", "ordinal")


@dataclass
class HumanEvalSettings:
    """Settings of the pairwise caption-preference study (config section `human_eval`)."""

    votes: str | None = field(
        default=None,
        metadata={"help": "SQLite file that holds raters and votes (written by `covip human-eval serve`). The "
                          "summary rule human_eval_summary runs only when this is set and the file exists."},
    )
    policies: list[str] | None = field(
        default=None,
        metadata={"help": "Policies whose captions are compared in pairs; null: evaluation.policies. "
                          "`covip human-eval serve --policies` overrides it for the page."},
    )
    judges: list[str] | None = field(
        default=None,
        metadata={"help": "CapEval-QA judges whose per-sample Acc+/Acc- the human preferences are compared "
                          "with; null: evaluation.judges."},
    )
    items_per_rater: int = field(
        default=40,
        metadata={"help": "Comparisons (sample, pair of policies) each rater is asked for, at most."},
    )
    shared_items: int = field(
        default=10,
        metadata={"help": "How many of them every rater sees (the same comparisons, in each rater's own order "
                          "and sides), so that inter-rater agreement can be measured; the rest are drawn per "
                          "rater from the remaining comparisons."},
    )
    seed_offset: int = field(
        default=0,
        metadata={"help": "Extra key in the plan's random draws (which comparisons, their order, which caption "
                          "is shown as A); change it for a fresh plan."},
    )
    plan_version: str | None = field(
        default=None,
        metadata={"help": "The plan whose votes the summary reads when the database holds votes of several "
                          "(the study was served with other captions, policies or settings); null: the "
                          "database must hold one plan only."},
    )
    confidence: float = field(
        default=0.95,
        metadata={"help": "Coverage of the Wilson score intervals of the summary."},
    )
    agreement_level: str = field(
        default="ordinal",
        metadata={"help": "Level of measurement for Krippendorff's alpha between raters: 'ordinal' (first "
                          "better < tie < second better) or 'nominal' (three unordered outcomes).",
                  "enum": list(AGREEMENT_LEVELS)},
    )
    bt_regularization: float = field(
        default=0.01,
        metadata={"help": "L2 penalty of the Bradley-Terry fit (choix's alpha); keeps strengths finite when "
                          "one policy wins every comparison."},
    )

    def __post_init__(self):
        if self.items_per_rater < 1:
            raise ValueError(f"human_eval.items_per_rater must be >= 1, got {self.items_per_rater}")
        if not 0 <= self.shared_items <= self.items_per_rater:
            raise ValueError(f"human_eval.shared_items must be in [0, items_per_rater={self.items_per_rater}], "
                             f"got {self.shared_items}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"human_eval.confidence must be in (0, 1), got {self.confidence}")
        if self.agreement_level not in AGREEMENT_LEVELS:
            raise ValueError(f"human_eval.agreement_level must be one of {list(AGREEMENT_LEVELS)}, "
                             f"got {self.agreement_level!r}")
        if self.bt_regularization <= 0:
            raise ValueError(f"human_eval.bt_regularization must be > 0, got {self.bt_regularization}")
        if self.policies is not None and len(set(self.policies)) < 2:
            raise ValueError(f"human_eval.policies needs at least two different policies, got {self.policies}")
