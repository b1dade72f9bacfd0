"""The building blocks of every artifact schema: the table type, shared column types and the letters of
a multiple-choice question."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# Images inside intermediate tables are PNG (or the generator's own encoding) bytes. The published
# splits use the Hugging Face image struct instead, so `datasets` decodes them.
IMAGE = pa.binary()

# Every multiple-choice question has options A-D: one of A-C is correct, D is the constant "cannot be
# determined" (SPEC §2), never shuffled. A judge that finds no support in a caption answers D.
OPTION_LETTERS = ("A", "B", "C", "D")
ANSWER_LETTERS = ("A", "B", "C")
NONE_LETTER = "D"
NONE_OPTION = "The answer cannot be determined"
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

FACT = pa.struct([("kind", pa.string()), ("text", pa.string())])
TURN = pa.struct([("role", pa.string()), ("text", pa.string())])
OPTIONS = pa.struct([("A", pa.string()), ("B", pa.string()), ("C", pa.string()), ("D", pa.string())])
QUESTION = pa.struct(
    [
        ("question_id", pa.string()),
        ("question", pa.string()),
        ("options", OPTIONS),
        ("answer", pa.string()),
        # False when the correct option's content cannot be found in the dialogue it came from.
        ("supported", pa.bool_()),
    ]
)
PUBLISHED_QUESTION = pa.struct([("question", pa.string()), ("options", OPTIONS), ("answer", pa.string())])


@dataclass(frozen=True)
class ArtifactSchema:
    """A named table layout: the arrow schema plus the columns that may never be null."""

    name: str
    schema: pa.Schema
    description: str
    required: tuple[str, ...] = ()
    # Extra schema metadata written into the Parquet footer (e.g. Hugging Face features).
    metadata: tuple[tuple[str, str], ...] = ()

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def arrow_schema(self) -> pa.Schema:
        if not self.metadata:
            return self.schema
        return self.schema.with_metadata({k.encode(): v.encode() for k, v in self.metadata})


def _schema(name: str, description: str, fields: list[tuple[str, pa.DataType]], required: list[str], metadata=()):
    return ArtifactSchema(name, pa.schema(fields), description, tuple(required), tuple(metadata))
