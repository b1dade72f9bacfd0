"""Reading and writing artifacts: Parquet checked against its declared schema, written atomically."""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from covip.core.schemas import ArtifactSchema


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


def _temp_beside(path: Path, suffix: str) -> str:
    """A new temporary file next to `path`, to be renamed onto it. Refuses a `path` that is not a
    regular file (renaming onto /dev/null would replace the device), and gives the file the mode a
    plain `open` would (mkstemp's 0600 would hide results from the rest of a cluster group)."""
    if path.exists() and not path.is_file():
        raise ArtifactError(f"{path}: not a regular file; an artifact is written by renaming a new file onto it")
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds it is renamed to `path`, so a
    reader (or a rerun after a crash) sees the old file or the whole new one, never half of one."""
    path = Path(path)
    tmp = _temp_beside(path, ".tmp" + path.suffix)
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
# Streaming: tables with images grow with the number of samples, so the stages that hold them read
# and write them a bounded number of rows at a time (BENCHMARKS.md, memory).

STREAM_ROWS = 64  # rows per streamed batch and per written row group (64 query images: ~10 MB)


def _open_parquet(path: str | os.PathLike) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise ArtifactError(f"{path}: cannot read as Parquet ({error})") from error


def read_columns(path: str | os.PathLike, schema: ArtifactSchema, columns: Sequence[str]) -> list[dict]:
    """Rows of an artifact with only `columns` (e.g. everything but the images), checked against the
    declared schema: the file must have every declared column, the chosen ones are cast and their
    required fields must be set."""
    unknown = [name for name in columns if name not in schema.columns]
    if unknown:
        raise ValueError(f"{path}: artifact '{schema.name}' has no column(s) {unknown}")
    present = _open_parquet(path).schema_arrow.names
    missing = [name for name in schema.columns if name not in present]
    if missing:
        raise ArtifactError(f"{path}: missing column(s) {missing} of artifact '{schema.name}'")
    try:
        table = pq.read_table(path, columns=list(columns))
    except (OSError, pa.ArrowInvalid) as error:
        raise ArtifactError(f"{path}: cannot read as Parquet ({error})") from error
    subset = ArtifactSchema(
        schema.name, pa.schema([schema.schema.field(name) for name in columns]), schema.description,
        tuple(name for name in schema.required if name in columns),
    )
    return validate_table(table, subset, str(path)).to_pylist()


def iter_rows(
    path: str | os.PathLike, schema: ArtifactSchema, batch_rows: int = STREAM_ROWS
) -> Iterator[list[dict]]:
    """An artifact's rows in order, `batch_rows` at a time, each batch checked like `read_artifact`
    (errors name the file and the row's position in the whole file)."""
    source = _open_parquet(path)
    start = 0
    # One reader per row group: a single `iter_batches` over the whole file keeps the buffers of every
    # row group it has read (pyarrow 26: +11 MB of pool memory per 64-image batch of queries, so a
    # 4K-sample table grew filtering's peak by 600 MB); per row group the pool stays flat.
    batches = (
        batch
        for group in range(source.metadata.num_row_groups)
        for batch in source.iter_batches(batch_size=batch_rows, row_groups=[group])
    )
    for batch in batches:
        table = pa.Table.from_batches([batch])
        try:
            table = validate_table(table, schema, str(path))
        except ArtifactError as error:
            raise ArtifactError(_shift_row(str(error), start)) from error
        start += table.num_rows
        yield table.to_pylist()


def _shift_row(message: str, offset: int) -> str:
    """Renumber 'row N' in a batch's error message to the row's position in the file."""
    return re.sub(r"\brow (\d+)", lambda m: f"row {int(m[1]) + offset}", message, count=1)


class ArtifactWriter:
    """Write an artifact in row groups as rows come, atomically: batches are checked against the
    schema and appended to a temporary file that replaces `path` only when the writer closes without
    error. A table of at most `batch_rows` rows comes out byte-identical to `write_artifact`'s."""

    def __init__(self, path: str | os.PathLike, schema: ArtifactSchema, batch_rows: int = STREAM_ROWS):
        self.path, self.schema, self.batch_rows = Path(path), schema, batch_rows
        self.num_rows = 0
        self._pending: list[Mapping] = []
        self._writer: pq.ParquetWriter | None = None
        self._tmp: str | None = None

    def __enter__(self) -> "ArtifactWriter":
        self._tmp = _temp_beside(self.path, ".tmp")
        return self

    def write(self, rows: Iterable[Mapping]) -> None:
        for row in rows:
            self._pending.append(row)
            if len(self._pending) >= self.batch_rows:
                self._flush()

    def _flush(self) -> None:
        if not self._pending and self._writer is not None:
            return
        try:
            table = to_table(self._pending, self.schema, str(self.path))
        except ArtifactError as error:
            raise ArtifactError(_shift_row(str(error), self.num_rows)) from error
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema, compression="zstd")
        self._writer.write_table(table, row_group_size=max(1, table.num_rows))
        self.num_rows += table.num_rows
        self._pending = []

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._flush()  # also writes an empty table when no rows came
                self._writer.close()
                self._writer = None
                os.replace(self._tmp, self.path)
        finally:
            if self._writer is not None:
                self._writer.close()
            if self._tmp is not None:
                Path(self._tmp).unlink(missing_ok=True)


class ColumnLookup:
    """One column of an artifact by key (e.g. a query image by sample_id), read one row group at a
    time with the last one kept: lookups in file order read each row group once, and memory holds a
    single row group whatever the table's size."""

    def __init__(self, path: str | os.PathLike, schema: ArtifactSchema, key: str, column: str):
        self.path, self.column = path, column
        self._field = schema.schema.field(column)
        self._file = _open_parquet(path)
        missing = [name for name in (key, column) if name not in self._file.schema_arrow.names]
        if missing:
            raise ArtifactError(f"{path}: missing column(s) {missing} of artifact '{schema.name}'")
        self._where: dict = {}
        for group in range(self._file.num_row_groups):
            keys = self._file.read_row_group(group, columns=[key]).column(0).to_pylist()
            for index, value in enumerate(keys):
                self._where.setdefault(value, (group, index))
        self._group: int | None = None
        self._values: list = []

    def get(self, key):
        """The column's value in the row with this key (KeyError naming the file if there is none)."""
        try:
            group, index = self._where[key]
        except KeyError:
            raise KeyError(f"{self.path}: no row with key {key!r}") from None
        if group != self._group:
            column = self._file.read_row_group(group, columns=[self.column]).column(0)
            try:
                column = column.cast(self._field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
                raise ArtifactError(f"{self.path}: field '{self.column}' has type {column.type}, expected {self._field.type}") from error
            self._group, self._values = group, column.to_pylist()
        return self._values[index]


def write_artifact_stream(
    rows: Iterable[Mapping], path: str | os.PathLike, schema: ArtifactSchema, batch_rows: int = STREAM_ROWS
) -> int:
    """`write_artifact` for an iterable of rows that need not fit in memory; returns the row count."""
    with ArtifactWriter(path, schema, batch_rows) as writer:
        writer.write(rows)
    return writer.num_rows


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


def as_list(value) -> list:
    """A list from a list, tuple or numpy array (rows read through pandas hold arrays); None -> []."""
    return [] if value is None else list(value)
