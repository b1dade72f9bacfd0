"""Rule human_eval_summary in the workflow: absent without votes, wired into `all` and the report with
them, and run for real by Snakemake (summary, then report) on a votes database and CapEval answers laid
out as a run's."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest
import yaml
from support.workflow import copy_workflow, planned_jobs, snakemake

from covip.core import schemas
from covip.human_eval.settings import HumanEvalSettings
from covip.human_eval.store import VoteStore
from covip.human_eval.study import load_study
from covip.core.io import write_artifact

from support.study_data import JUDGE, POLICIES, SEED

pytestmark = pytest.mark.integration

REPORT_INPUTS = {"capeval_summary.parquet": schemas.CAPEVAL_SUMMARY, "diagnostic_summary.parquet": schemas.DIAGNOSTIC_SUMMARY,
                 "control_effects.parquet": schemas.CONTROL_EFFECTS, "control_changes.parquet": schemas.CONTROL_CHANGES,
                 "judge_agreement.parquet": schemas.JUDGE_AGREEMENT,
                 "judge_disagreements.parquet": schemas.JUDGE_DISAGREEMENTS,
                 "general_summary.parquet": schemas.GENERAL_SUMMARY}  # tiny.yaml runs a general benchmark


def _overlay(workdir, **human_eval):
    (workdir / "human.yaml").write_text(yaml.safe_dump({"human_eval": {"policies": list(POLICIES), **human_eval}}))
    return ("--configfile", "tiny.yaml", "human.yaml")


def _votes_preferring_oracle(study_run, path, raters=("ana", "ben")):
    """Votes as raters who always prefer the oracle's caption (and tie otherwise) would cast."""
    settings = HumanEvalSettings(items_per_rater=6, shared_items=3)
    plan = load_study(study_run.outdir, POLICIES, settings, SEED).plan
    store = VoteStore(path)
    for rater in raters:
        store.add_rater(rater)
        for item in plan.for_rater(rater):
            choice = "A" if item.policy_a == "oracle" else "B" if item.policy_b == "oracle" else "tie"
            store.record_vote(rater, plan.version, item.item_id, item.position, item.sample_id, item.policy_a,
                              item.policy_b, choice, choice)
    return settings


def test_the_rule_is_absent_until_votes_exist_then_joins_all_and_the_report(study_run, tmp_path):
    workdir = copy_workflow(tmp_path)
    args = _overlay(workdir, votes="votes/votes.sqlite")
    missing = snakemake(workdir, "-n", *args)
    assert "human_eval_summary" not in planned_jobs(missing)
    assert "votes/votes.sqlite does not exist yet" in missing.stderr
    VoteStore(workdir / "votes" / "votes.sqlite")
    present = snakemake(workdir, "-n", *args)
    assert planned_jobs(present)["human_eval_summary"] == 1
    assert "results/report/human_eval.png" in present.stdout + present.stderr


def test_snakemake_runs_the_summary_and_the_report_shows_it(study_run, tmp_path):
    workdir = copy_workflow(tmp_path)
    settings = _votes_preferring_oracle(study_run, workdir / "votes.sqlite")
    for policy in POLICIES:
        answers = study_run.outdir / "capeval" / "intact" / policy / JUDGE / "answers.parquet"
        target = workdir / "results" / "capeval" / "intact" / policy / JUDGE / "answers.parquet"
        target.parent.mkdir(parents=True)
        shutil.copy(answers, target)
    # The report's other inputs, empty: this run makes the summary and the report, nothing upstream.
    for name, schema in REPORT_INPUTS.items():
        write_artifact([], workdir / "results" / "report" / name, schema)
    args = _overlay(workdir, votes="votes.sqlite", items_per_rater=settings.items_per_rater,
                    shared_items=settings.shared_items)
    snakemake(workdir, *args, "--allowed-rules", "human_eval_summary", "report", "--", "results/report/summary.md")
    out = workdir / "results" / "human_eval"
    assert pq.read_table(out / "votes.parquet").num_rows == 12
    ranking = pq.read_table(out / "ranking.parquet").to_pylist()
    assert [r["policy"] for r in ranking if r["criterion"] == "context"][0] == "oracle"
    pairs = {(r["criterion"], r["policy_x"], r["policy_y"]): r for r in pq.read_table(out / "pairs.parquet").to_pylist()}
    for (criterion, x, y), row in pairs.items():
        if "oracle" in (x, y):
            assert row["x_wins" if x == "oracle" else "y_wins"] == row["n_votes"]
    agreement = pq.read_table(out / "agreement.parquet").to_pylist()
    alpha = next(r for r in agreement if r["measure"] == "krippendorff_alpha" and r["criterion"] == "context")
    assert alpha["value"] == pytest.approx(1.0) and alpha["n_raters"] == 2 and alpha["n_units"] >= 3
    assert "human_eval_summary finished" in (workdir / "results" / "logs" / "human_eval_summary.log").read_text()
    summary = (workdir / "results" / "report" / "summary.md").read_text()
    assert "## Human evaluation: pairwise caption preference" in summary and "1. oracle (+" in summary
    assert (workdir / "results" / "report" / "human_eval.png").stat().st_size > 0
