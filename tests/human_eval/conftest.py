"""A run folder for the human-evaluation tests, built in-process: the small real test split of
`benchmark_splits`, captions of three reference policies (one caption deliberately failed), and the
lexical judge's CapEval-QA answers, laid out as a workflow run writes them."""

from __future__ import annotations

import io

import pytest

from covip.core import schemas
from covip.core.io import write_artifact

from support.study_data import FAILED_SAMPLE_POLICY, JUDGE, POLICIES, SEED, StudyRun, write_run


@pytest.fixture(scope="session")
def study_run(benchmark_splits, prompts, tmp_path_factory) -> StudyRun:
    from covip.clients.registry import ModelRegistry
    from covip.stages.capeval import CapEvalSettings, judge_captions
    from covip.stages.captioning import CaptioningSettings, caption_samples

    _, test = benchmark_splits
    registry = ModelRegistry({"oracle": {"backend": "reference_oracle"}, "blind": {"backend": "reference_blind"},
                              "context_dump": {"backend": "reference_context_dump"},
                              JUDGE: {"backend": "local_lexical_judge"}})
    quiet = io.StringIO()
    captions = {policy: caption_samples(test, policy, registry.chat(policy), prompts, CaptioningSettings(), SEED,
                                        progress_file=quiet) for policy in POLICIES}
    failed_sample = test[0]["sample_id"]
    for row in captions[FAILED_SAMPLE_POLICY]:
        if row["sample_id"] == failed_sample:
            row.update(status="failed", caption=None, error="injected failure for the human-evaluation tests")
    answers = []
    for policy in POLICIES:
        answers += judge_captions(captions[policy], test, registry.chat(JUDGE), prompts, CapEvalSettings(), SEED, JUDGE,
                                  progress_file=quiet)
    outdir = tmp_path_factory.mktemp("human_eval_run")
    write_run(outdir, test, captions)
    for policy in POLICIES:
        rows = [row for row in answers if row["policy"] == policy]
        write_artifact(rows, outdir / "capeval" / "intact" / policy / JUDGE / "answers.parquet", schemas.CAPEVAL_ANSWERS)
    return StudyRun(outdir, test, captions, answers, failed_sample)
