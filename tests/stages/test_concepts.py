"""Stage 1: the concept pool (builtin, folder and manifest sources)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from covip.core import schemas
from covip.core.io import BadImageError, decode_image, to_table
from covip.core.settings import settings_from
from covip.stages.concepts import ConceptPoolError, ConceptPoolSettings, build_concept_pool

QUIET = io.StringIO()


@pytest.fixture(scope="module")
def pool():
    return build_concept_pool(ConceptPoolSettings(), seed=0, progress_file=QUIET)


def _alpha(row) -> np.ndarray:
    image = decode_image(row["image"], f"concept {row['concept_id']}")
    assert image.mode == "RGBA", f"{row['concept_id']} is {image.mode}"
    return np.asarray(image.getchannel("A"))


# ---------------------------------------------------------------------------------------------------
# builtin


def test_builtin_pool_size_categories_and_schema(pool):
    assert len(pool) >= 24
    categories = {row["category"] for row in pool}
    assert {"person", "animal", "object"} <= categories
    to_table(pool, schemas.CONCEPTS, "test pool")  # raises if any row does not fit
    assert [row["concept_id"] for row in pool] == [f"c{i:03d}" for i in range(len(pool))]


def test_builtin_pool_has_real_photos_and_shared_kinds(pool):
    sources = [row["source"] for row in pool]
    for photo in ("skimage:astronaut", "skimage:chelsea", "skimage:coffee", "skimage:horse"):
        assert photo in sources
    faces = [row for row in pool if row["kind"] == "face"]
    assert len(faces) >= 4 and all(row["category"] == "person" for row in faces)
    mugs = [row for row in pool if row["kind"] == "mug"]
    assert len(mugs) == 3
    # Siblings of one kind must differ visibly: their mean colours over the mask are far apart.
    means = []
    for row in mugs:
        rgba = np.asarray(decode_image(row["image"], row["concept_id"], mode="RGBA"), float)
        means.append(rgba[rgba[:, :, 3] > 128, :3].mean(axis=0))
    gaps = [np.abs(means[i] - means[j]).sum() for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 30, gaps


def test_names_are_unique_fictional_first_names(pool):
    names = [row["name"] for row in pool]
    assert len({n.casefold() for n in names}) == len(names)
    assert all(re.fullmatch(r"[A-Z][a-zA-Z'\-]+", n) for n in names), names


def test_images_are_rgba_cutouts_with_nontrivial_alpha(pool):
    for row in pool:
        alpha = _alpha(row)
        assert alpha.shape == (row["height"], row["width"])
        assert max(row["width"], row["height"]) == 160
        opaque = (alpha > 200).mean()
        assert alpha.min() == 0, f"{row['concept_id']} has no transparent pixel"
        assert 0.1 < opaque < 0.97, f"{row['concept_id']} opaque fraction {opaque:.2f}"


def test_same_seed_identical_rows_other_seed_other_names(pool):
    again = build_concept_pool(ConceptPoolSettings(), seed=0, progress_file=QUIET)
    assert again == pool
    other = build_concept_pool(ConceptPoolSettings(), seed=1, progress_file=QUIET)
    assert [r["concept_id"] for r in other] == [r["concept_id"] for r in pool]
    differing = sum(a["name"] != b["name"] for a, b in zip(pool, other))
    assert differing > len(pool) // 2
    # Drawn variants are seeded too: some drawing looks different under another seed.
    assert any(a["image"] != b["image"] for a, b in zip(pool, other) if a["source"].startswith("drawn:"))


def test_image_size_and_drawn_per_kind_settings():
    rows = build_concept_pool(ConceptPoolSettings(image_size=64, drawn_per_kind=1), seed=3, progress_file=QUIET)
    assert all(max(r["width"], r["height"]) == 64 for r in rows)
    drawn = [r for r in rows if r["source"].startswith("drawn:")]
    assert len(drawn) == len({r["kind"] for r in drawn})


# ---------------------------------------------------------------------------------------------------
# folder and manifest


def _save_rgb(path, colour=(200, 30, 30), size=(40, 30)):
    array = np.zeros((size[1], size[0], 3), np.uint8)
    array[:] = colour
    array[::4] = 255 - np.asarray(colour, np.uint8)  # some structure
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _save_rgba_with_hole(path):
    rgba = np.full((50, 50, 4), 255, np.uint8)
    rgba[:, :, :3] = (20, 120, 220)
    rgba[:10, :10, 3] = 0  # transparent corner
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)


def test_folder_source(tmp_path):
    _save_rgb(tmp_path / "person" / "alice.png")
    _save_rgba_with_hole(tmp_path / "object" / "blue_mug_02.png")
    _save_rgb(tmp_path / "animal" / "03.jpg", colour=(90, 160, 40))
    rows = build_concept_pool(ConceptPoolSettings(source="folder", path=str(tmp_path), image_size=80), seed=5, progress_file=QUIET)
    to_table(rows, schemas.CONCEPTS, "folder pool")
    by_source = {r["source"]: r for r in rows}
    assert set(by_source) == {"folder:animal/03.jpg", "folder:object/blue_mug_02.png", "folder:person/alice.png"}
    mug = by_source["folder:object/blue_mug_02.png"]
    assert (mug["category"], mug["kind"]) == ("object", "blue_mug")
    assert by_source["folder:animal/03.jpg"]["kind"] == "animal"  # a digits-only stem falls back to the category
    # The RGBA file keeps its own alpha: the transparent corner is still transparent.
    assert _alpha(mug)[0, 0] == 0 and _alpha(mug)[-1, -1] == 255
    # A plain photo gets the soft ellipse: corners transparent, centre opaque.
    alice = _alpha(by_source["folder:person/alice.png"])
    assert alice[0, 0] == 0 and alice[alice.shape[0] // 2, alice.shape[1] // 2] == 255
    assert all(max(r["width"], r["height"]) == 80 for r in rows)


def test_folder_corrupt_image_names_the_file(tmp_path):
    _save_rgb(tmp_path / "person" / "bob.png")
    bad = tmp_path / "object" / "broken.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    with pytest.raises(BadImageError, match="broken.png"):
        build_concept_pool(ConceptPoolSettings(source="folder", path=str(tmp_path)), seed=0, progress_file=QUIET)


def test_folder_rejects_non_image_files(tmp_path):
    _save_rgb(tmp_path / "person" / "bob.png")
    (tmp_path / "person" / "notes.txt").write_text("hello")
    with pytest.raises(ConceptPoolError, match="notes.txt"):
        build_concept_pool(ConceptPoolSettings(source="folder", path=str(tmp_path)), seed=0, progress_file=QUIET)


def test_manifest_source_keeps_given_ids_and_names(tmp_path):
    _save_rgb(tmp_path / "imgs" / "a.png")
    _save_rgb(tmp_path / "imgs" / "b.png", colour=(10, 200, 90))
    _save_rgba_with_hole(tmp_path / "imgs" / "c.png")
    manifest = tmp_path / "concepts.csv"
    manifest.write_text("path,category,concept_id,name\nimgs/a.png,person,p1,Zorblax\nimgs/b.png,animal,,\nimgs/c.png,object,,\n")
    rows = build_concept_pool(ConceptPoolSettings(source="manifest", path=str(manifest)), seed=2, progress_file=QUIET)
    to_table(rows, schemas.CONCEPTS, "manifest pool")
    by_source = {r["source"]: r for r in rows}
    assert by_source["manifest:imgs/a.png"]["concept_id"] == "p1"
    assert by_source["manifest:imgs/a.png"]["name"] == "Zorblax"
    assert by_source["manifest:imgs/b.png"]["category"] == "animal"
    names = [r["name"] for r in rows]
    assert len(set(names)) == 3
    assert len({r["concept_id"] for r in rows}) == 3


@pytest.mark.parametrize(
    "body, pattern",
    [
        ("path,category\nimgs/a.png,person\nimgs/a.png,\n", r"row 2 \(line 3\) field 'category'"),
        ("path,category\nimgs/missing.png,person\n", r"row 1 \(line 2\) field 'path'.*missing.png"),
        ("path,category\nimgs/a.png,Person Name!\n", r"row 1 .*field 'category'"),
        ("path,category,concept_id\nimgs/a.png,person,x\nimgs/a.png,animal,x\n", r"row 2 field 'concept_id'"),
        ("path,colour\nimgs/a.png,red\n", r"missing column"),
        ("path,category,colour\nimgs/a.png,person,red\n", r"unknown column"),
    ],
)
def test_manifest_row_errors_name_the_row(tmp_path, body, pattern):
    _save_rgb(tmp_path / "imgs" / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text(body)
    with pytest.raises(ConceptPoolError, match=pattern):
        build_concept_pool(ConceptPoolSettings(source="manifest", path=str(manifest)), seed=0, progress_file=QUIET)


def test_manifest_corrupt_image_names_row_and_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"garbage")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,category\nbad.jpg,object\n")
    with pytest.raises(BadImageError, match=r"row 1 .*bad.jpg"):
        build_concept_pool(ConceptPoolSettings(source="manifest", path=str(manifest)), seed=0, progress_file=QUIET)


# ---------------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize(
    "section, pattern",
    [
        ({"source": "web"}, "concepts.source"),
        ({"source": "folder"}, "concepts.path is required"),
        ({"image_size": 8}, "concepts.image_size"),
        ({"drawn_per_kind": -1}, "concepts.drawn_per_kind"),
        ({"photo_mask": "circle"}, "concepts.photo_mask"),
        ({"imagesize": 100}, "unknown setting"),
    ],
)
def test_settings_are_checked(section, pattern):
    with pytest.raises(ValueError, match=pattern):
        settings_from(ConceptPoolSettings, section, "concepts")
