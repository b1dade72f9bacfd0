"""Rewriting a table (the test split or a diagnostic set) under one control condition; pure functions
of (seed, condition, dataset, sample id), so a control reproduces exactly."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageFilter

from covip.core.io import decode_image, encode_png
from covip.core.names import CONDITIONS, INTACT
from covip.core.seeding import rng_for
from covip.stages.controls.settings import CORRUPTIONS, ControlError, ControlSettings

BLANK_GREY = (128, 128, 128)

# Column names of the image-bearing fields in the two table layouts the controls rewrite.
LAYOUTS = {
    "split": {"context_images": "context_images", "context_dialogues": "context_dialogues", "query": "query_image"},
    "diagnostic": {"context_images": "images_context", "context_dialogues": "dialogues_context", "query": "query_image"},
}


def image_sha(cell) -> str:
    """SHA-256 of an image cell's bytes ({'bytes', 'path'} struct or raw bytes); '' for none."""
    data = cell.get("bytes") if isinstance(cell, Mapping) else cell
    return hashlib.sha256(data).hexdigest() if data else ""


def corrupt_image(image: Image.Image, kinds: Sequence[str], severity: float, rng: np.random.Generator) -> Image.Image:
    """`image` degraded by each of `kinds` in order (see ControlSettings.severity for the scales)."""
    out = image.convert("RGB")
    for kind in kinds:
        if kind == "blur":
            out = out.filter(ImageFilter.GaussianBlur(radius=max(0.5, 0.06 * severity * min(out.size))))
        elif kind == "noise":
            pixels = np.asarray(out, dtype=np.float32)
            pixels = pixels + rng.normal(0.0, 96.0 * severity, size=pixels.shape)
            out = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        elif kind == "patch_shuffle":
            out = _patch_shuffle(out, 2 + round(6 * severity), rng)
        else:
            raise ControlError(f"unknown corruption {kind!r}; choose from {list(CORRUPTIONS)}")
    return out


