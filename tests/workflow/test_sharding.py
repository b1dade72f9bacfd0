"""Sharded API stages: shard arithmetic, and a sharded run's artifacts equal an unsharded run's."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from covip.core import schemas
from covip.core.io import write_artifact
from covip.core.sharding import Shard, ShardError, gather, sample_ordinal, shard_count
from covip.stages.synthesis import sample_id
from support.workflow import copy_workflow, planned_jobs, snakemake


def test_every_sample_is_in_exactly_one_shard():
    for num_samples, size in [(12, 5), (64, 16), (7, 1), (3, 10)]:
        shards = [Shard(k, size) for k in range(shard_count(num_samples, size))]
        for index in range(num_samples):
            assert sample_ordinal(sample_id(index)) == index
            assert sum(s.holds(sample_id(index)) for s in shards) == 1
    assert shard_count(12, 5) == 3 and shard_count(64, 16) == 4 and shard_count(3, 10) == 1


def test_a_row_without_a_synthesis_id_is_named():
    with pytest.raises(ShardError, match=r"contexts row 1: sample_id 'x7'"):
        Shard(0, 4).select([{"sample_id": "s0001"}, {"sample_id": "x7"}], "contexts")


def test_gather_refuses_a_sample_in_two_shards(tmp_path):
    rows = [{"sample_id": "s0001", "context_concept_ids": ["c1", "c2"], "positive_indices": [0],
             "negative_concept_ids": ["c2"], "negative_similarity": [0.5], "embedder": "e"}]
    for name in ("a", "b"):
        write_artifact(rows, tmp_path / f"{name}.parquet", schemas.CONTEXTS)
    with pytest.raises(ShardError, match="s0001"):
        gather([tmp_path / "a.parquet", tmp_path / "b.parquet"], schemas.CONTEXTS, tmp_path / "out.parquet")
    assert sorted(tmp_path.iterdir()) == [tmp_path / "a.parquet", tmp_path / "b.parquet"]  # nothing half-written


def test_gather_keeps_shard_order_and_every_row(tmp_path):
    shards = []
    for k, ids in enumerate([["s0000", "s0001"], [], ["s0005", "s0005", "s0007"]]):
        rows = [{"sample_id": sid, "context_concept_ids": ["c1"], "positive_indices": [0],
                 "negative_concept_ids": [], "negative_similarity": [], "embedder": "e"} for sid in ids]
        write_artifact(rows, tmp_path / f"{k}.parquet", schemas.CONTEXTS)
        shards.append(tmp_path / f"{k}.parquet")
    assert gather(shards, schemas.CONTEXTS, tmp_path / "out.parquet") == 5
    out = pq.read_table(tmp_path / "out.parquet").column("sample_id").to_pylist()
    assert out == ["s0000", "s0001", "s0005", "s0005", "s0007"]


def artifact_tables(outdir: Path) -> dict[str, object]:
    """Every Parquet artifact of a run (not the shards, logs or caches), by relative path."""
    return {
        str(p.relative_to(outdir)): pq.read_table(p)
        for p in sorted(outdir.rglob("*.parquet"))
        if ".shards" not in str(p.parent) and p.relative_to(outdir).parts[0] != "usage"  # one file per job
    }


def test_sharded_stages_write_the_same_rows_as_one_job(tmp_path):
    workdir = copy_workflow(tmp_path)
    (workdir / "whole.yaml").write_text("outdir: whole\nsharding: {shard_size: null}\n")
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
    assert len(list((workdir / "sharded" / "dialogues").glob("dialogues.shards/*.parquet"))) == 3


def test_sharded_captioning_and_judging_equal_one_job(tmp_path):
    """caption and capeval shard per (condition, policy[, judge]); the gathered captions and answers,
    and the summary pooled from them, equal the unsharded run's, empty shards included."""
    workdir = copy_workflow(tmp_path)
    (workdir / "whole.yaml").write_text("outdir: whole\nsharding: {shard_size: null}\n")
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
    shards = sorted((workdir / "sharded" / "captions" / "intact").glob("oracle.shards/*.parquet"))
    sizes = [pq.read_metadata(p).num_rows for p in shards]
    assert len(sizes) == 3 and sum(sizes) == whole["captions/intact/oracle.parquet"].num_rows
    # One log and one usage record per shard, so a failed shard is found and rerun alone.
    assert sorted(p.name for p in (workdir / "sharded" / "logs" / "capeval" / "intact").glob("oracle.lexical_judge.*.log")) == [
        "oracle.lexical_judge.0.log", "oracle.lexical_judge.1.log", "oracle.lexical_judge.2.log",
        "oracle.lexical_judge.summary.log"]
