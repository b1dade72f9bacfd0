"""What the human-evaluation tests share: the run folder's layout, its policies, judge and seed."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from covip.core import schemas
from covip.core.io import write_artifact

POLICIES = ("blind", "context_dump", "oracle")
JUDGE = "lexical_judge"
SEED = 5
FAILED_SAMPLE_POLICY = "blind"  # its caption of the first test sample is marked failed


@dataclass
class StudyRun:
    outdir: Path
    test_rows: list[dict]
    captions: dict[str, list[dict]]
    answers: list[dict]
    failed_sample: str

    def config(self, path: Path, votes: Path, **human_eval) -> Path:
        """Write a config file for `covip human-eval` pointing at this run and `votes`."""
        section = {"votes": str(votes), "items_per_rater": 6, "shared_items": 3, **human_eval}
        path.write_text(yaml.safe_dump({"outdir": str(self.outdir), "seed": SEED,
                                        "evaluation": {"policies": list(POLICIES), "judges": [JUDGE]},
                                        "human_eval": section}))
        return path


def write_run(outdir: Path, test_rows: list[dict], captions: dict[str, list[dict]]) -> None:
    write_artifact(test_rows, outdir / "splits" / "test.parquet", schemas.SPLIT)
    for policy, rows in captions.items():
        write_artifact(rows, outdir / "captions" / "intact" / f"{policy}.parquet", schemas.CAPTIONS)