def _patch_shuffle(image: Image.Image, grid: int, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(image)
    h, w = (pixels.shape[0] // grid) * grid, (pixels.shape[1] // grid) * grid
    ph, pw = h // grid, w // grid
    patches = [pixels[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] for r in range(grid) for c in range(grid)]
    order = sattolo(len(patches), rng)  # a derangement: no patch stays where it was
    out = pixels.copy()
    for k, source in enumerate(order):
        r, c = divmod(k, grid)
        out[r * ph:(r + 1) * ph, c * pw:(c + 1) * pw] = patches[source]
    return Image.fromarray(out)


def blank_like(image: Image.Image) -> Image.Image:
    return Image.new("RGB", image.size, BLANK_GREY)


def sattolo(n: int, rng: np.random.Generator) -> list[int]:
    """A uniformly drawn cyclic permutation of range(n): position i receives from order[i] != i (n >= 2)."""
    if n < 2:
        raise ControlError(f"a derangement needs at least 2 items, got {n}")
    order = list(range(n))
    for i in range(n - 1, 0, -1):
        j = int(rng.integers(0, i))  # j < i (not <= i): that is what makes it a single cycle
        order[i], order[j] = order[j], order[i]
    return order


def _cell(image: Image.Image, old) -> dict:
    path = old.get("path") if isinstance(old, Mapping) else None
    return {"bytes": encode_png(image), "path": path}


# ---------------------------------------------------------------------------------------------------
# The controls


def apply_control(
    rows: Sequence[Mapping],
    condition: str,
    settings: ControlSettings,
    seed: int,
    *,
    layout: str = "split",
    dataset: str = "test",
) -> tuple[list[dict], list[dict]]:
    """(rows under `condition`, change records) for split rows (`layout='split'`) or diagnostic items.

    The output rows have the input's schema and order; only image cells differ. Change records are
    rows of schemas.CONTROL_CHANGES. `intact` returns copies of the rows and no changes.
    """
    if condition not in CONDITIONS:
        raise ControlError(f"unknown condition {condition!r}; choose from {list(CONDITIONS)}")
    if layout not in LAYOUTS:
        raise ControlError(f"unknown layout {layout!r}; choose from {list(LAYOUTS)}")
    fields = LAYOUTS[layout]
    rows = [dict(row) for row in rows]
    for index, row in enumerate(rows):
        images, dialogues = row.get(fields["context_images"]), row.get(fields["context_dialogues"])
        if images is None or dialogues is None or len(images) != len(dialogues):
            raise ControlError(
                f"{dataset} row {index} (sample_id={row.get('sample_id')}): fields '{fields['context_images']}' and "
                f"'{fields['context_dialogues']}' must be lists of the same length"
            )
    changes: list[dict] = []
    ctx, query = fields["context_images"], fields["query"]

    def record(row, field_name, k, change, before, after, source=None):
        changes.append({
            "condition": condition, "dataset": dataset, "sample_id": str(row["sample_id"]), "field": field_name,
            "index": k, "change": change, "source_sample_id": source,
            "sha_before": image_sha(before), "sha_after": image_sha(after),
        })

    if condition == INTACT:
        return rows, changes
    if condition == "text_only":
        for row in rows:
            for k, image in enumerate(row[ctx]):
                record(row, ctx, k, "removed", image, None)
            row[ctx] = []
    elif condition == "corrupted_context":
        kinds = list(settings.corruptions)
        for index, row in enumerate(rows):
            new = []
            for k, image in enumerate(row[ctx]):
                rng = rng_for(seed, "controls", settings.seed_offset, condition, dataset, row["sample_id"], k)
                where = f"{dataset} row {index} (sample_id={row['sample_id']}) field '{ctx}'[{k}]"
                cell = _cell(corrupt_image(decode_image(_bytes(image), where), kinds, settings.severity, rng), image)
                record(row, ctx, k, f"{'+'.join(kinds)} severity {settings.severity:g}", image, cell)
                new.append(cell)
            row[ctx] = new
    elif condition == "swapped_context":
        donors = swap_partners(rows, seed, settings.seed_offset, dataset)
        originals = [list(row[ctx]) for row in rows]
        for i, row in enumerate(rows):
            donor_images = originals[donors[i]]
            if not donor_images:
                raise ControlError(f"{dataset}: sample {rows[donors[i]]['sample_id']} has no context images to lend")
            new = []
            for k, own in enumerate(originals[i]):
                # Prefer donor images that differ from this slot's own picture (a concept both share).
                candidates = [d for d in donor_images if image_sha(d) != image_sha(own)] or donor_images
                cell = dict(candidates[k % len(candidates)])
                record(row, ctx, k, "swapped", own, cell, source=str(rows[donors[i]]["sample_id"]))
                new.append(cell)
            row[ctx] = new
    elif condition == "blank_query":
        partners = unrelated_partners(rows, seed, settings.seed_offset, dataset, layout) if settings.blank_mode == "unrelated" else None
        originals = [row[query] for row in rows]
        for i, row in enumerate(rows):
            old = originals[i]
            if partners is None:
                image = decode_image(_bytes(old), f"{dataset} row {i} (sample_id={row['sample_id']}) field '{query}'")
                cell, source, change = _cell(blank_like(image), old), None, "blank"
            else:
                j = partners[i]
                cell, source, change = dict(originals[j]), str(rows[j]["sample_id"]), "unrelated query"
            record(row, query, -1, change, old, cell, source=source)
            row[query] = cell
    return rows, changes


def _bytes(cell):
    return cell.get("bytes") if isinstance(cell, Mapping) else cell


def swap_partners(rows: Sequence[Mapping], seed: int, seed_offset: int, dataset: str) -> list[int]:
    """donor[i] for every row: a seeded derangement over the rows taken in sample-id order, so the
    pairing does not depend on file order."""
    ids = [str(row["sample_id"]) for row in rows]
    by_id = sorted(range(len(ids)), key=ids.__getitem__)
    cycle = sattolo(len(ids), rng_for(seed, "controls-swap", seed_offset, dataset))
    donors = [0] * len(ids)
    for position, source in enumerate(cycle):
        donors[by_id[position]] = by_id[source]
    return donors


def unrelated_partners(rows: Sequence[Mapping], seed: int, seed_offset: int, dataset: str, layout: str) -> list[int]:
    """For each row, another row whose query can stand in as an unrelated image.

    Split rows know their concept ids: the partner's positive concepts must be none of this row's
    context concepts (error when no row qualifies). Diagnostic items do not: the swap partner is used.
    """
    donors = swap_partners(rows, seed, seed_offset, dataset)
    if layout != "split":
        return donors
    out = []
    for i, row in enumerate(rows):
        own = set(row.get("context_concept_ids") or [])
        ok = []
        for j, other in enumerate(rows):
            ids = list(other.get("context_concept_ids") or [])
            shown = {ids[p] for p in (other.get("positive_indices") or []) if p < len(ids)}
            if j != i and not (shown & own):
                ok.append(j)
        if not ok:
            raise ControlError(
                f"{dataset} row {i} (sample_id={row['sample_id']}): no other sample's query shows none of its "
                "concepts; use controls.blank_mode: blank"
            )
        rng = rng_for(seed, "controls-unrelated", seed_offset, dataset, row["sample_id"])
        out.append(ok[int(rng.integers(0, len(ok)))])
    return out


# ---------------------------------------------------------------------------------------------------
# Effects: every metric under every condition, and its paired drop against intact
