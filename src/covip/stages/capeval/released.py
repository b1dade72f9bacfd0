"""CapEval-QA on the authors' released ground truth (QAS_GT_test.json), for captions made elsewhere."""


from __future__ import annotations

import os
from collections.abc import Mapping

from covip.clients.cached import CachedChatModel
from covip.core.formats import load_qas_gt
from covip.prompts import PromptBook
from covip.stages.capeval.inputs import items_from_records, pair_captions
from covip.stages.capeval.judging import judge_pairs
from covip.stages.capeval.settings import CapEvalInputError, CapEvalSettings
from covip.stages.capeval.summary import summarize_capeval


def score_released_captions(
    captions: Mapping[str, str | None],
    qas_gt,
    judge: CachedChatModel,
    prompts: PromptBook,
    settings: CapEvalSettings,
    seed: int,
    policy_name: str,
    *,
    judge_name: str = "judge",
    policy_identity: str | None = None,
    policy_stand_in: bool = False,
    progress_file=None,
) -> tuple[list[dict], list[dict]]:
    """Score captions against the authors' released ground truth; (answer rows, summary rows).

    `captions` maps the ground truth's sample keys ('sample_N') to caption text (None: failed);
    `qas_gt` is a path to QAS_GT_test.json or records from covip.core.formats.load_qas_gt.
    """
    records = load_qas_gt(qas_gt) if isinstance(qas_gt, (str, os.PathLike)) else list(qas_gt)
    items = items_from_records(records)
    unknown = sorted(set(captions) - set(items))
    if unknown:
        example = next(iter(items), "sample_0")
        raise CapEvalInputError(
            f"captions: {len(unknown)} sample key(s) not in the ground truth (first: {unknown[:5]}); keys look like '{example}'"
        )
    identity = policy_identity or policy_name
    rows = [
        {
            "policy": policy_name,
            "sample_id": sample_id,
            "caption": caption,
            "status": "ok" if caption is not None else "failed",
            "model_identity": identity,
            "stand_in": policy_stand_in,
        }
        for sample_id, caption in captions.items()
    ]
    pairs = pair_captions(rows, items, settings, "captions")
    answers = judge_pairs(pairs, judge, prompts, settings, seed, judge_name, progress_file)
    summary = summarize_capeval(
        answers, settings.n_bootstrap, seed, confidence=settings.confidence, policy_identities={policy_name: identity},
        failed_calls=settings.failed_calls,
    )
    return answers, summary
