"""Stage 1: the concept pool, one row per concept with its reference cut-out and fictional name.

Three sources:

- `builtin`: real photographs bundled with scikit-image plus seeded drawings (see
  `covip.content.concept_art`); no files, no network.
- `folder`: a directory with one sub-folder per category, each holding image files.
- `manifest`: a CSV with columns `path,category` and optional `concept_id`, `name`, `kind`; relative
  paths are resolved against the manifest's own folder.

Every reference is stored as an RGBA PNG whose alpha is the concept's cut-out mask: exact for
drawings and for user images that carry an alpha channel, a soft ellipse around the subject for
photographs without one. Names are fictional first names from Faker, seeded with the run seed,
unique across the pool (so unique within every context built from it).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from covip.core.io import BadImageError, encode_png, load_image_file
from covip.content import concept_art
from covip.core.seeding import derive_seed, rng_for

SOURCES = ("builtin", "folder", "manifest")
PHOTO_MASKS = ("ellipse", "full")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MANIFEST_COLUMNS = ("path", "category", "concept_id", "name", "kind")


class ConceptPoolError(ValueError):
    """Bad concept-pool input; the message names the file, row and field."""


@dataclass
class ConceptPoolSettings:
    """Settings of stage 1 (config section `concepts`)."""

    source: str = field(default="builtin", metadata={"help": "Where concepts come from: 'builtin' (scikit-image photos + seeded drawings), 'folder' (one sub-folder per category) or 'manifest' (CSV with path,category[,concept_id,name,kind])."})
    path: str | None = field(default=None, metadata={"help": "The folder (source 'folder') or CSV file (source 'manifest'); unused for 'builtin'."})
    image_size: int = field(default=160, metadata={"help": "Longest side, in pixels, of every stored reference image."})
    drawn_per_kind: int = field(default=3, metadata={"help": "How many drawn variants of each drawn kind (mug, robot, ...) the builtin pool has; 0 keeps only the photographs."})
    name_locale: str = field(default="en_US", metadata={"help": "Faker locale of the fictional first names."})
    photo_mask: str = field(default="ellipse", metadata={"help": "Cut-out mask for photos without an alpha channel: 'ellipse' (soft ellipse around the centre) or 'full' (the whole frame)."})

    def __post_init__(self):
        if self.source not in SOURCES:
            raise ValueError(f"concepts.source must be one of {list(SOURCES)}, got {self.source!r}")
        if self.source != "builtin" and not self.path:
            raise ValueError(f"concepts.path is required when concepts.source is '{self.source}'")
        if not 32 <= self.image_size <= 2048:
            raise ValueError(f"concepts.image_size must be in [32, 2048], got {self.image_size}")
        if not 0 <= self.drawn_per_kind <= 50:
            raise ValueError(f"concepts.drawn_per_kind must be in [0, 50], got {self.drawn_per_kind}")
        if self.photo_mask not in PHOTO_MASKS:
            raise ValueError(f"concepts.photo_mask must be one of {list(PHOTO_MASKS)}, got {self.photo_mask!r}")
        if not self.name_locale:
            raise ValueError("concepts.name_locale must not be empty")


@dataclass
class _Pending:
    """A concept before it is rendered: what to draw or load, and any id/name the user fixed."""

    category: str
    kind: str
    source: str
    render: object  # zero-argument callable returning an RGBA PIL image
    concept_id: str | None = None
    name: str | None = None


def build_concept_pool(settings: ConceptPoolSettings, seed: int, progress_file=None) -> list[dict]:
    """Build the concept pool; rows fit `schemas.CONCEPTS`, ordered by concept_id.

    Ids are assigned in a fixed order (photos, then drawn kinds and variants for the builtin pool;
    sorted category/file for a folder; row order for a manifest) and names are drawn in that order
    from a Faker instance seeded with `seed`, so the same seed gives identical rows.
    """
    if settings.source == "builtin":
        pending = _builtin(settings, seed)
    elif settings.source == "folder":
        pending = _from_folder(Path(settings.path), settings)
    else:
        pending = _from_manifest(Path(settings.path), settings)
    if not pending:
        raise ConceptPoolError(f"concepts: source '{settings.source}' ({settings.path}) yielded no concepts")
    ids = _assign_ids(pending, settings)
    names = _assign_names(pending, settings, seed)
    rows = []
    for item, concept_id, name in tqdm(list(zip(pending, ids, names)), desc="concept pool", file=progress_file,
                                       mininterval=1.0, ascii=True):
        image = item.render()
        rows.append(
            {
                "concept_id": concept_id,
                "category": item.category,
                "kind": item.kind,
                "source": item.source,
                "name": name,
                "image": encode_png(image),
                "width": image.width,
                "height": image.height,
            }
        )
    return sorted(rows, key=lambda row: row["concept_id"])


# ---------------------------------------------------------------------------------------------------
# Sources


def _builtin(settings: ConceptPoolSettings, seed: int) -> list[_Pending]:
    size = settings.image_size
    pending = []
    for spec in concept_art.PHOTOS:
        rng = rng_for(seed, "concept-photo", spec.key)
        pending.append(_Pending(spec.category, spec.kind, f"skimage:{spec.key}",
                                lambda spec=spec, rng=rng: concept_art.render_photo(spec, size, rng)))
    for kind in concept_art.DRAWN_KINDS:
        styles = concept_art.variant_styles(kind.kind, settings.drawn_per_kind, rng_for(seed, "concept-drawn", kind.kind))
        for index, style in enumerate(styles):
            pending.append(_Pending(kind.category, kind.kind, f"drawn:{kind.kind}#{index}",
                                    lambda kind=kind, style=style: concept_art.render_drawing(kind, style, size)))
    return pending


def _from_folder(root: Path, settings: ConceptPoolSettings) -> list[_Pending]:
    if not root.is_dir():
        raise ConceptPoolError(f"concepts.path: folder {root} does not exist")
    pending = []
    for category_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        category = _check_label(category_dir.name, f"{category_dir}: category folder name")
        for path in sorted(p for p in category_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise ConceptPoolError(
                    f"{path}: not an image file (suffix '{path.suffix}'); concept folders may hold only "
                    f"{sorted(IMAGE_SUFFIXES)}"
                )
            pending.append(_Pending(category, _kind_from_stem(path.stem, category),
                                    f"folder:{category}/{path.name}", _file_renderer(path, settings)))
    if not pending:
        raise ConceptPoolError(f"{root}: no images found (expected one sub-folder per category holding image files)")
    return pending


def _from_manifest(manifest: Path, settings: ConceptPoolSettings) -> list[_Pending]:
    if not manifest.is_file():
        raise ConceptPoolError(f"concepts.path: manifest {manifest} does not exist")
    with manifest.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in ("path", "category") if c not in header]
        if missing:
            raise ConceptPoolError(f"{manifest}: missing column(s) {missing}; have {header}")
        unknown = [c for c in header if c not in MANIFEST_COLUMNS]
        if unknown:
            raise ConceptPoolError(f"{manifest}: unknown column(s) {unknown}; allowed {list(MANIFEST_COLUMNS)}")
        rows = list(reader)
    pending = []
    for index, row in enumerate(rows):
        # Row numbers count data rows from 1; the CSV line is one more (the header).
        where = f"{manifest} row {index + 1} (line {index + 2})"
        raw_path = (row.get("path") or "").strip()
        if not raw_path:
            raise ConceptPoolError(f"{where} field 'path': empty")
        category = _check_label((row.get("category") or "").strip(), f"{where} field 'category'")
        path = Path(raw_path)
        if not path.is_absolute():
            path = manifest.parent / path
        if not path.is_file():
            raise ConceptPoolError(f"{where} field 'path': file {path} does not exist")
        kind = (row.get("kind") or "").strip() or _kind_from_stem(path.stem, category)
        concept_id = (row.get("concept_id") or "").strip() or None
        name = (row.get("name") or "").strip() or None
        pending.append(_Pending(category, kind, f"manifest:{raw_path}",
                                _file_renderer(path, settings, f"{where} field 'path'"), concept_id, name))
    return pending


def _file_renderer(path: Path, settings: ConceptPoolSettings, where: str | None = None):
    """Decode now, not at render time: a corrupt file fails before any work, naming the file (and row)."""
    try:
        image = load_image_file(path)
    except BadImageError as error:
        if where is None:
            raise
        raise BadImageError(f"{where}: {error}") from error
    # Keep only the small cut-out, not the full-size decoded photo.
    cutout = _cutout(image, settings)
    return lambda: cutout


def _cutout(image: Image.Image, settings: ConceptPoolSettings) -> Image.Image:
    """An RGBA cut-out of a user image: its own alpha if it has a meaningful one, else the photo mask."""
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"))
    if has_alpha and alpha.min() < 250 and alpha.max() > 5:
        bbox = rgba.getchannel("A").point(lambda v: 255 if v > 8 else 0).getbbox()
        rgba = rgba.crop(bbox)
        return _resize(rgba, settings.image_size)
    rgba = _resize(rgba.convert("RGB").convert("RGBA"), settings.image_size)
    if settings.photo_mask == "ellipse":
        rgba.putalpha(Image.fromarray(concept_art.soft_ellipse_mask(rgba.width, rgba.height), "L"))
    return rgba


def _resize(image: Image.Image, longest: int) -> Image.Image:
    scale = longest / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS)


_LABEL = re.compile(r"^[a-z][a-z0-9_-]*$")


def _check_label(label: str, where: str) -> str:
    label = label.strip().lower()
    if not _LABEL.match(label):
        raise ConceptPoolError(f"{where}: category {label!r} must be a lowercase word (letters, digits, '_' or '-')")
    return label


def _kind_from_stem(stem: str, category: str) -> str:
    """'red_mug_02' -> 'red_mug'; a stem that is only digits falls back to the category."""
    kind = re.sub(r"[\s_\-]*\d+$", "", stem.strip().lower())
    kind = re.sub(r"[^a-z0-9_]+", "_", kind).strip("_")
    return kind or category


# ---------------------------------------------------------------------------------------------------
# Ids and names


def _assign_ids(pending: list[_Pending], settings: ConceptPoolSettings) -> list[str]:
    width = max(3, len(str(len(pending) - 1)))
    given = {}
    for index, item in enumerate(pending):
        if item.concept_id is not None:
            if item.concept_id in given:
                raise ConceptPoolError(
                    f"{settings.path} row {index + 1} field 'concept_id': '{item.concept_id}' repeats row {given[item.concept_id] + 1}"
                )
            given[item.concept_id] = index
    ids, counter = [], 0
    for item in pending:
        if item.concept_id is not None:
            ids.append(item.concept_id)
            continue
        while (candidate := f"c{counter:0{width}d}") in given:
            counter += 1
        ids.append(candidate)
        counter += 1
    return ids


def _assign_names(pending: list[_Pending], settings: ConceptPoolSettings, seed: int) -> list[str]:
    """Given names stay; the rest are Faker first names, unique across the pool."""
    from faker import Faker

    used: dict[str, int] = {}
    for index, item in enumerate(pending):
        if item.name is not None:
            key = item.name.casefold()
            if key in used:
                raise ConceptPoolError(
                    f"{settings.path} row {index + 1} field 'name': '{item.name}' repeats row {used[key] + 1}; names must be unique"
                )
            used[key] = index
    faker = Faker(settings.name_locale)
    faker.seed_instance(derive_seed(seed, "concept-names"))
    names = []
    for item in pending:
        if item.name is not None:
            names.append(item.name)
            continue
        for _ in range(10_000):
            candidate = faker.first_name()
            if candidate.casefold() not in used:
                break
        else:
            raise ConceptPoolError(
                f"concepts: Faker locale '{settings.name_locale}' ran out of unique first names after {len(used)}"
            )
        used[candidate.casefold()] = -1
        names.append(candidate)
    return names
