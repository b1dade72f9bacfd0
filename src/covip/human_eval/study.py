"""What the page shows, read from a run's output folder: the test split's texts, the captions, the images.

Texts and captions are small and read once. Images stay in the Parquet file and are read on request
(one row group at a time, a few samples kept), so the server's memory does not grow with the split and
no image is ever copied to a temporary folder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from covip.core import schemas
from covip.human_eval.plan import Plan, build_plan, caption_is_usable
from covip.human_eval.settings import HumanEvalSettings
from covip.core.io import ArtifactError, ColumnLookup, read_columns, read_rows

TEXT_COLUMNS = ["sample_id", "context_names", "context_dialogues"]


class StudyError(ValueError):
    """Inputs the study cannot be served from; the message names the file, policy or sample."""


@dataclass(frozen=True)
class SampleText:
    names: list[str]
    dialogues: list[str]


def split_path(outdir: str | Path) -> Path:
    return Path(outdir) / "splits" / "test.parquet"


def captions_path(outdir: str | Path, policy: str) -> Path:
    return Path(outdir) / "captions" / "intact" / f"{policy}.parquet"


def read_captions(path: Path, policy: str, sample_ids: set[str]) -> dict[str, tuple[str | None, str | None]]:
    """sample_id -> (status, caption) for `policy`, from its captions file."""
    if not path.exists():
        raise StudyError(f"{path}: no captions file for policy '{policy}' (caption the test split with it first)")
    try:
        rows = read_rows(path, schemas.CAPTIONS)
    except ArtifactError as error:
        raise StudyError(str(error)) from error
    mine = [row for row in rows if row["policy"] == policy]
    if not mine:
        found = sorted({row["policy"] for row in rows})
        raise StudyError(f"{path}: holds no caption of policy '{policy}' (policies in the file: {found})")
    captions: dict[str, tuple[str | None, str | None]] = {}
    for row in mine:
        sample_id = row["sample_id"]
        if sample_id in captions:
            raise StudyError(f"{path}: policy '{policy}' has two captions for sample '{sample_id}'")
        if sample_id in sample_ids:  # captions of samples outside the test split are not shown
            captions[sample_id] = (row["status"], row["caption"])
    return captions


class ImageSource:
    """Image bytes of the test split by (sample, slot), safe to call from the server's threads."""

    def __init__(self, path: Path, keep_samples: int = 16):
        self._query = ColumnLookup(path, schemas.SPLIT, "sample_id", "query_image")
        self._context = ColumnLookup(path, schemas.SPLIT, "sample_id", "context_images")
        self._lock = threading.Lock()  # ColumnLookup keeps one row group and is not thread-safe
        self._kept: OrderedDict[tuple[str, str], bytes | None] = OrderedDict()
        self._keep = keep_samples * 8

    def get(self, sample_id: str, slot: str) -> bytes | None:
        """`slot` is 'query' or 'context-<k>'; None when the sample has no such image."""
        key = (sample_id, slot)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return self._kept[key]
            data = self._read(sample_id, slot)
            self._kept[key] = data
            while len(self._kept) > self._keep:
                self._kept.popitem(last=False)
            return data

    def _read(self, sample_id: str, slot: str) -> bytes | None:
        try:
            if slot == "query":
                cell = self._query.get(sample_id)
            elif slot.startswith("context-") and slot[len("context-"):].isdigit():
                images = self._context.get(sample_id) or []
                index = int(slot[len("context-"):])
                cell = images[index] if index < len(images) else None
            else:
                return None
        except KeyError:
            return None
        return (cell or {}).get("bytes")


class Study:
    """The plan plus everything its pages show."""

    def __init__(self, plan: Plan, texts: dict[str, SampleText], captions: dict[str, dict[str, str]],
                 images: ImageSource | None):
        self.plan, self.texts, self.captions, self.images = plan, texts, captions, images

    def caption(self, policy: str, sample_id: str) -> str:
        return self.captions[policy][sample_id]


def load_study(outdir: str | Path, policies: Sequence[str], settings: HumanEvalSettings, seed: int) -> Study:
    """Read the test split and each policy's captions under `outdir` and draw the plan."""
    path = split_path(outdir)
    if not path.exists():
        raise StudyError(f"{path}: no test split (build it with `snakemake --cores all {path}`)")
    if len(set(policies)) < 2:
        raise StudyError(f"a pairwise study needs at least two different policies, got {list(policies)}")
    try:
        rows = read_columns(path, schemas.SPLIT, TEXT_COLUMNS)
    except ArtifactError as error:
        raise StudyError(str(error)) from error
    sample_ids = [row["sample_id"] for row in rows]
    texts = {row["sample_id"]: SampleText(list(row["context_names"] or []), list(row["context_dialogues"] or []))
             for row in rows}
    cells = {policy: read_captions(captions_path(outdir, policy), policy, set(sample_ids)) for policy in policies}
    try:
        plan = build_plan(sample_ids, cells, policies, settings, seed)
    except ValueError as error:
        raise StudyError(f"{path}: {error}") from error
    if not plan.comparisons:
        raise StudyError(f"nothing to rate for policies {plan.policies} on {path}: {plan.excluded_text()}")
    usable = {policy: {s: text for s, (status, text) in by_sample.items() if caption_is_usable(status, text)}
              for policy, by_sample in cells.items()}
    return Study(plan, texts, usable, ImageSource(path))
