"""Shards of a per-sample stage, so many cluster jobs call the model APIs at once.

Every sample has a stable ordinal, the number in its synthesis id (`s0042` -> 42). Shard k of size
S holds the samples with ordinal in [k*S, (k+1)*S), so the number of shards,
ceil(num_samples / S), is known when Snakemake builds the DAG, and a failed shard costs only its S
samples. Every random draw is seeded by the sample, not the shard, so the gathered rows equal an
unsharded run's: rows come out in ordinal order in both.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence


from covip.core.io import ArtifactWriter, iter_rows
from covip.core.schemas import ArtifactSchema

_SAMPLE_ID = re.compile(r"^s(\d+)$")


class ShardError(ValueError):
    pass


def sample_ordinal(sample_id: str, where: str = "") -> int:
    """The ordinal in a synthesis sample id (see covip.stages.synthesis.sample_id)."""
    match = _SAMPLE_ID.match(str(sample_id))
    if match is None:
        raise ShardError(f"{where}sample_id '{sample_id}' is not a synthesis id like 's0042', so it has no shard")
    return int(match.group(1))


def shard_count(num_samples: int, shard_size: int) -> int:
    if shard_size < 1:
        raise ShardError(f"sharding.shard_size must be >= 1, got {shard_size}")
    return max(1, math.ceil(num_samples / shard_size))


@dataclass(frozen=True)
class Shard:
    index: int
    size: int

    def holds(self, sample_id: str, where: str = "") -> bool:
        return self.index * self.size <= sample_ordinal(sample_id, where) < (self.index + 1) * self.size

    def select(self, rows: Sequence[Mapping], what: str) -> list[Mapping]:
        """The rows of this shard's samples, in their order; errors name the artifact and row."""
        return [row for i, row in enumerate(rows) if self.holds(row.get("sample_id"), f"{what} row {i}: ")]

    def __str__(self) -> str:
        return f"shard {self.index} (samples {self.index * self.size}..{(self.index + 1) * self.size - 1})"


def gather(paths: Iterable[str], schema: ArtifactSchema, out: str) -> int:
    """Concatenate shard artifacts, in shard order, into `out`, streaming a batch of rows at a time
    (a gathered query table holds every image); a sample may appear in one shard only. Returns the
    number of rows written; nothing is written if a check fails."""
    paths = list(paths)
    if not paths:
        raise ShardError(f"{out}: no shards to gather")
    owner: dict[str, str] = {}
    with ArtifactWriter(out, schema) as writer:
        for path in paths:
            for batch in iter_rows(path, schema):
                for row in batch:
                    sample = row["sample_id"]
                    if owner.setdefault(sample, str(path)) != str(path):
                        raise ShardError(f"{path}: sample_id '{sample}' is also in {owner[sample]}")
                writer.write(batch)
    return writer.num_rows
