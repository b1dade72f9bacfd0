"""Stage 2: sample planning, query synthesis and the offline compositor."""

from __future__ import annotations

import io
import json
import threading
from collections import Counter

import numpy as np
import pytest

from covip.core import schemas
from covip.clients.base import ImageRequest, ImageResponse
from covip.clients.cached import wrap
from covip.clients.registry import ModelRegistry
from covip.clients.spec import ModelSpec
from covip.core.io import decode_image, to_table
from covip.local.compositor import Compositor
from covip.core.settings import settings_from
from covip.stages.synthesis import (
    SynthesisError,
    SynthesisSettings,
    allocate_counts,
    plan_samples,
    render_instruction,
    synthesize_queries,
)

QUIET = io.StringIO()


@pytest.fixture(scope="module")
def pool(small_pool):
    # One variant per drawn kind keeps the fixture fast; 17 concepts of 17 kinds.
    return small_pool


def _compositor(**options):
    return Compositor(ModelSpec("image_generator", "local_compositor", concurrency=1, options=options))


# ---------------------------------------------------------------------------------------------------
# planning


@pytest.mark.parametrize(
    "num_samples, weights, expected",
    [
        (60, [1, 1, 1, 1], [15, 15, 15, 15]),
        (10, [1, 1, 1, 1], [3, 3, 2, 2]),
        (5, [10, 1, 1, 1], [2, 1, 1, 1]),
        (3, [1, 1, 1, 1], [1, 1, 1, 0]),
        (7, [0, 1, 0, 1], [0, 4, 0, 3]),
        (100, [2, 1, 1, 0], [50, 25, 25, 0]),
    ],
)
def test_allocate_counts(num_samples, weights, expected):
    assert allocate_counts(num_samples, weights) == expected


def test_plan_covers_every_count_with_distinct_positives(pool):
    settings = SynthesisSettings()
    plan = plan_samples(pool, settings, seed=0)
    assert [p["sample_id"] for p in plan] == [f"s{i:04d}" for i in range(60)]
    assert Counter(p["num_positives"] for p in plan) == {1: 15, 2: 15, 3: 15, 4: 15}
    kind = {row["concept_id"]: row["kind"] for row in pool}
    for p in plan:
        ids = p["positive_concept_ids"]
        assert len(ids) == p["num_positives"] == len(set(ids))
        assert all(cid in kind for cid in ids)
        assert len({kind[cid] for cid in ids}) == len(ids)  # distinct_kinds
    assert len({cid for p in plan for cid in p["positive_concept_ids"]}) > len(pool) // 2


def test_plan_is_deterministic_and_seeded(pool):
    settings = SynthesisSettings(num_samples=20)
    assert plan_samples(pool, settings, seed=4) == plan_samples(pool, settings, seed=4)
    assert plan_samples(pool, settings, seed=4) != plan_samples(pool, settings, seed=5)
    # A sample's positives are keyed by its id: the same count gives the same concepts whatever the
    # other samples are (here: a plan shuffled into another order by a different sample count).
    small = {p["sample_id"]: p for p in plan_samples(pool, SynthesisSettings(num_samples=12), seed=4)}
    big = {p["sample_id"]: p for p in plan_samples(pool, SynthesisSettings(num_samples=40), seed=4)}
    same_count = [sid for sid, p in small.items() if big[sid]["num_positives"] == p["num_positives"]]
    assert same_count
    for sid in same_count:
        assert big[sid]["positive_concept_ids"] == small[sid]["positive_concept_ids"]


def test_plan_rejects_too_small_pools(pool):
    three = [dict(row) for row in pool[:3]]
    with pytest.raises(SynthesisError, match="need at least 4"):
        plan_samples(three, SynthesisSettings(num_samples=8), seed=0)
    # Without count-4 samples, three concepts are enough.
    plan = plan_samples(three, SynthesisSettings(num_samples=8, positives_weights=[1, 1, 1, 0]), seed=0)
    assert {p["num_positives"] for p in plan} == {1, 2, 3}
    broken = [dict(row) for row in pool]
    broken[2]["concept_id"] = broken[1]["concept_id"]
    with pytest.raises(SynthesisError, match="concepts row 2: concept_id"):
        plan_samples(broken, SynthesisSettings(), seed=0)


