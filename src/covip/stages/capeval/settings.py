"""The settings of CapEval-QA (config section `capeval`) and its input error."""


from __future__ import annotations

from dataclasses import dataclass, field

from covip.core.presets import resolve, switch_help
from covip.core.settings import IntervalSettings, ModelStageSettings
from covip.protocol.judging import LETTER_RULES

MISSING_CAPTION_MODES = ("error", "ignore")

FAILED_CALL_MODES = ("as_d", "drop_sample")

TRUNCATED_CAPTION_MODES = ("fail", "judge")


class CapEvalInputError(ValueError):
    """Malformed captions, splits or ground truth; the message names the file or table, row and field."""


@dataclass
class CapEvalSettings(IntervalSettings, ModelStageSettings):
    """Settings of stage 10 (config section `capeval`)."""

    section = "capeval"

    seed_offset: int = field(
        default=0,
        metadata={"help": "Extra key in every judge request's seed; change it to draw a fresh set of sampled judge "
                          "answers (a second judge run) without changing the benchmark seed."},
    )
    max_attempts: int = field(
        default=1,
        metadata={"help": "Judge calls per question: a reply with no readable letter (or a failed call) is asked again "
                          "with a repair instruction up to this many calls in all; 1 (default) keeps the authors' "
                          "protocol, where the first reply counts and an unreadable one is D."},
    )
    one_pass: bool | None = field(
        default=None,
        metadata={"help": "Judge every (condition, policy) caption table of a run in one job per judge, so the judge "
                          "is loaded once and gets every request at once (rule capeval_one_pass), instead of one job "
                          "per table (rule capeval). null (default): one pass for a judge loaded in the job (an "
                          "in-process backend or a stand-in) when capeval is not sharded; one job per table for an "
                          "API or served judge, whose jobs can run side by side on separate GPUs or servers."},
    )
    missing_captions: str = field(
        default="error",
        metadata={"help": "What to do when a test sample has no caption row for a policy: 'error' (default), or "
                          "'ignore' to score only the captioned samples.", "enum": list(MISSING_CAPTION_MODES)},
    )
    truncated_captions: str | None = field(default=None, metadata={"enum": [*TRUNCATED_CAPTION_MODES, None], "help": switch_help(
        "capeval", "truncated_captions", "A caption cut off at the token cap (captions status 'truncated'): 'fail' "
        "(not judged, counted in n_caption_failed) or 'judge' (scored as written, as the authors' notebook does).")})

    letter_match: str | None = field(default=None, metadata={"enum": [*LETTER_RULES, None], "help": switch_help(
        "capeval", "letter_match", "How a judge reply's letter is read: 'exact' (the first \\boxed{} holds one letter "
        "A-D), 'substring' (the authors' code: the expected letter occurs in the first box's text) or 'lenient' (also "
        "replies without a box, for a judge prompt that asks for a bare letter).")})
    failed_calls: str | None = field(default=None, metadata={"enum": [*FAILED_CALL_MODES, None], "help": switch_help(
        "capeval", "failed_calls", "A judge call that failed after its retries: 'as_d' (counted as D) or 'drop_sample' "
        "(the authors' code: its sample is left out of every accuracy); both are reported in n_judge_failed.")})

    def __post_init__(self):
        super().__post_init__()
        self.letter_match = resolve(self.letter_match, "capeval", "letter_match")
        self.failed_calls = resolve(self.failed_calls, "capeval", "failed_calls")
        self.truncated_captions = resolve(self.truncated_captions, "capeval", "truncated_captions")
        if self.letter_match not in LETTER_RULES:
            raise ValueError(f"capeval.letter_match must be one of {list(LETTER_RULES)}, got {self.letter_match!r}")
        if self.failed_calls not in FAILED_CALL_MODES:
            raise ValueError(f"capeval.failed_calls must be one of {list(FAILED_CALL_MODES)}, got {self.failed_calls!r}")
        if self.truncated_captions not in TRUNCATED_CAPTION_MODES:
            raise ValueError(f"capeval.truncated_captions must be one of {list(TRUNCATED_CAPTION_MODES)}, "
                             f"got {self.truncated_captions!r}")
        if self.missing_captions not in MISSING_CAPTION_MODES:
            raise ValueError(
                f"capeval.missing_captions must be one of {list(MISSING_CAPTION_MODES)}, got {self.missing_captions!r}"
            )
