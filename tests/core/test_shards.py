"""Shards of per-sample stages (covip.core.sharding): every sample in one shard, gathers in order."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from covip.core import schemas
from covip.core.io import write_artifact
from covip.core.sharding import Shard, ShardError, gather, sample_ordinal, shard_count
from covip.stages.synthesis import sample_id


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