@pytest.mark.parametrize(
    "section, pattern",
    [
        ({"num_samples": 0}, "synthesis.num_samples"),
        ({"positives_weights": [1, 1, 1]}, "synthesis.positives_weights"),
        ({"positives_weights": [1, -1, 1, 1]}, "synthesis.positives_weights"),
        ({"positives_weights": [0, 0, 0, 0]}, "synthesis.positives_weights"),
        ({"image_size": 10}, "synthesis.image_size"),
        ({"max_attempts": 0}, "synthesis.max_attempts"),
        ({"samples": 3}, "unknown setting"),
    ],
)
def test_settings_are_checked(section, pattern):
    with pytest.raises(ValueError, match=pattern):
        settings_from(SynthesisSettings, section, "synthesis")


# ---------------------------------------------------------------------------------------------------
# prompt


def test_instruction_snapshot(prompts):
    concepts = [{"name": "Jeffrey", "category": "person"}, {"name": "Mochi", "category": "animal"}]
    text = render_instruction(prompts, concepts, 320)
    assert text.startswith(
        "Create one new, realistic photograph that shows exactly 2 subject(s). Each subject is given by one of "
        "the reference images that come with this request, listed here in the same order as the images:\n"
        "1. Jeffrey (person)\n2. Mochi (animal)\n\n"
    )
    assert "not cut off by the edge of the image and not hidden" in text
    assert text.endswith("The result should be a 320 x 320 pixel image.")
    assert "$" not in text


# ---------------------------------------------------------------------------------------------------
# synthesis


def test_synthesize_rows_record_exactly_their_concepts(pool, prompts):
    settings = SynthesisSettings(num_samples=12)
    rows = synthesize_queries(pool, _compositor(defect_rate=0.0), prompts, settings, seed=1, progress_file=QUIET)
    to_table(rows, schemas.QUERIES, "queries")
    plan = plan_samples(pool, settings, seed=1)
    names = {row["concept_id"]: row["name"] for row in pool}
    assert [r["sample_id"] for r in rows] == [p["sample_id"] for p in plan]
    assert {r["num_positives"] for r in rows} == {1, 2, 3, 4}
    for row, p in zip(rows, plan):
        assert row["status"] == "ok" and row["error"] is None
        assert row["positive_concept_ids"] == p["positive_concept_ids"]
        assert row["num_positives"] == len(row["positive_concept_ids"])
        assert row["generator"] == "image_generator:local_compositor"
        layout = json.loads(row["layout"])
        assert set(layout) == set(row["positive_concept_ids"])
        assert all(entry["visible_fraction"] == 1.0 and entry["defect"] is None for entry in layout.values())
        assert all(names[cid] in row["instruction"] for cid in row["positive_concept_ids"])
        image = decode_image(row["image"], row["sample_id"], mode="RGB")
        assert image.size == (320, 320)


def test_synthesis_is_deterministic_and_concurrency_does_not_matter(pool, prompts):
    settings = SynthesisSettings(num_samples=8, image_size=160)
    registry_1 = ModelRegistry({"g": {"backend": "local_compositor", "concurrency": 1}})
    registry_4 = ModelRegistry({"g": {"backend": "local_compositor", "concurrency": 4}})
    first = synthesize_queries(pool, registry_1.image_generator("g"), prompts, settings, seed=9, progress_file=QUIET)
    second = synthesize_queries(pool, registry_4.image_generator("g"), prompts, settings, seed=9, progress_file=QUIET)
    assert first == second
    other = synthesize_queries(pool, registry_1.image_generator("g"), prompts, settings, seed=10, progress_file=QUIET)
    assert [r["image"] for r in other] != [r["image"] for r in first]


class _Recorder:
    """A generator that records requests and returns a tiny image."""

    identity = "recorder"

    def __init__(self):
        self.requests = []
        self.lock = threading.Lock()

    def generate(self, request: ImageRequest) -> ImageResponse:
        with self.lock:
            self.requests.append(request)
        return ImageResponse(image=b"png-bytes", model="recorder")


def test_requests_carry_references_task_and_per_sample_seeds(pool, prompts):
    recorder = _Recorder()
    rows = synthesize_queries(pool, wrap(recorder), prompts, SynthesisSettings(num_samples=6), seed=2, progress_file=QUIET)
    image_of = {row["concept_id"]: row["image"] for row in pool}
    by_sample = {}
    for request in recorder.requests:
        ids = request.task["concept_ids"]
        assert request.task["kind"] == "compose"
        assert [part.data for part in request.reference_images] == [image_of[cid] for cid in ids]
        by_sample[tuple(ids)] = request
    assert len({r.seed for r in recorder.requests}) == 6
    for row in rows:
        assert by_sample[tuple(row["positive_concept_ids"])].instruction == row["instruction"]
        assert row["layout"] is None  # the generator did not report one


