"""Artifact IO: schema checks on write and read name the file, row and field; writes are atomic."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from covip.core import schemas
from covip.core.io import (
    ArtifactError,
    BadImageError,
    decode_image,
    encode_png,
    iter_rows,
    read_artifact,
    read_columns,
    read_rows,
    write_artifact,
    write_artifact_stream,
)


def decision(sample_id="s0001", kept=True, **overrides):
    row = {"sample_id": sample_id, "kept": kept, "reason": "", "detail": "", "verifier": "v"}
    row.update(overrides)
    return row


def test_round_trip_keeps_rows_and_types(tmp_path):
    path = tmp_path / "d.parquet"
    write_artifact([decision(), decision("s0002", False, reason="verifier_no")], path, schemas.FILTER_DECISIONS)
    table = read_artifact(path, schemas.FILTER_DECISIONS)
    assert table.column("reason").to_pylist() == ["", "verifier_no"]
    assert table.schema.field("kept").type == pa.bool_()


def test_write_error_names_row_and_field(tmp_path):
    rows = [decision(), decision("s0002", kept="maybe")]
    with pytest.raises(ArtifactError, match=r"row 1 \(s0002\) field 'kept'"):
        write_artifact(rows, tmp_path / "d.parquet", schemas.FILTER_DECISIONS)
    with pytest.raises(ArtifactError, match=r"row 0 \(sample_id=s0001\) field 'verifier' is null"):
        write_artifact([decision(verifier=None)], tmp_path / "d.parquet", schemas.FILTER_DECISIONS)
    with pytest.raises(ArtifactError, match="unknown field"):
        write_artifact([decision(extra=1)], tmp_path / "d.parquet", schemas.FILTER_DECISIONS)
    assert not list(tmp_path.iterdir()), "a failed write must leave nothing behind"


def test_read_checks_the_declared_schema_and_names_the_file(tmp_path):
    path = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"sample_id": ["s1"], "kept": ["yes"]}), path)
    with pytest.raises(ArtifactError, match=r"wrong.parquet: missing column"):
        read_artifact(path, schemas.FILTER_DECISIONS)
    garbage = tmp_path / "half.parquet"
    garbage.write_bytes(b"PAR1 not really")
    with pytest.raises(ArtifactError, match="half.parquet: cannot read"):
        read_artifact(garbage, schemas.FILTER_DECISIONS)


def test_overwrite_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "d.parquet"
    write_artifact([decision()], path, schemas.FILTER_DECISIONS)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pq, "write_table", crash)
    with pytest.raises(KeyboardInterrupt):
        write_artifact([decision("s9")], path, schemas.FILTER_DECISIONS)
    monkeypatch.undo()
    assert read_artifact(path, schemas.FILTER_DECISIONS).column("sample_id").to_pylist() == ["s0001"]
    assert [p.name for p in tmp_path.iterdir()] == ["d.parquet"]


def test_a_target_that_is_not_a_regular_file_is_refused_and_left_alone(tmp_path):
    # An atomic write renames a new file onto its target: onto /dev/null it would replace the device
    # (a test once did, and every later `>/dev/null` of a service user failed).
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for target in (fifo, tmp_path):
        with pytest.raises(ArtifactError, match="not a regular file"):
            write_artifact([decision()], target, schemas.FILTER_DECISIONS)
        with pytest.raises(ArtifactError, match="not a regular file"):
            write_artifact_stream([decision()], target, schemas.FILTER_DECISIONS)
    assert fifo.exists() and not fifo.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe"]  # no temporary file left behind


def test_written_artifacts_get_the_mode_of_a_plain_open(tmp_path):
    umask = os.umask(0o027)
    try:
        write_artifact([decision()], tmp_path / "d.parquet", schemas.FILTER_DECISIONS)
    finally:
        os.umask(umask)
    assert (tmp_path / "d.parquet").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


def test_bad_image_names_where():
    good = encode_png(Image.new("RGB", (4, 4), "red"))
    assert decode_image(good, "x").size == (4, 4)
    with pytest.raises(BadImageError, match="queries.parquet row 3 field 'image'"):
        decode_image(good[:20], "queries.parquet row 3 field 'image'")


def test_streamed_write_matches_whole_write_and_reads_back_in_batches(tmp_path):
    rows = [decision(f"s{i:04d}", i % 3 == 0, detail="x" * i) for i in range(70)]
    write_artifact(rows[:20], tmp_path / "whole.parquet", schemas.FILTER_DECISIONS)
    write_artifact_stream(iter(rows[:20]), tmp_path / "streamed.parquet", schemas.FILTER_DECISIONS, batch_rows=32)
    # Up to one batch, the bytes are the same as write_artifact's: switching a stage to streaming
    # leaves small outputs (and their Snakemake checksums) unchanged.
    assert (tmp_path / "whole.parquet").read_bytes() == (tmp_path / "streamed.parquet").read_bytes()
    assert write_artifact_stream(iter(rows), tmp_path / "big.parquet", schemas.FILTER_DECISIONS, batch_rows=32) == 70
    assert pq.ParquetFile(tmp_path / "big.parquet").num_row_groups == 3
    batches = list(iter_rows(tmp_path / "big.parquet", schemas.FILTER_DECISIONS, batch_rows=32))
    assert [len(b) for b in batches] == [32, 32, 6]
    assert [r for b in batches for r in b] == read_rows(tmp_path / "big.parquet", schemas.FILTER_DECISIONS) == rows
    write_artifact_stream(iter([]), tmp_path / "empty.parquet", schemas.FILTER_DECISIONS)
    assert read_rows(tmp_path / "empty.parquet", schemas.FILTER_DECISIONS) == []


def test_streamed_write_error_names_the_row_in_the_whole_table_and_leaves_nothing(tmp_path):
    path = tmp_path / "d.parquet"
    write_artifact([decision()], path, schemas.FILTER_DECISIONS)
    before = path.read_bytes()
    rows = [decision(f"s{i:04d}") for i in range(40)] + [decision("s9999", verifier=None)]
    with pytest.raises(ArtifactError, match=r"row 40 \(sample_id=s9999\) field 'verifier' is null"):
        write_artifact_stream(iter(rows), path, schemas.FILTER_DECISIONS, batch_rows=16)
    assert path.read_bytes() == before, "a failed streamed write must leave the old file in place"
    assert [p.name for p in tmp_path.iterdir()] == ["d.parquet"]


def test_streamed_read_checks_every_batch_and_names_the_row(tmp_path):
    path = tmp_path / "d.parquet"
    table = pa.Table.from_pylist([decision(f"s{i:04d}") for i in range(40)] + [decision("s9999", kept=None)])
    pq.write_table(table, path, row_group_size=16)
    batches = iter_rows(path, schemas.FILTER_DECISIONS, batch_rows=16)
    assert len(next(batches)) == 16
    with pytest.raises(ArtifactError, match=r"row 40 \(sample_id=s9999\) field 'kept' is null but required"):
        list(batches)


def test_read_columns_leaves_the_rest_on_disk_but_checks_the_file(tmp_path):
    path = tmp_path / "d.parquet"
    write_artifact([decision(), decision("s0002", False)], path, schemas.FILTER_DECISIONS)
    assert read_columns(path, schemas.FILTER_DECISIONS, ["sample_id", "kept"]) == [
        {"sample_id": "s0001", "kept": True}, {"sample_id": "s0002", "kept": False}
    ]
    with pytest.raises(ValueError, match="no column"):
        read_columns(path, schemas.FILTER_DECISIONS, ["image"])
    pq.write_table(pa.table({"sample_id": ["s1"], "kept": [True]}), tmp_path / "short.parquet")
    with pytest.raises(ArtifactError, match=r"short.parquet: missing column\(s\) \['reason'"):
        read_columns(tmp_path / "short.parquet", schemas.FILTER_DECISIONS, ["sample_id"])


def test_streaming_holds_one_row_group_of_arrow_memory(tmp_path):
    """iter_rows reads a row group at a time: the arrow pool does not grow with the rows already read
    (a single iter_batches over the file kept every row group's buffers, +11 MB per 64 query images)."""
    blob_schema = schemas.ArtifactSchema("blobs", pa.schema([("sample_id", pa.string()), ("blob", pa.binary())]), "test")
    path = tmp_path / "blobs.parquet"
    with pq.ParquetWriter(path, blob_schema.schema) as writer:
        for group in range(12):
            rows = [{"sample_id": f"s{group * 4 + k:04d}", "blob": os.urandom(1_000_000)} for k in range(4)]  # incompressible, like PNGs
            writer.write_table(pa.Table.from_pylist(rows, blob_schema.schema))
    baseline = pa.total_allocated_bytes()
    peak, seen = 0, 0
    for batch in iter_rows(path, blob_schema, batch_rows=4):
        seen += len(batch)
        peak = max(peak, pa.total_allocated_bytes() - baseline)
    assert seen == 48
    # Flat at ~16 MB (a row group read, its copy checked against the schema); all 12 groups are 48 MB.
    assert peak < 30_000_000, f"arrow held {peak / 1e6:.0f} MB while streaming 4 MB row groups"
