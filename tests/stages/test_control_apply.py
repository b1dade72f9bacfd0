"""Visual-context controls, applied (covip.stages.controls.apply): only images change, the schema is
kept, swaps are derangements, blanks and corruptions do what they say, on split rows and diagnostic sets."""

from __future__ import annotations

import io

import numpy as np
import pytest

from covip.clients.base import ImagePart
from covip.core import schemas
from covip.core.io import decode_image, to_table
from covip.core.names import CONDITIONS, INTACT
from covip.core.seeding import rng_for
from covip.protocol.requests import build_caption_request, build_direct_request
from covip.stages.controls.apply import apply_control, corrupt_image, image_sha, sattolo, swap_partners
from covip.stages.controls.settings import ControlError, ControlSettings
from covip.stages.diagnostics.sets import build_diagnostic_set
from covip.stages.diagnostics.settings import DiagnosticSettings

QUIET = io.StringIO()
SEED = 7
SETTINGS = ControlSettings()
CONTROLS = [c for c in CONDITIONS if c != INTACT]
IMAGE_COLUMNS = {"split": ("context_images", "query_image"), "diagnostic": ("images_context", "query_image")}


@pytest.fixture(scope="module")
def test_rows(benchmark_splits):
    return benchmark_splits[1]


@pytest.fixture(scope="module")
def lsd_items(builtin_pool, prompts):
    return build_diagnostic_set("lsd", builtin_pool, DiagnosticSettings(items_per_task=4, image_size=96), seed=3,
                                progress_file=QUIET, prompts=prompts)


def _without_images(row, layout):
    return {k: v for k, v in row.items() if k not in IMAGE_COLUMNS[layout]}


@pytest.mark.parametrize("condition", CONTROLS)
def test_a_control_changes_only_images_and_keeps_the_schema(test_rows, condition):
    controlled, changes = apply_control(test_rows, condition, SETTINGS, SEED)
    to_table(controlled, schemas.SPLIT, condition)  # same schema: the downstream stages read it unchanged
    to_table(changes, schemas.CONTROL_CHANGES, condition)
    assert [r["sample_id"] for r in controlled] == [r["sample_id"] for r in test_rows]
    for before, after in zip(test_rows, controlled):
        assert _without_images(after, "split") == _without_images(before, "split")  # texts, names, labels, MCQAs
    assert changes and all(c["sha_before"] != c["sha_after"] for c in changes)
    context_changed = condition in ("text_only", "corrupted_context", "swapped_context")
    for before, after in zip(test_rows, controlled):
        same_query = image_sha(before["query_image"]) == image_sha(after["query_image"])
        assert same_query == context_changed
        own = [image_sha(i) for i in before["context_images"]]
        new = [image_sha(i) for i in after["context_images"]]
        if condition == "text_only":
            assert new == []
        elif condition == "blank_query":
            assert new == own
        else:
            assert len(new) == len(own) and all(a != b for a, b in zip(new, own))


def test_text_only_prompt_keeps_every_dialogue_and_only_the_query_image(test_rows, prompts):
    controlled, _ = apply_control(test_rows, "text_only", SETTINGS, SEED)
    row, original = controlled[0], test_rows[0]
    request = build_caption_request(row, prompts)
    intact = build_caption_request(original, prompts)
    images = [p for p in request.messages[0].parts if isinstance(p, ImagePart)]
    assert len(images) == 1 and images[0].data == original["query_image"]["bytes"]

    def words(r):  # the text parts without the picture labels (only pictures that are there are labelled)
        return [p.text for p in r.messages[0].parts if not isinstance(p, ImagePart) and not p.text.startswith("Picture ")]

    assert words(request) == words(intact)  # same headers, dialogues and instruction, in the same order


def test_swap_is_a_reproducible_derangement(test_rows):
    donors = swap_partners(test_rows, SEED, 0, "test")
    assert sorted(donors) == list(range(len(test_rows)))  # a permutation
    assert all(d != i for i, d in enumerate(donors))  # no sample keeps its own
    assert swap_partners(test_rows, SEED, 0, "test") == donors
    assert swap_partners(list(reversed(test_rows)), SEED, 0, "test")[::-1] == [len(test_rows) - 1 - d for d in donors]
    assert swap_partners(test_rows, SEED + 1, 0, "test") != donors
    controlled, changes = apply_control(test_rows, "swapped_context", SETTINGS, SEED)
    again, _ = apply_control(test_rows, "swapped_context", SETTINGS, SEED)
    assert [image_sha(i) for r in controlled for i in r["context_images"]] == \
        [image_sha(i) for r in again for i in r["context_images"]]
    for i, row in enumerate(controlled):
        donor_hashes = {image_sha(im) for im in test_rows[donors[i]]["context_images"]}
        assert {image_sha(im) for im in row["context_images"]} <= donor_hashes
    assert {c["source_sample_id"] for c in changes if c["sample_id"] == test_rows[0]["sample_id"]} == \
        {test_rows[donors[0]]["sample_id"]}


