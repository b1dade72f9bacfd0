"""Sharded API stages through Snakemake: a sharded run's artifacts equal an unsharded run's (the shard
arithmetic itself is tested in tests/core/test_shards.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from support.workflow import copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.integration


def artifact_tables(outdir: Path) -> dict[str, object]:
    """Every Parquet artifact of a run (not the shards, logs or caches), by relative path."""
    return {
        str(p.relative_to(outdir)): pq.read_table(p)
        for p in sorted(outdir.rglob("*.parquet"))
        if ".shards" not in str(p.parent) and p.relative_to(outdir).parts[0] != "usage"  # one file per job
    }


def test_sharded_stages_write_the_same_rows_as_one_job(tmp_path):
    workdir = copy_workflow(tmp_path)
    # One job per table (not one pass over all tables), so two targets need only their own captions.
    (workdir / "whole.yaml").write_text("outdir: whole\nsharding: {shard_size: null}\ncapeval: {one_pass: false}\n")
    (workdir / "sharded.yaml").write_text(
        "outdir: sharded\nsharding: {shard_size: 5, rules: [synthesize_queries, write_dialogues, write_mcqas]}\n"
    )
    target = "splits/train.parquet"
    plan = planned_jobs(snakemake(workdir, "-n", "--configfile", "tiny.yaml", "sharded.yaml", "--", f"sharded/{target}"))
    # 12 samples in shards of 5: three jobs per sharded stage, and one gather each.
    assert {k: plan[k] for k in ("synthesize_queries", "write_dialogues", "write_mcqas")} == {
        "synthesize_queries": 3, "write_dialogues": 3, "write_mcqas": 3}
    assert plan["gather_synthesize_queries"] == plan["gather_write_dialogues"] == plan["gather_write_mcqas"] == 1
    snakemake(workdir, "--configfile", "tiny.yaml", "whole.yaml", "--", f"whole/{target}")
    snakemake(workdir, "--configfile", "tiny.yaml", "sharded.yaml", "--", f"sharded/{target}")
    whole, sharded = artifact_tables(workdir / "whole"), artifact_tables(workdir / "sharded")
    assert set(whole) == set(sharded) and {"queries/queries.parquet", "mcqa/mcqas.parquet", target} <= set(whole)
    for name, table in whole.items():
        assert table.num_rows > 0, name
        assert sharded[name].equals(table), f"{name} differs between the sharded and the unsharded run"
    # The shards are scratch (temp()): gathered into the artifact, then removed.
    assert not list((workdir / "sharded" / "dialogues").glob("dialogues.shards/*.parquet"))


def test_sharded_captioning_and_judging_equal_one_job(tmp_path):
    """caption and capeval shard per (condition, policy[, judge]); the gathered captions and answers,
    and the summary pooled from them, equal the unsharded run's, empty shards included."""
    workdir = copy_workflow(tmp_path)
    # One job per table (not one pass over all tables), so two targets need only their own captions.
    (workdir / "whole.yaml").write_text("outdir: whole\nsharding: {shard_size: null}\ncapeval: {one_pass: false}\n")
    # 12 synthesis ordinals: captions in shards of 4 (3 jobs), answers in shards of 5 (3 jobs); with
    # a 40% test split some shards hold no test sample at all.
    (workdir / "sharded.yaml").write_text(
        "outdir: sharded\nsharding: {shard_size: 5, rules: [caption, capeval], sizes: {caption: 4}}\n"
    )
    targets = [f"capeval/{condition}/{policy}/lexical_judge/summary.parquet"
               for condition, policy in [("intact", "oracle"), ("swapped_context", "blind")]]
    plan = planned_jobs(snakemake(workdir, "-n", "--configfile", "tiny.yaml", "sharded.yaml", "--",
                                  *[f"sharded/{t}" for t in targets]))
    assert {k: plan.get(k) for k in ("caption", "gather_caption", "capeval", "gather_capeval", "summarize_capeval")} == {
        "caption": 6, "gather_caption": 2, "capeval": 6, "gather_capeval": 2, "summarize_capeval": 2}
    snakemake(workdir, "--configfile", "tiny.yaml", "whole.yaml", "--", *[f"whole/{t}" for t in targets])
    snakemake(workdir, "--configfile", "tiny.yaml", "sharded.yaml", "--", *[f"sharded/{t}" for t in targets])
    whole, sharded = artifact_tables(workdir / "whole"), artifact_tables(workdir / "sharded")
    compared = [name for name in whole if name.startswith(("captions/", "capeval/"))]
    assert len(compared) == 6  # 2 captions, 2 answers, 2 summaries
    for name in compared:
        assert whole[name].num_rows > 0, name
        # Latency differs from run to run; every other column must be equal.
        left, right = (t.drop_columns([c for c in ("latency_s",) if c in t.column_names]) for t in (whole[name], sharded[name]))
        assert right.equals(left), f"{name} differs between the sharded and the unsharded run"
    # The shards are scratch (temp()): gathered, then removed.
    assert not list((workdir / "sharded" / "captions" / "intact").glob("oracle.shards/*.parquet"))
    # One log and one usage record per shard, so a failed shard is found and rerun alone.
    assert sorted(p.name for p in (workdir / "sharded" / "logs" / "capeval" / "intact").glob("oracle.lexical_judge.*.log")) == [
        "oracle.lexical_judge.0.log", "oracle.lexical_judge.1.log", "oracle.lexical_judge.2.log",
        "oracle.lexical_judge.summary.log"]
