"""The schema of every artifact the workflow writes, declared once.

Each stage writes exactly one of these tables and the next stage reads it back through the same
declaration, so a column that changes type or goes missing is caught at the boundary where it
happened, with the file name, instead of three stages later.
"""

from __future__ import annotations

from covip.core.schemas.benchmark import (
    CONCEPT_EMBEDDINGS,
    CONCEPTS,
    CONTEXTS,
    DIALOGUES,
    FILTER_DECISIONS,
    MCQAS,
    QUERIES,
    SPLIT,
    SPLIT_REPORT,
)
from covip.core.schemas.evaluation import (
    CAPEVAL_ANSWERS,
    CAPEVAL_SUMMARY,
    CAPTIONS,
    CONTROL_CHANGES,
    CONTROL_EFFECTS,
    DIAGNOSTIC_RESPONSES,
    DIAGNOSTIC_SET,
    DIAGNOSTIC_SUMMARY,
    HUMAN_EVAL_AGREEMENT,
    HUMAN_EVAL_PAIRS,
    HUMAN_EVAL_RANKING,
    HUMAN_VOTES,
    JUDGE_AGREEMENT,
    JUDGE_DISAGREEMENTS,
)
from covip.core.schemas.general import GENERAL_SAMPLES, GENERAL_SCORES, GENERAL_SUMMARY, TINY_BENCHMARK
from covip.core.schemas.runs import PLAN, TRAINING_LOG, USAGE
from covip.core.schemas.types import (  # noqa: F401 - the package's public names
    ANSWER_LETTERS,
    FACT,
    HF_IMAGE,
    IMAGE,
    NONE_LETTER,
    NONE_OPTION,
    OPTION_LETTERS,
    OPTIONS,
    PUBLISHED_QUESTION,
    QUESTION,
    TURN,
    ArtifactSchema,
)

ALL = {
    s.name: s
    for s in (
        CONCEPTS, QUERIES, FILTER_DECISIONS, CONCEPT_EMBEDDINGS, CONTEXTS, DIALOGUES, MCQAS, SPLIT, SPLIT_REPORT,
        CAPTIONS, CAPEVAL_ANSWERS, CAPEVAL_SUMMARY, DIAGNOSTIC_SET, DIAGNOSTIC_RESPONSES, DIAGNOSTIC_SUMMARY,
        USAGE, PLAN, TRAINING_LOG, CONTROL_CHANGES, CONTROL_EFFECTS, JUDGE_AGREEMENT, JUDGE_DISAGREEMENTS,
        HUMAN_VOTES, HUMAN_EVAL_PAIRS, HUMAN_EVAL_RANKING, HUMAN_EVAL_AGREEMENT,
        GENERAL_SCORES, GENERAL_SAMPLES, GENERAL_SUMMARY, TINY_BENCHMARK,
    )
}