@pytest.mark.parametrize("n", [2, 3, 7, 30])
def test_sattolo_never_fixes_a_point(n):
    for draw in range(20):
        order = sattolo(n, rng_for(draw, "t"))
        assert sorted(order) == list(range(n)) and all(order[i] != i for i in range(n))
    with pytest.raises(ControlError, match="at least 2"):
        sattolo(1, rng_for(0))


def test_blank_and_unrelated_queries(test_rows):
    blank, _ = apply_control(test_rows, "blank_query", SETTINGS, SEED)
    for before, after in zip(test_rows, blank):
        image = decode_image(after["query_image"]["bytes"], "blank", "RGB")
        assert image.size == decode_image(before["query_image"]["bytes"], "orig").size
        assert (np.asarray(image) == 128).all()
    unrelated, changes = apply_control(test_rows, "blank_query", ControlSettings(blank_mode="unrelated"), SEED)
    by_id = {r["sample_id"]: r for r in test_rows}
    for row, change in zip(unrelated, changes):
        source = by_id[change["source_sample_id"]]
        assert source["sample_id"] != row["sample_id"]
        assert row["query_image"]["bytes"] == source["query_image"]["bytes"]
        shown = {source["context_concept_ids"][p] for p in source["positive_indices"]}
        assert not shown & set(row["context_concept_ids"])  # the stand-in query shows none of its concepts


def test_corruption_grows_with_severity(test_rows):
    image = decode_image(test_rows[0]["context_images"][0]["bytes"], "ctx", "RGB")
    pixels = np.asarray(image, dtype=float)
    distance = []
    for severity in (0.2, 0.5, 1.0):
        out = corrupt_image(image, ["noise", "blur"], severity, rng_for(0, "c"))
        distance.append(np.abs(np.asarray(out, dtype=float) - pixels).mean())
    assert distance[0] < distance[1] < distance[2]
    shuffled = corrupt_image(image, ["patch_shuffle"], 0.5, rng_for(0, "c"))
    assert shuffled.size == image.size and not np.array_equal(np.asarray(shuffled), np.asarray(image))
    # Patches move, pixels do not change: the same pixel values, in other places.
    assert np.array_equal(np.sort(np.asarray(shuffled).reshape(-1)), np.sort(np.asarray(image).reshape(-1)))


def test_diagnostic_sets_take_the_same_controls(lsd_items, prompts):
    for condition in CONTROLS:
        controlled, changes = apply_control(lsd_items, condition, SETTINGS, SEED, layout="diagnostic", dataset="lsd")
        to_table(controlled, schemas.DIAGNOSTIC_SET, condition)
        for before, after in zip(lsd_items, controlled):
            assert _without_images(after, "diagnostic") == _without_images(before, "diagnostic")
        assert changes and all(c["dataset"] == "lsd" for c in changes)
    text_only, _ = apply_control(lsd_items, "text_only", SETTINGS, SEED, layout="diagnostic", dataset="lsd")
    request = build_direct_request(text_only[0], prompts)
    assert sum(isinstance(p, ImagePart) for p in request.messages[0].parts) == 1


def test_settings_are_checked():
    with pytest.raises(ValueError, match="intact"):
        ControlSettings(conditions=["text_only"])
    with pytest.raises(ValueError, match="unknown condition"):
        ControlSettings(conditions=["intact", "upside_down"])
    with pytest.raises(ValueError, match="severity"):
        ControlSettings(severity=0.0)
    with pytest.raises(ValueError, match="blank_mode"):
        ControlSettings(blank_mode="black")


def test_a_row_with_mismatched_images_is_named(test_rows):
    bad = [dict(test_rows[0], context_images=test_rows[0]["context_images"][:1])]
    with pytest.raises(ControlError, match="row 0 .*context_images"):
        apply_control(bad, "corrupted_context", SETTINGS, SEED)
