"""Settings of stage 11 (config section `diagnostics`) and the names every diagnostics module shares."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from covip.core.metrics import ITR_MATCHES, LSD_BOX_STYLES, LSD_TOKENS
from covip.core.presets import resolve, switch_help
from covip.core.settings import IntervalSettings, ModelStageSettings
from covip.protocol.judging import VERDICT_RULES
from covip.protocol.requests import ANSWER_SAMPLING

TASKS = ("lsd", "lar", "itr")
MODES = ("direct", "cag")
QUESTIONS_PROMPT = "diagnostic_questions"
HUB_COLUMNS = ("images_context", "dialogues_context", "query_image", "answer")
# The box command the LSD question asks for, per `lsd_box` (the authors' question writes '//boxed').
BOX_MARKER = {"latex": "\\boxed", "slashes": "//boxed"}
MAX_TOKENS = 1024  # the authors' cap on CAG captions and on every diagnostic answer
SCORER = {"lsd": "token_f1", "lar": "lar_judge", "itr": "keyword"}


class DiagnosticError(ValueError):
    """Bad diagnostic input (pool, set file, response rows); the message names file, row and field."""


def _greedy():
    return {"temperature": 0.0, "max_tokens": MAX_TOKENS}


def _answer_sampling():
    # SPEC §4: the authors sample downstream answers at T=0.7, top-p 0.8, top-k 20, presence 1.5.
    return {**ANSWER_SAMPLING, "max_tokens": MAX_TOKENS}


@dataclass
class DiagnosticSettings(IntervalSettings, ModelStageSettings):
    """Settings of stage 11 (config section `diagnostics`)."""

    section = "diagnostics"

    items_per_task: int = field(default=24, metadata={"help": "Items generated per task (lsd, lar, itr)."})
    dialogues_per_item: int = field(default=4, metadata={"help": "Dialogues (each with its image) in an item's context."})
    target_mentions_min: int = field(default=2, metadata={"help": "Fewest dialogues about the target person (each a different date and place)."})
    target_mentions_max: int = field(default=3, metadata={"help": "Most dialogues about the target person; at most dialogues_per_item - 1, so someone else is always in the context."})
    image_size: int = field(default=256, metadata={"help": "Side, in pixels, of every composited context and query image."})
    prefer_category: str = field(default="person", metadata={"help": "Concept category the people are drawn from; falls back to the whole pool when it has too few concepts."})
    name_locale: str = field(default="en_US", metadata={"help": "Faker locale of the fictional names and places."})
    start_date: str = field(default="2023-01-01", metadata={"help": "Earliest encounter date (ISO)."})
    span_days: int = field(default=900, metadata={"help": "Encounter dates fall within this many days after start_date."})
    min_gap_days: int = field(default=14, metadata={"help": "Smallest gap between two encounters with the target, so the most recent one is unambiguous."})
    keyword_style: str = field(default="consonants", metadata={"help": "ITR keywords: 'consonants' (three capital consonants, like SKS) or 'pseudoword' (a pronounceable made-up word, like Tovek)."})
    distractors: bool = field(default=True, metadata={"help": "LAR: give the other dialogues other actions; ITR: give the non-target dialogues other keywords. Off, only the answer's dialogue has one."})
    caption_sampling: dict = field(default_factory=_greedy, metadata={"help": "Sampling of the CAG caption (SPEC §4: greedy, up to 1024 tokens as the authors)."})
    answer_sampling: dict = field(default_factory=_answer_sampling, metadata={"help": "Sampling of every answer, direct or CAG (SPEC §4: T 0.7, top-p 0.8, top-k 20, presence penalty 1.5, up to 1024 tokens as the authors)."})
    lsd_box: str | None = field(default=None, metadata={"enum": [*LSD_BOX_STYLES, None], "help": switch_help("diagnostics", "lsd_box", "LSD: 'latex' asks for the answer in \\boxed{} and reads the last \\boxed{} or //boxed{}; 'slashes' asks for //boxed{} as the authors' question does and reads it as their code (the last //boxed{...}, else the text after the last '//'). Built into the set's question.")})
    lsd_tokens: str = field(default="whitespace", metadata={"enum": list(LSD_TOKENS), "help": "LSD F1 tokens: 'whitespace' (the authors': lower-cased, split on whitespace, punctuation kept) or 'words' (punctuation-insensitive words, articles dropped)."})
    lar_verdict: str | None = field(default=None, metadata={"enum": [*VERDICT_RULES, None], "help": switch_help("diagnostics", "lar_verdict", "LAR verdict: 'strict' (the leading Correct or Wrong; 'incorrect' is wrong) or 'substring' (the authors': 'correct' anywhere in the lower-cased reply, so 'Incorrect' counts as correct). An unreadable verdict scores 0 either way, as the authors count it.")})
    itr_match: str = field(default="substring", metadata={"enum": list(ITR_MATCHES), "help": "ITR: 'substring' (the authors': the keyword, case-sensitive, anywhere in the reply) or 'word' (a whole word, any case)."})

    def __post_init__(self):
        super().__post_init__()
        self.lsd_box = resolve(self.lsd_box, "diagnostics", "lsd_box")
        self.lar_verdict = resolve(self.lar_verdict, "diagnostics", "lar_verdict")
        for name, allowed in (("lsd_box", LSD_BOX_STYLES), ("lsd_tokens", LSD_TOKENS), ("lar_verdict", VERDICT_RULES),
                              ("itr_match", ITR_MATCHES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"diagnostics.{name} must be one of {list(allowed)}, got {getattr(self, name)!r}")
        if not 1 <= self.items_per_task <= 100_000:
            raise ValueError(f"diagnostics.items_per_task must be in [1, 100000], got {self.items_per_task}")
        if not 2 <= self.dialogues_per_item <= 16:
            raise ValueError(f"diagnostics.dialogues_per_item must be in [2, 16], got {self.dialogues_per_item}")
        if not 1 <= self.target_mentions_min <= self.target_mentions_max <= self.dialogues_per_item - 1:
            raise ValueError(
                "diagnostics.target_mentions_min/target_mentions_max must satisfy 1 <= min <= max <= "
                f"dialogues_per_item - 1 ({self.dialogues_per_item - 1}), got {self.target_mentions_min}/{self.target_mentions_max}"
            )
        if not 64 <= self.image_size <= 2048:
            raise ValueError(f"diagnostics.image_size must be in [64, 2048], got {self.image_size}")
        try:
            dt.date.fromisoformat(self.start_date)
        except (TypeError, ValueError):
            raise ValueError(f"diagnostics.start_date must be an ISO date (YYYY-MM-DD), got {self.start_date!r}") from None
        if self.min_gap_days < 1:
            raise ValueError(f"diagnostics.min_gap_days must be >= 1, got {self.min_gap_days}")
        if self.span_days < self.min_gap_days * self.target_mentions_max:
            raise ValueError(
                f"diagnostics.span_days ({self.span_days}) must be at least min_gap_days * target_mentions_max "
                f"({self.min_gap_days * self.target_mentions_max}) so the target's dates fit"
            )
        if self.keyword_style not in ("consonants", "pseudoword"):
            raise ValueError(f"diagnostics.keyword_style must be 'consonants' or 'pseudoword', got {self.keyword_style!r}")
        for name in ("caption_sampling", "answer_sampling"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"diagnostics.{name} must be a mapping of sampling parameters")