class _Flaky:
    """Raises for some samples, returns an error response for others, succeeds on a retry for the rest."""

    identity = "flaky"

    def __init__(self):
        self.calls = Counter()
        self.lock = threading.Lock()

    def generate(self, request: ImageRequest) -> ImageResponse:
        key = tuple(request.task["concept_ids"])
        with self.lock:
            self.calls[key] += 1
            attempt = self.calls[key]
        kind = len(key) % 3
        if kind == 0:
            raise RuntimeError("backend exploded")
        if kind == 1:
            return ImageResponse(image=None, model="flaky", error="quota exceeded")
        if attempt == 1:
            return ImageResponse(image=None, model="flaky", error="transient")
        return ImageResponse(image=b"ok-image", model="flaky")


def test_failed_generations_become_failed_rows(pool, prompts):
    flaky = _Flaky()
    rows = synthesize_queries(pool, wrap(flaky), prompts, SynthesisSettings(num_samples=12, max_attempts=2), seed=0,
                              progress_file=QUIET)
    to_table(rows, schemas.QUERIES, "queries")
    assert len(rows) == 12
    for row in rows:
        kind = row["num_positives"] % 3
        if kind == 2:  # succeeded on the second attempt
            assert row["status"] == "ok" and row["image"] == b"ok-image"
        else:
            assert row["status"] == "failed" and row["image"] is None
            expected = "RuntimeError: backend exploded" if kind == 0 else "quota exceeded"
            assert row["error"] == f"attempt 1: {expected}; attempt 2: {expected}"
    assert all(count == 2 for count in flaky.calls.values())


# ---------------------------------------------------------------------------------------------------
# the compositor itself


def _request(pool, ids, seed):
    from covip.clients.base import ImagePart

    by_id = {row["concept_id"]: row for row in pool}
    return ImageRequest("ignored", tuple(ImagePart(by_id[c]["image"]) for c in ids), seed=seed,
                        task={"kind": "compose", "concept_ids": ids, "image_size": 256})


@pytest.mark.parametrize("defect", ["occluded", "out_of_frame", "omitted"])
def test_compositor_defects_are_recorded_in_the_layout(pool, defect):
    compositor = _compositor(defect_rate=1.0, defect_kinds={defect: 1.0})
    ids = [pool[0]["concept_id"], pool[9]["concept_id"], pool[14]["concept_id"]]
    for seed in range(3):
        response = compositor.generate(_request(pool, ids, seed))
        assert response.ok and decode_image(response.image, "composite").size == (256, 256)
        victims = [cid for cid, entry in response.layout.items() if entry["defect"] == defect]
        assert len(victims) == 1
        assert response.layout[victims[0]]["visible_fraction"] <= 0.5
        for cid, entry in response.layout.items():
            if cid != victims[0] and defect != "occluded":
                assert entry["visible_fraction"] == 1.0


def test_compositor_is_deterministic_and_varies_with_seed(pool):
    compositor = _compositor()
    ids = [pool[2]["concept_id"], pool[12]["concept_id"]]
    a = compositor.generate(_request(pool, ids, 5))
    assert a.image == compositor.generate(_request(pool, ids, 5)).image
    b = compositor.generate(_request(pool, ids, 6))
    assert a.image != b.image
    assert a.layout != b.layout


def test_compositor_background_is_textured_not_flat(pool):
    response = _compositor(defect_rate=0.0).generate(_request(pool, [pool[3]["concept_id"]], 1))
    grey = np.asarray(decode_image(response.image, "composite", mode="L"), float)
    # A real texture: lots of local variation in every quadrant (not a flat fill).
    for quadrant in (grey[:128, :128], grey[:128, 128:], grey[128:, :128], grey[128:, 128:]):
        assert np.abs(np.diff(quadrant, axis=1)).mean() > 2.0


def test_compositor_rejects_bad_requests_and_options(pool):
    from covip.clients.base import ImagePart

    with pytest.raises(ValueError, match="2 concept ids for 1 reference"):
        _compositor().generate(ImageRequest("x", (ImagePart(pool[0]["image"]),), seed=1, task={"concept_ids": ["a", "b"]}))
    with pytest.raises(ValueError, match="options.defect_rate"):
        _compositor(defect_rate=2)
    with pytest.raises(ValueError, match="unknown key"):
        _compositor(defect_chance=0.1)
