"""Reading and writing artifacts: Parquet checked against its declared schema, written atomically."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from covip.schemas import ArtifactSchema


class ArtifactError(ValueError):
    """A table does not match its declared schema; the message names the file, row and field."""


class BadImageError(ValueError):
    """An image that cannot be decoded; the message names where it came from."""


def _locate_bad_row(rows: list[Mapping], schema: ArtifactSchema, where: str) -> ArtifactError:
    for index, row in enumerate(rows):
        for field in schema.schema:
            try:
                pa.array([row.get(field.name)], type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as error:
                ident = row.get("sample_id") or row.get("concept_id") or ""
                return ArtifactError(
                    f"{where}: row {index} ({ident}) field '{field.name}' does not fit {field.type}: {error}"
                )
    return ArtifactError(f"{where}: rows do not fit schema '{schema.name}'")


def validate_table(table: pa.Table, schema: ArtifactSchema, where: str) -> pa.Table:
    """Return `table` cast to the declared schema, or raise an error naming file, row and field."""
    missing = [name for name in schema.columns if name not in table.column_names]
    if missing:
        raise ArtifactError(f"{where}: missing column(s) {missing} of artifact '{schema.name}'")
    extra = [name for name in table.column_names if name not in schema.columns]
    if extra:
        raise ArtifactError(f"{where}: unexpected column(s) {extra} for artifact '{schema.name}'")
    table = table.select(schema.columns)
    try:
        table = table.cast(schema.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
        for field in schema.schema:
            if not table.schema.field(field.name).type.equals(field.type):
                raise ArtifactError(
                    f"{where}: field '{field.name}' has type {table.schema.field(field.name).type}, "
                    f"expected {field.type} ({error})"
                ) from error
        raise ArtifactError(f"{where}: {error}") from error
    for name in schema.required:
        column = table.column(name)
        if column.null_count:
            row = next(i for i, value in enumerate(column.is_null().to_pylist()) if value)
            ident = _row_ident(table, row)
            raise ArtifactError(f"{where}: row {row}{ident} field '{name}' is null but required")
    return table.replace_schema_metadata(schema.arrow_schema().metadata)


def _row_ident(table: pa.Table, row: int) -> str:
    for key in ("sample_id", "concept_id"):
        if key in table.column_names:
            return f" ({key}={table.column(key)[row].as_py()})"
    return ""


def to_table(rows: Iterable[Mapping] | pa.Table, schema: ArtifactSchema, where: str) -> pa.Table:
    if isinstance(rows, pa.Table):
        return validate_table(rows, schema, where)
    rows = list(rows)
    for index, row in enumerate(rows):
        unknown = set(row) - set(schema.columns)
        if unknown:
            raise ArtifactError(f"{where}: row {index} has unknown field(s) {sorted(unknown)}")
    try:
        table = pa.Table.from_pylist(rows, schema=schema.schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        raise _locate_bad_row(rows, schema, where) from None
    return validate_table(table, schema, where)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it is renamed to `path`, so a
    reader (or a rerun after a crash) sees the old file or the whole new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (see `atomic_output`)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_artifact(rows: Iterable[Mapping] | pa.Table, path: str | os.PathLike, schema: ArtifactSchema) -> pa.Table:
    """Validate `rows` against `schema` and write them to `path` atomically (temp file, then rename)."""
    path = Path(path)
    table = to_table(rows, schema, str(path))
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return table


def read_artifact(path: str | os.PathLike, schema: ArtifactSchema) -> pa.Table:
    """Read a Parquet artifact and check it against the schema it was declared with."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise ArtifactError(f"{path}: cannot read as Parquet ({error})") from error
    return validate_table(table, schema, str(path))


def read_rows(path: str | os.PathLike, schema: ArtifactSchema) -> list[dict]:
    return read_artifact(path, schema).to_pylist()


# ---------------------------------------------------------------------------------------------------
# Images


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=3)
    return buffer.getvalue()


def decode_image(data: bytes | None, where: str, mode: str | None = None) -> Image.Image:
    """Decode image bytes, or raise BadImageError naming `where` (file, row, field)."""
    if not data:
        raise BadImageError(f"{where}: image is empty")
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise BadImageError(f"{where}: cannot decode image ({error})") from error
    return image.convert(mode) if mode else image


def load_image_file(path: str | os.PathLike, mode: str | None = None) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert(mode) if mode else image.copy()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise BadImageError(f"{path}: cannot read image ({error})") from error
